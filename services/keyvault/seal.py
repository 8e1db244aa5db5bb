"""keyvault's seal state: the data keys in memory, the master key in the keystore, the password check.

:class:`SealMixin` is mixed into :class:`~.service.Keyvault`, which owns and initialises the state
declared here; its handlers (``unlock``, ``lock``, ...) audit each step and call these. Contract:

- The vault is *unsealed* exactly when ``keys`` is non-empty. Data keys live in bytearrays in this
  process only; :meth:`SealMixin._wipe` zeroes them, and every master key handled here is wiped
  once used (the caller wipes what :meth:`SealMixin._check_password` returns).
- :meth:`SealMixin._unseal_from_keystore` (at start) unseals from the keystore when it holds a
  master key that opens the state, and otherwise stays sealed: it never raises for a missing or
  stale key.
- :meth:`SealMixin._unseal_with` keeps the master key in the keystore; :meth:`SealMixin._seal`
  wipes the keys, ends every CLI session and deletes the master key from the keystore.
- Once the master key sits in a platform keyring, a copy in the file fallback is deleted.
- :meth:`SealMixin._check_password` derives off the event loop and applies the wrong-password
  backoff (:class:`~.sessions.Throttle`): ``RATE_LIMITED`` while backing off, ``UNAUTHENTICATED``
  for a wrong password.
- :meth:`SealMixin._announce` publishes ``security.*`` events, best effort.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from shared import MeshConfig, MeshError, MeshHome, Unauthenticated, Unavailable
from shared._crypto import wipe

from . import store
from .keystore import FileKeystore, Keystore, choose_keystore
from .sessions import Sessions, Throttle

log = structlog.get_logger("keyvault")  # one logger name for the whole service, as before the split


class SealMixin:
    """Unsealing (keystore or password) and sealing (wipe, forget) of keyvault's keys."""

    # Owned and initialised by the service (Keyvault.__init__, Service.__init__ for ``mesh``);
    # declared here so this code type-checks.
    home: MeshHome
    config: MeshConfig
    mesh: Any
    keys: dict[tuple[str, int], bytearray]
    state: store.VaultState | None
    keystore: Keystore | None
    keystore_warning: str | None
    sessions: Sessions
    throttle: Throttle

    def _unseal_from_keystore(self, state: store.VaultState) -> None:
        """Choose the keystore and unseal with the master key it holds, if that key opens ``state``."""
        self.keystore, self.keystore_warning = choose_keystore(self.config.keyvault.keystore, self.home,
                                                               state.mesh_id)
        if self.keystore_warning:
            log.warning("keystore_warning", warning=self.keystore_warning)
        master = self.keystore.get()
        if master is None:
            log.info("sealed", reason="no master key in the keystore")
            return
        try:
            self.keys = store.open_keys(state, master)
            log.info("unsealed", keystore=self.keystore.name)
            self._forget_stale_file_keystore()
        except store.IntegrityError:
            # A stale key (e.g. a crash between a password change and the keystore update):
            # stay sealed until the operator unlocks with the current password.
            log.warning("sealed", reason="the keystore's master key does not open the state")
        finally:
            wipe(master)

    def _unseal_with(self, master: bytearray) -> None:
        """Unseal with a checked ``master`` and keep it in the keystore; the caller wipes ``master``."""
        assert self.state is not None and self.keystore is not None
        self._wipe()
        self.keys = store.open_keys(self.state, master)
        self.keystore.put(master)
        self._forget_stale_file_keystore()

    def _seal(self) -> None:
        """Wipe every key from memory and the keystore; a seal also ends every CLI session."""
        self._wipe()
        self.sessions.clear_all()
        if self.keystore is not None:
            self.keystore.delete()

    def _forget_stale_file_keystore(self) -> None:
        # The master key moved to a platform keyring: a copy left in the file fallback
        # would be a master key on disk for nothing.
        if self.keystore is not None and not isinstance(self.keystore, FileKeystore):
            stale = FileKeystore(self.home.keys / "master.keystore")
            if stale.path.exists():
                stale.delete()
                log.info("file_keystore_removed", reason="the master key is in the platform keyring")

    def _wipe(self) -> None:
        for key in self.keys.values():
            wipe(key)
        self.keys = {}

    def _require_state(self) -> store.VaultState:
        if self.state is None:
            raise Unavailable("keyvault is not initialised: run `meshctl init`")
        return self.state

    async def _check_password(self, password: str) -> bytearray:
        """The master key for ``password``, derived off the event loop; throttled when wrong."""
        state = self._require_state()
        self.throttle.check()
        secret = bytearray(password.encode())
        try:
            # Argon2 takes seconds: off the loop, so health, status and key fetches are answered.
            master = await asyncio.get_running_loop().run_in_executor(None, store.derive_master, secret, state)
        finally:
            wipe(secret)
        try:
            keys = store.open_keys(state, master)
        except store.IntegrityError:
            wipe(master)
            self.throttle.failed()
            raise Unauthenticated("wrong password") from None
        # Opening the keys was only the proof that the password is right: wipe them at once.
        for key in keys.values():
            wipe(key)
        self.throttle.succeeded()
        return master

    async def _announce(self, topic: str, **body: Any) -> None:
        # Services that hold keys wipe them on security.sealed, and fetch the new version on
        # security.key_rotated. Best effort: the change itself already happened here, and a
        # service that misses the event gets SEALED from us (or finds the version at its next start).
        if self.mesh is None:
            return
        try:
            await self.mesh.publish(topic, {"by": "keyvault", **body}, timeout=2)
        except MeshError as exc:
            log.warning("announce_failed", topic=topic, error=exc.code)

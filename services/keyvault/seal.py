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
- Anchors off the home (DESIGN.md invariant 12): with the file keystore, a master key an older
  version kept in ``<home>/keys/master.keystore`` is moved into the anchor directory at start,
  audited (``keyvault.anchor_moved``) before the old copy is removed; two copies that differ stop
  the start (:class:`~shared.StateError`). Once the master key sits in a platform keyring, file
  copies (in the home or the anchor directory) are deleted; with ``keystore = "password"`` every
  stored copy (files and keyring entry) is deleted at start. Each removal is audited first
  (``keyvault.anchor_removed``).
- :meth:`SealMixin._check_password` derives off the event loop and applies the wrong-password
  backoff (:class:`~.sessions.Throttle`): ``RATE_LIMITED`` while backing off, ``UNAUTHENTICATED``
  for a wrong password.
- :meth:`SealMixin._announce` publishes ``security.*`` events, best effort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog

from shared import (
    ConfigError,
    MeshConfig,
    MeshError,
    MeshHome,
    RateLimited,
    RequestContext,
    Unauthenticated,
    Unavailable,
)
from shared.crypto import wipe
from shared.keystore import anchor_dir, begin_move, keyring_slot, slot_file

from . import store
from .keystore import (
    FileKeystore,
    KeyringKeystore,
    Keystore,
    PasswordKeystore,
    choose_keystore,
    legacy_master_file,
    master_account,
)
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
    # RecordingMixin._audit, declared without a value so it does not shadow the real one.
    _audit: Callable[..., None]

    def _unseal_from_keystore(self, state: store.VaultState) -> None:
        """Choose the keystore and unseal with the master key it holds, if that key opens ``state``."""
        if self.config.keyvault.anchor_dir:
            # A configured anchor directory is checked at every start, keyring or not: one inside
            # the home is refused here rather than the day the keyring goes away.
            anchor_dir(self.home, self.config.keyvault.anchor_dir)
        self.keystore, self.keystore_warning = choose_keystore(self.config, self.home, state.mesh_id)
        if self.keystore_warning:
            log.warning("keystore_warning", warning=self.keystore_warning)
        self._settle_master_anchor(state.mesh_id)
        master = self.keystore.get()
        if master is None:
            reason = ("keystore = password: the master key is never stored"
                      if isinstance(self.keystore, PasswordKeystore) else "no master key in the keystore")
            log.info("sealed", reason=reason, hint="meshctl security unlock")
            return
        try:
            self.keys = self._open_all(state, master)
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
        self.keys = self._open_all(self.state, master)
        self.keystore.put(master)
        self._forget_stale_file_keystore()

    def _open_all(self, state: store.VaultState, master: bytearray) -> dict[tuple[str, int], bytearray]:
        """Every data key of ``state``; a purpose added since this home was initialised gets its
        first version now, saved before any key is handed out. :class:`store.IntegrityError` when
        ``master`` is not this state's."""
        keys = store.open_keys(state, master)
        added = store.add_missing_purposes(state, master)
        if added:
            store.save(self.home, state)
            log.info("purposes_added", purposes=sorted(purpose for purpose, _ in added))
        return keys | added

    def _seal(self) -> None:
        """Wipe every key from memory and the keystore; a seal also ends every CLI session."""
        self._wipe()
        self.sessions.clear_all()
        if self.keystore is not None:
            self.keystore.delete()

    def _settle_master_anchor(self, mesh_id: str) -> None:
        """At start: move a master key an older version kept in the home into the anchor directory
        (file keystore), or delete every stored copy (``keystore = "password"``)."""
        if isinstance(self.keystore, FileKeystore):
            move = begin_move(legacy_master_file(self.home), self.keystore, "the master key")
            if move is not None:
                # The record is durable before the old copy goes; a crash in between leaves two
                # equal copies, and the next start finishes the move (and records it again).
                self._audit("keyvault.anchor_moved", None, anchor="master key", source=str(move.old),
                            destination=move.new)
                move.finish()
                log.warning("anchor_moved", anchor="master key", destination=move.new)
        elif isinstance(self.keystore, PasswordKeystore):
            places: list[Keystore] = [FileKeystore(legacy_master_file(self.home)),
                                      FileKeystore(slot_file(anchor_dir(self.home, self.config.keyvault.anchor_dir),
                                                             master_account(mesh_id)))]
            slot = keyring_slot(master_account(mesh_id))
            if slot is not None:
                places.append(slot)
            self._forget_copies(places, "keystore = password: the master key is never stored")

    def _forget_stale_file_keystore(self) -> None:
        # The master key moved to a platform keyring: a copy left in a file (in the home, or in
        # the anchor directory) would be a master key on disk for nothing.
        if isinstance(self.keystore, KeyringKeystore) and self.state is not None:
            places: list[Keystore] = [FileKeystore(legacy_master_file(self.home))]
            try:
                places.append(FileKeystore(slot_file(anchor_dir(self.home, self.config.keyvault.anchor_dir),
                                                     master_account(self.state.mesh_id))))
            except ConfigError as exc:
                # No usable anchor directory (the default one may be unusable here): nothing
                # can be stored there either, and the keyring works, so keyvault goes on.
                log.info("anchor_dir_unusable", reason=exc.message)
            self._forget_copies(places, "the master key is in the platform keyring")

    def _forget_copies(self, places: list[Keystore], reason: str) -> None:
        """Delete the stored copies of the master key among ``places``, audited first."""
        found = [place for place in places if self._holds(place)]
        if not found:
            return
        where = ", ".join(str(getattr(place, "path", place.name)) for place in found)
        self._audit("keyvault.anchor_removed", None, anchor="master key", source=where, reason=reason)
        for place in found:
            place.delete()
        log.info("stored_master_key_removed", reason=reason, places=len(found))

    @staticmethod
    def _holds(place: Keystore) -> bool:
        if isinstance(place, FileKeystore):
            return place.path.exists()  # even a damaged or too open copy must go
        held = place.get()
        if held is not None:
            wipe(held)
        return held is not None

    def _wipe(self) -> None:
        for key in self.keys.values():
            wipe(key)
        self.keys = {}

    def _require_state(self) -> store.VaultState:
        if self.state is None:
            raise Unavailable("keyvault is not initialised: run `meshctl init`")
        return self.state

    async def _check_password(self, password: str, ctx: RequestContext, event: str, **details: Any) -> bytearray:
        """The master key for ``password``, derived off the event loop; throttled when wrong.

        Every refusal is audited as ``event`` (invariant 3) before it answers: ``wrong-password``,
        and ``throttled`` for the first attempt refused while backing off (later ones in the same
        wait are counted, not recorded one by one, so a flood cannot fill the audit spool: the next
        attempt let through first records how many more were refused, as ``refused``)."""
        state = self._require_state()
        try:
            self.throttle.check()
        except RateLimited:
            if self.throttle.refused == 1:
                self._audit(event, ctx, outcome="throttled", **details)
            raise
        refused = self.throttle.take_refused()
        if refused > 1:  # the first was recorded as it happened; the rest, in one record, now
            self._audit(event, ctx, outcome="throttled", refused=refused - 1, **details)
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
            self._audit(event, ctx, outcome="wrong-password", **details)
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

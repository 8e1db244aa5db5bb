"""Changes to keyvault's key hierarchy: re-wrapping under a new password, adding a key version.

:class:`HierarchyMixin` is mixed into :class:`~.service.Keyvault`, whose ``passwd`` and
``keys.rotate`` handlers check the caller, take ``_lock`` and check the password afresh, then call
these with the master key that password gave. Contract:

- Both run under ``_lock`` and wipe the master key they are given once it is used.
- Each change is audited ``started`` (durable before the state file is written) and ``ok`` (after);
  the state file is replaced atomically (:func:`.store.save`), so at every instant exactly one
  password opens it and the state in memory is what is on disk.
- :meth:`HierarchyMixin._rewrap_all` re-wraps every data key under a key derived from the new
  password; no data key changes and no data is re-encrypted. It does not unseal: a sealed vault
  stays sealed with an empty keystore; an unsealed one gets the new master key in the keystore.
- :meth:`HierarchyMixin._add_version` adds a new current version of one purpose's key (older
  versions stay readable) and keeps it in memory; announcing it is the handler's job.
- ``checkpoint`` (injected by tests, see tests/kv_crash.py) is called at each crash-relevant step.
"""

from __future__ import annotations

import asyncio
import copy
import secrets

from shared import RequestContext
from shared.crypto import derive_from_password, wipe

from . import store
from .recording import RecordingMixin
from .seal import SealMixin


class HierarchyMixin(SealMixin, RecordingMixin):
    """Password change (re-wrap) and key rotation (new version) over the vault's state file."""

    # Owned and initialised by the service (Keyvault.__init__); declared here so this code type-checks.
    checkpoint: store.Checkpoint

    async def _rewrap_all(self, ctx: RequestContext, old_master: bytearray, new_password: str) -> None:
        """Re-wrap every data key under ``new_password``; ``old_master`` is the checked current one."""
        state = self._require_state()
        keys = store.open_keys(state, old_master)
        wipe(old_master)
        self.checkpoint("old-password-checked")
        salt = secrets.token_bytes(16)
        profile = self.config.argon2.master
        secret = bytearray(new_password.encode())
        # Argon2 takes seconds: off the loop, so health, status and key fetches are answered.
        new_master = await asyncio.get_running_loop().run_in_executor(
            None, derive_from_password, secret, salt, profile)
        wipe(secret)
        self.checkpoint("new-master-derived")
        was_sealed = not self.keys
        try:
            new_state = store.rewrap(state, keys, new_master, salt, profile)
            self._audit("keyvault.password_change", ctx, outcome="started")
            store.save(self.home, new_state, self.checkpoint)
            self.state = new_state
            assert self.keystore is not None
            if was_sealed:
                # A password change does not unseal: the keystore stays empty and the
                # keys stay wiped until `meshctl security unlock`.
                for key in keys.values():
                    wipe(key)
            else:
                self.keystore.put(new_master)
                self.checkpoint("keystore-updated")
                self._wipe()
                self.keys = keys
            self._audit("keyvault.password_change", ctx, outcome="ok")
        finally:
            wipe(new_master)

    def _add_version(self, ctx: RequestContext, purpose: str, master: bytearray) -> int:
        """Add and keep a new current version of ``purpose``'s key; the version number."""
        try:
            # Work on a copy: if the write fails, the state in memory stays what is on disk.
            state = copy.deepcopy(self._require_state())
            self._audit("keyvault.key_rotate", ctx, purpose=purpose, outcome="started")
            version, key = store.add_version(state, master, purpose)
            store.save(self.home, state)
            self.state = state
            self.keys[(purpose, version)] = key
            self._audit("keyvault.key_rotate", ctx, purpose=purpose, version=version, outcome="ok")
        finally:
            wipe(master)
        return version

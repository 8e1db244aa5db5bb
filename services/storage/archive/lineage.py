"""The backup lineage, kept outside the home as well as in storage's state file.

A backup archive carries its mesh's id and sequence number; a restore compares them with the newest
this mesh has made or restored, to refuse a rollback unless forced. That lineage is in storage's
state file (:class:`~..core.state.StorageState`), which lives in the home, and the home may be
copied, synced or rolled back as a unit (DESIGN.md invariant 12): so a second copy lives outside it,
and rollback detection takes the higher of the two.

:class:`Lineage` is that second copy's slot. :class:`BackupLineage` is how backups and restores
use it: the slot is made on first use, a copy an older version left inside the home is moved out
(audited) before the slot is read, and the slot is updated after the state file.
"""

from __future__ import annotations

import msgpack
import structlog

from shared import KeyvaultConfig, MeshError, MeshHome, Unavailable
from shared.certs import load_certificate
from shared.keystore import Move, begin_move, choose_keystore

from ..core.context import ADMIN_POOL, StorageCore
from ..core.state import StorageState

log = structlog.get_logger("storage")


class Lineage:
    """The backup lineage ``(mesh_id, sequence)`` kept outside the home too, in a secret slot (the
    platform keyring; a 0600 file in the anchor directory when there is none, never in the home),
    named after storage's own certificate. Wiping ``data/storage`` (state file included), or
    restoring an older copy of the home, then does not erase or roll back what rollback detection
    compares against: :meth:`newest` is the higher of the two copies."""

    def __init__(self, home: MeshHome, settings: KeyvaultConfig) -> None:
        fingerprint = load_certificate(home.public_key_path("storage")).fingerprint[:16]
        self.slot, self.warning = choose_keystore(settings, home, f"storage-backup-lineage:{fingerprint}")
        #: Where versions before the anchor directory kept the file slot: inside the home.
        self.legacy = home.keys / "storage-backup-lineage"

    def begin_move(self) -> Move | None:
        """Copy a lineage an older version kept in the home into the slot (see
        :func:`shared.keystore.begin_move`); the caller audits, then calls ``finish``."""
        return begin_move(self.legacy, self.slot, "the backup lineage")

    def read(self) -> tuple[str, int] | None:
        """The slot's lineage, or None when it holds none (or something that does not decode)."""
        try:
            raw = self.slot.get()
        except Exception:  # noqa: BLE001 - an unreachable keyring means "no second copy", said by the caller
            return None
        if raw is None:
            return None
        try:
            mesh_id, sequence = msgpack.unpackb(bytes(raw), raw=False)
            return str(mesh_id), int(sequence)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None

    def newest(self, state: StorageState) -> tuple[str, int]:
        """The lineage to compare archives with: the slot's when it is ahead of the state file's."""
        kept = self.read()
        if kept is not None and (kept[0] != state.mesh_id or kept[1] > state.backup_seq):
            return kept
        return state.mesh_id, state.backup_seq

    def save(self, mesh_id: str, sequence: int) -> None:
        """Record the lineage in the slot (after the state file)."""
        self.slot.put(bytearray(msgpack.packb([mesh_id, sequence], use_bin_type=True)))


class BackupLineage:
    """The lineage as the backup and restore jobs use it (see the module docstring)."""

    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self._slot: Lineage | None = None

    @property
    def slot(self) -> Lineage:
        """The second copy's slot, made on first use (it reads storage's certificate)."""
        if self._slot is None:
            self._slot = Lineage(self.core.home, self.core.config.keyvault)
        return self._slot

    async def settled(self) -> Lineage:
        """The slot, once a copy an older version left in the home has moved into it, the move
        recorded by audit before the old copy goes (``UNAVAILABLE`` if audit does not record it:
        retried next time; :class:`~shared.StateError` when the two copies differ)."""
        core = self.core
        move = await core.run(ADMIN_POOL, self.slot.begin_move)
        if move is not None:
            try:
                await core.append_audit([{"type": "storage.anchor_moved", "outcome": "ok", "details": {
                    "anchor": "backup lineage", "source": str(move.old), "destination": move.new}}])
            except MeshError as exc:
                raise Unavailable(f"audit did not record the move of the backup lineage off the home ({exc.code})"
                                  ) from None
            await core.run(ADMIN_POOL, move.finish)
            log.warning("anchor_moved", anchor="backup lineage", destination=move.new)
        return self.slot

    async def move_off_home(self) -> None:
        """:meth:`settled`, as background work after an unseal: a failure is logged, and backups and
        restores refuse with the same message until a later attempt succeeds."""
        try:
            await self.settled()
        except MeshError as exc:
            log.error("backup_lineage_not_moved", reason=exc.message)

    async def newest(self) -> tuple[str, int]:
        """The lineage archives are compared with (:meth:`Lineage.newest`), once settled."""
        return await self.core.run(ADMIN_POOL, (await self.settled()).newest, self.core.stored)

    async def save(self) -> None:
        """Copy the state file's lineage into the slot; a failure is logged loudly, not raised (the
        state file has it, the second copy lags until the next backup or restore)."""
        stored = self.core.stored
        try:
            await self.core.run(ADMIN_POOL, self.slot.save, stored.mesh_id, stored.backup_seq)
        except Exception as exc:  # noqa: BLE001 - the state file has it; say loudly that the second copy lags
            log.error("backup_lineage_not_saved", error_type=type(exc).__name__)

"""The backup lineage, kept outside the home as well as in storage's state file.

A backup archive carries its mesh's id and sequence number; a restore compares them with the newest
this mesh has made or restored, to refuse a rollback unless forced. That lineage is in storage's
state file (:class:`~..core.state.StorageState`), which lives in the home, and the home may be
copied, synced or rolled back as a unit (DESIGN.md invariant 12): so a second copy lives outside it,
and rollback detection takes the higher of the two.
"""

from __future__ import annotations

import msgpack

from shared import KeyvaultConfig, MeshHome
from shared.certs import load_certificate
from shared.keystore import Move, begin_move, choose_keystore

from ..core.state import StorageState


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

"""Moving an anchor an older curvemesh kept inside the home into its keystore slot.

Older versions kept the master key and audit's trusted checkpoint as files in ``<home>/keys``;
:func:`begin_move` copies such a file into the slot :mod:`._keystore` chose (outside the home), and
:meth:`Move.finish` removes the old copy once the caller's audit record of the move is durable. It
sits above both the anchor directory (:mod:`._anchors`) and the keystores that use it.

The move has two steps so the caller can make its audit record durable in between: a crash before
:meth:`Move.finish` leaves two equal copies, and the next start finishes the move. Two copies that
differ are refused (:class:`StateError`): one of them is not what the mesh last wrote, and guessing
which could roll a checkpoint back or lose a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import StateError
from ._keystore import FileKeystore, Keystore


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Move:
    """A slot copied from ``old`` (in the home) into its new place; ``old`` is still there."""

    old: Path
    new: str  #: where the slot is now, for the audit record (a path, or the keyring's name)

    def finish(self) -> None:
        """Remove the old copy, durably. Call it once the move's audit record is durable."""
        self.old.unlink(missing_ok=True)
        _fsync_dir(self.old.parent)


def begin_move(old: Path, slot: Keystore, what: str) -> Move | None:
    """Copy the slot a previous version kept at ``old`` into ``slot`` (when ``slot`` is empty).

    None when there is no ``old``. The same value in both is a move a crash interrupted: it is
    finished the same way. Different values raise :class:`StateError` naming both places.
    ``what`` names the anchor in that message (``the master key``).
    """
    try:
        os.lstat(old)
    except FileNotFoundError:
        return None
    legacy = FileKeystore(old).get()
    if legacy is None:
        return None
    destination = str(getattr(slot, "path", slot.name))
    current = slot.get()
    try:
        if current is None:
            slot.put(legacy)
        elif bytes(current) != bytes(legacy):
            raise StateError(f"{what} is kept both in {old} (left by an older curvemesh) and in {destination}, "
                             "and the two differ: refusing to guess which is current. Keep the one the mesh "
                             "last used, delete the other, then start again")
    finally:
        for buffer in (legacy, current):
            if buffer is not None:
                buffer[:] = bytes(len(buffer))
    return Move(old, destination)

"""Where a process keeps one secret between runs, outside the mesh home.

keyvault's master key, audit's trusted checkpoint and storage's backup lineage are *anchors*:
the home is compared against them, so they must not travel or roll back with the home
(DESIGN.md invariant 12). Each lives in a slot, a :class:`Keystore`:

- :func:`choose_keystore` picks the slot of a keyring account for ``[keyvault]`` settings: the
  platform keyring (:class:`KeyringKeystore`) when a secure one works, else a 0600 file in the
  anchor directory (:class:`FileKeystore`) with the loud :data:`FILE_WARNING`;
  :func:`keyring_slot` asks for the keyring alone;
- :func:`anchor_dir` is that directory, checked (outside the home, not a symlink, private) and
  created; :func:`slot_file` names an account's file in it;
- :func:`begin_move` and :meth:`Move.finish` move a slot an older version kept inside the home,
  in two steps so the caller can make its audit record durable in between.

The code and the full contracts are in :mod:`shared._keystore` and :mod:`shared._anchors`.
"""

from __future__ import annotations

from ._anchor_move import Move, begin_move
from ._anchors import anchor_dir, slot_file
from ._keystore import FILE_WARNING, FileKeystore, KeyringKeystore, Keystore, choose_keystore, keyring_slot

__all__ = [
    "FILE_WARNING",
    "FileKeystore",
    "KeyringKeystore",
    "Keystore",
    "Move",
    "anchor_dir",
    "begin_move",
    "choose_keystore",
    "keyring_slot",
    "slot_file",
]

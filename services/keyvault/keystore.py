"""Where keyvault keeps the derived master key: the platform keyring, or a 0600 file
(see :mod:`shared._keystore`), under account ``master:<mesh id>``."""

from __future__ import annotations

from shared import MeshHome
from shared._keystore import FILE_WARNING, FileKeystore, KeyringKeystore, Keystore
from shared._keystore import choose_keystore as _choose

__all__ = ["FILE_WARNING", "FileKeystore", "KeyringKeystore", "Keystore", "choose_keystore", "master_file"]


def master_file(home: MeshHome) -> FileKeystore:
    """The file fallback for the master key: ``<home>/keys/master.keystore``."""
    return FileKeystore(home.keys / "master.keystore")


def choose_keystore(choice: str, home: MeshHome, mesh_id: str) -> tuple[Keystore, str | None]:
    """The keystore for ``[keyvault] keystore`` = ``choice``, and a warning to show, if any."""
    return _choose(choice, master_file(home).path, f"master:{mesh_id}")

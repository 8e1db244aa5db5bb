"""Where keyvault keeps the derived master key: the platform keyring, a 0600 file in the anchor
directory outside the home (see :mod:`shared.keystore`), both under
account ``master:<mesh id>``, or nowhere (``keystore = "password"``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared import MeshConfig, MeshHome
from shared.keystore import FILE_WARNING, FileKeystore, KeyringKeystore, Keystore
from shared.keystore import choose_keystore as _choose

__all__ = ["FILE_WARNING", "FileKeystore", "KeyringKeystore", "Keystore", "PasswordKeystore", "choose_keystore",
           "legacy_master_file", "master_account", "protection"]


def master_account(mesh_id: str) -> str:
    """The keyring account (and anchor file name) of the master key of mesh ``mesh_id``."""
    return f"master:{mesh_id}"


def legacy_master_file(home: MeshHome) -> Path:
    """Where versions before the anchor directory kept the file keystore: inside the home."""
    return home.keys / "master.keystore"


@dataclass
class PasswordKeystore:
    """``keystore = "password"``: the master key is never stored. ``get`` always finds nothing,
    so keyvault starts sealed; ``put`` and ``delete`` keep and remove nothing, by design (an
    unlock or a password change holds the key in memory only)."""

    name: str = "password (not stored)"

    def get(self) -> bytearray | None:
        return None

    def put(self, secret: bytearray) -> None:
        """Keep nothing: the operator's password is the only way back to the key."""

    def delete(self) -> None:
        """Nothing is stored, so nothing is removed."""


def choose_keystore(config: MeshConfig, home: MeshHome, mesh_id: str) -> tuple[Keystore, str | None]:
    """The keystore for ``[keyvault] keystore``, and a warning to show, if any."""
    if config.keyvault.keystore == "password":
        return PasswordKeystore(), None
    return _choose(config.keyvault, home, master_account(mesh_id))


def protection(keystore: Keystore) -> str:
    """One line for ``meshctl status``: what protects the master key, and what that does not
    protect against."""
    if isinstance(keystore, PasswordKeystore):
        return "not stored: the mesh starts sealed; a copy of the disk reads nothing"
    if isinstance(keystore, FileKeystore):
        return (f"file outside the home ({keystore.path}): a copy of the home reads nothing; "
                "a copy of the whole disk does")
    return (f"platform {keystore.name}: a copy of the home or of the disk reads nothing without your "
            "login keyring")

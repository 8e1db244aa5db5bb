"""Where the derived master key is kept between runs, so keyvault unlocks unattended.

The platform keyring (Linux Secret Service, macOS Keychain, Windows Credential
Manager) through ``keyring``, or, only when chosen in mesh.toml or when no
secure keyring works, a 0600 file in the home. A plaintext or null keyring
backend is never used: ``auto`` falls back to the file with a loud warning
(logs and ``meshctl status``) instead.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import keyring
import keyring.backend
import keyring.errors
import structlog

from shared import ConfigError, MeshHome, certs

log = structlog.get_logger("keyvault.keystore")

_SERVICE = "curvemesh"
#: Backends that keep secrets under OS protection; anything else is refused.
_SECURE_BACKENDS = ("SecretService", "macOS", "Windows", "WinVault", "Keychain")
FILE_WARNING = "master key protected by file permissions only"


class Keystore(Protocol):
    """A place for the master key. ``get`` returns None when nothing is stored."""

    name: str

    def get(self) -> bytearray | None: ...

    def put(self, master: bytearray) -> None: ...

    def delete(self) -> None: ...


@dataclass
class KeyringKeystore:
    """The master key in the platform keyring, under ``curvemesh`` / ``master:<mesh id>``."""

    mesh_id: str
    backend: keyring.backend.KeyringBackend
    name: str = "keyring"

    def __post_init__(self) -> None:
        self.name = f"keyring ({type(self.backend).__module__.rsplit('.', 1)[-1]})"

    @property
    def _account(self) -> str:
        return f"master:{self.mesh_id}"

    def get(self) -> bytearray | None:
        value = self.backend.get_password(_SERVICE, self._account)
        return None if value is None else bytearray(base64.b64decode(value))

    def put(self, master: bytearray) -> None:
        self.backend.set_password(_SERVICE, self._account, base64.b64encode(master).decode())

    def delete(self) -> None:
        try:
            self.backend.delete_password(_SERVICE, self._account)
        except keyring.errors.PasswordDeleteError:
            pass


@dataclass
class FileKeystore:
    """The master key in ``<home>/keys/master.keystore``, mode 0600, written atomically."""

    path: Path
    name: str = "file"

    def get(self) -> bytearray | None:
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if info.st_mode & 0o077:
            raise ConfigError(f"{self.path}: master key file is readable by group or others; it must be 0600")
        return bytearray(base64.b64decode(self.path.read_bytes()))

    def put(self, master: bytearray) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        certs.write_exclusive(tmp, base64.b64encode(master), 0o600)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _secure_backend() -> keyring.backend.KeyringBackend | None:
    backend = keyring.get_keyring()
    candidates = getattr(backend, "backends", [backend])  # a ChainerBackend wraps several
    for candidate in candidates:
        module = type(candidate).__module__
        if any(marker in module or marker in type(candidate).__name__ for marker in _SECURE_BACKENDS):
            try:
                # Probe for real: a Secret Service without a running daemon fails here.
                candidate.get_password(_SERVICE, "probe")
            except Exception as exc:  # noqa: BLE001 - any failure means "not usable".
                log.warning("keyring_unusable", backend=type(candidate).__name__, error=type(exc).__name__)
                continue
            return candidate
    return None


def choose_keystore(choice: str, home: MeshHome, mesh_id: str) -> tuple[Keystore, str | None]:
    """The keystore for ``[keyvault] keystore`` = ``choice``, and a warning to show, if any."""
    file_store = FileKeystore(home.keys / "master.keystore")
    if choice == "file":
        return file_store, FILE_WARNING
    backend = _secure_backend()
    if backend is not None:
        return KeyringKeystore(mesh_id, backend), None
    if choice == "keyring":
        raise ConfigError("keyvault.keystore = keyring, but no secure platform keyring is usable")
    log.warning("keystore_fallback_to_file", warning=FILE_WARNING)
    return file_store, FILE_WARNING

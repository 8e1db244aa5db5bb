"""Secret slots: where a process keeps one secret between runs (keyvault's master key,
audit's latest checkpoint), so the mesh restarts unattended.

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

from . import _certs as certs
from ._errors import ConfigError

log = structlog.get_logger("keystore")

_SERVICE = "curvemesh"
#: Backends that keep secrets under OS protection; anything else is refused.
_SECURE_BACKENDS = ("SecretService", "macOS", "Windows", "WinVault", "Keychain")
FILE_WARNING = "master key protected by file permissions only"  # the slot keyvault shows


class Keystore(Protocol):
    """A place for one secret. ``get`` returns None when nothing is stored."""

    name: str

    def get(self) -> bytearray | None: ...

    def put(self, secret: bytearray) -> None: ...

    def delete(self) -> None: ...


@dataclass
class KeyringKeystore:
    """A secret in the platform keyring, under service ``curvemesh`` and ``account``."""

    account: str
    backend: keyring.backend.KeyringBackend
    name: str = "keyring"

    def __post_init__(self) -> None:
        self.name = f"keyring ({type(self.backend).__module__.rsplit('.', 1)[-1]})"

    @property
    def _account(self) -> str:
        return self.account

    def get(self) -> bytearray | None:
        value = self.backend.get_password(_SERVICE, self._account)
        return None if value is None else bytearray(base64.b64decode(value))

    def put(self, secret: bytearray) -> None:
        self.backend.set_password(_SERVICE, self._account, base64.b64encode(secret).decode())

    def delete(self) -> None:
        try:
            self.backend.delete_password(_SERVICE, self._account)
        except keyring.errors.PasswordDeleteError:
            pass


@dataclass
class FileKeystore:
    """A secret in a file of its own (under ``<home>/keys``), mode 0600, written atomically."""

    path: Path
    name: str = "file"

    def get(self) -> bytearray | None:
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if info.st_mode & 0o077:
            raise ConfigError(f"{self.path}: secret file is readable by group or others; it must be 0600")
        return bytearray(base64.b64decode(self.path.read_bytes()))

    def put(self, secret: bytearray) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        certs.write_exclusive(tmp, base64.b64encode(secret), 0o600)
        os.replace(tmp, self.path)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


def _secure_backend() -> keyring.backend.KeyringBackend | None:
    backend = keyring.get_keyring()
    candidates: list[keyring.backend.KeyringBackend] = list(getattr(backend, "backends", [backend]))  # a chainer
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


def choose_keystore(choice: str, file_path: Path, account: str) -> tuple[Keystore, str | None]:
    """The slot for ``choice`` (``auto``, ``keyring`` or ``file``), and a warning to show, if any.

    ``auto`` takes a secure platform keyring when one works, else the file at ``file_path``
    with a loud warning; ``keyring`` refuses to go without one.
    """
    file_store = FileKeystore(file_path)
    if choice == "file":
        return file_store, FILE_WARNING
    backend = _secure_backend()
    if backend is not None:
        return KeyringKeystore(account, backend), None
    if choice == "keyring":
        raise ConfigError("keyvault.keystore = keyring, but no secure platform keyring is usable")
    log.warning("keystore_fallback_to_file", warning=FILE_WARNING)
    return file_store, FILE_WARNING

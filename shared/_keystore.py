"""Secret slots: where a process keeps one secret between runs (keyvault's master key,
audit's latest checkpoint, storage's backup lineage), so the mesh restarts unattended.

The platform keyring (Linux Secret Service, macOS Keychain, Windows Credential
Manager) through ``keyring``, or, only when chosen in mesh.toml or when no
secure keyring works, a 0600 file in the anchor directory outside the home
(:mod:`shared._anchors`), named after the keyring account. A plaintext or null
keyring backend is never used: ``auto`` falls back to the file with a loud
warning (logs and ``meshctl status``) instead.
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

from . import _certs as certs
from ._anchors import anchor_dir, slot_file
from ._config import KeyvaultConfig
from ._errors import ConfigError
from ._home import MeshHome
from ._logging import get_logger

log = get_logger("keystore")

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
    """A secret in a file of its own (in the anchor directory), mode 0600, written atomically:
    a new file (``O_EXCL``, fsynced), renamed over the old one, then the directory fsynced."""

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
        # The rename is durable only once the directory entry is: a crash must not bring the
        # old secret back (an older checkpoint or lineage is exactly a rollback).
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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


def keyring_slot(account: str) -> KeyringKeystore | None:
    """The slot of ``account`` in a secure platform keyring, or None when none is usable."""
    backend = _secure_backend()
    return None if backend is None else KeyringKeystore(account, backend)


def choose_keystore(settings: KeyvaultConfig, home: MeshHome, account: str) -> tuple[Keystore, str | None]:
    """The slot of keyring ``account`` for ``[keyvault]`` ``settings``, and a warning to show, if any.

    ``keystore`` = ``auto`` (and ``password``, for every slot but the master key's, which
    keyvault never stores in that mode) takes a secure platform keyring when one works, else
    the file of ``account`` in the anchor directory with a loud warning; ``keyring`` refuses
    to go without one; ``file`` takes the file. The anchor directory is checked (and created)
    only when a file slot is chosen.
    """
    if settings.keystore == "file":
        return FileKeystore(slot_file(anchor_dir(home, settings.anchor_dir), account)), FILE_WARNING
    backend = _secure_backend()
    if backend is not None:
        return KeyringKeystore(account, backend), None
    if settings.keystore == "keyring":
        raise ConfigError("keyvault.keystore = keyring, but no secure platform keyring is usable")
    log.warning("keystore_fallback_to_file", warning=FILE_WARNING)
    return FileKeystore(slot_file(anchor_dir(home, settings.anchor_dir), account)), FILE_WARNING

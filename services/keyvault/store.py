"""keyvault's state file and the key hierarchy it holds.

::

    master key  = Argon2id(password, salt, master profile)       kept in the keystore
    KEK         = HKDF-SHA256(master key, "kek")                  memory only
    data key    = random 256 bits per (purpose, version)          memory only
    wrapped key = AES-256-GCM(KEK, data key, aad="datakey:<purpose>:<version>")   on disk

The state file (``<home>/data/keyvault/state``, msgpack) holds the salt, the
profile the master key was derived with, a verifier sealed under the KEK, the
wrapped data keys and who fetched which. Every write is atomic: temporary
file, fsync, rename, fsync of the directory. A password change re-wraps the
data keys under the new KEK in one such write, so at every instant exactly one
password opens the state and no data key changes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from shared import PURPOSES, Argon2Profile, MeshHome, StateError
from shared.crypto import (
    IntegrityError,
    derive_from_password,
    derive_subkey,
    open_sealed,
    open_sealed_secret,
    random_key,
    seal,
    wipe,
)
from shared.files import write_atomic

FORMAT = 1
_VERIFIER = b"curvemesh master key verifier"
Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    """Production default: no fault injection."""


def state_path(home: MeshHome) -> Path:
    return home.data / "keyvault" / "state"


@dataclass
class KeyVersion:
    wrapped: bytes
    created: float
    fetched_by: list[str] = field(default_factory=list)


@dataclass
class VaultState:
    """The decoded state file. Holds only wrapped keys: nothing here is secret on its own."""

    mesh_id: str
    salt: bytes
    profile: Argon2Profile
    verifier: bytes
    current: dict[str, int]
    versions: dict[str, dict[int, KeyVersion]]

    def to_wire(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "mesh_id": self.mesh_id, "salt": self.salt,
            "profile": [self.profile.memory_kib, self.profile.iterations, self.profile.parallelism],
            "verifier": self.verifier, "current": dict(self.current),
            "versions": {p: {str(v): [k.wrapped, k.created, list(k.fetched_by)] for v, k in vs.items()}
                         for p, vs in self.versions.items()},
        }

    @classmethod
    def from_wire(cls, data: Any) -> VaultState:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("unknown format")
        memory, iterations, parallelism = data["profile"]
        versions = {p: {int(v): KeyVersion(bytes(k[0]), float(k[1]), [str(x) for x in k[2]])
                        for v, k in vs.items()} for p, vs in data["versions"].items()}
        current = {str(p): int(v) for p, v in data["current"].items()}
        for purpose, version in current.items():
            if version not in versions.get(purpose, {}):
                raise ValueError("current version missing")
        return cls(str(data["mesh_id"]), bytes(data["salt"]), Argon2Profile(memory, iterations, parallelism),
                   bytes(data["verifier"]), current, versions)


def load(home: MeshHome) -> VaultState | None:
    """The state, or None if keyvault was never initialised; :class:`StateError` if corrupt."""
    path = state_path(home)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return VaultState.from_wire(msgpack.unpackb(data, raw=False, strict_map_key=False))
    except (ValueError, KeyError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise StateError(f"{path}: keyvault state is corrupt ({type(exc).__name__}); refusing to "
                         "start rather than make fresh keys over existing data") from None


def save(home: MeshHome, state: VaultState, checkpoint: Checkpoint = _no_checkpoint) -> None:
    """Write the state atomically: a crash leaves the old file or the new one, never a mix."""
    path = state_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, msgpack.packb(state.to_wire(), use_bin_type=True), checkpoint=checkpoint)


def _aad(purpose: str, version: int) -> bytes:
    return f"datakey:{purpose}:{version}".encode()


def kek_from_master(master: bytearray) -> bytearray:
    return derive_subkey(master, "kek")


def derive_master(password: bytearray, state: VaultState) -> bytearray:
    """Argon2id with the salt and profile the state was made with (slow by design)."""
    return derive_from_password(password, state.salt, state.profile)


def create(password: bytearray, profile: Argon2Profile) -> tuple[VaultState, bytearray]:
    """A fresh hierarchy: salt, master key, verifier and version 1 of every purpose."""
    salt = secrets.token_bytes(16)
    master = derive_from_password(password, salt, profile)
    kek = kek_from_master(master)
    mesh_id = secrets.token_hex(8)
    now = time.time()
    versions: dict[str, dict[int, KeyVersion]] = {}
    for purpose in PURPOSES:
        key = random_key()
        versions[purpose] = {1: KeyVersion(seal(kek, bytes(key), _aad(purpose, 1)), now)}
        wipe(key)
    state = VaultState(mesh_id, salt, profile, seal(kek, _VERIFIER, mesh_id.encode()), dict.fromkeys(PURPOSES, 1),
                       versions)
    wipe(kek)
    return state, master


def open_keys(state: VaultState, master: bytearray) -> dict[tuple[str, int], bytearray]:
    """Unwrap every data key; :class:`IntegrityError` if ``master`` is not this state's."""
    kek = kek_from_master(master)
    try:
        open_sealed(kek, state.verifier, state.mesh_id.encode())
        return {(purpose, version): open_sealed_secret(kek, entry.wrapped, _aad(purpose, version))
                for purpose, entries in state.versions.items() for version, entry in entries.items()}
    finally:
        wipe(kek)


def rewrap(state: VaultState, keys: dict[tuple[str, int], bytearray], new_master: bytearray,
           salt: bytes, profile: Argon2Profile) -> VaultState:
    """The same data keys wrapped under a new master key (a password change)."""
    kek = kek_from_master(new_master)
    try:
        versions = {p: {v: KeyVersion(seal(kek, bytes(keys[(p, v)]), _aad(p, v)), e.created, list(e.fetched_by))
                        for v, e in vs.items()} for p, vs in state.versions.items()}
        return VaultState(state.mesh_id, salt, profile, seal(kek, _VERIFIER, state.mesh_id.encode()),
                          dict(state.current), versions)
    finally:
        wipe(kek)


def add_version(state: VaultState, master: bytearray, purpose: str) -> tuple[int, bytearray]:
    """Wrap a new random key as the next version of ``purpose`` (state changed in place)."""
    kek = kek_from_master(master)
    try:
        version = max(state.versions[purpose]) + 1
        key = random_key()
        state.versions[purpose][version] = KeyVersion(seal(kek, bytes(key), _aad(purpose, version)), time.time())
        state.current[purpose] = version
        return version, key
    finally:
        wipe(kek)


def add_missing_purposes(state: VaultState, master: bytearray) -> dict[tuple[str, int], bytearray]:
    """Give every purpose the state has no key for (one added to :data:`PURPOSES` after this home
    was initialised) its version 1, in place; the new keys. The caller has checked ``master``
    (:func:`open_keys`) and saves the state before handing any new key out."""
    missing = [purpose for purpose in PURPOSES if purpose not in state.versions]
    if not missing:
        return {}
    kek = kek_from_master(master)
    added: dict[tuple[str, int], bytearray] = {}
    try:
        for purpose in missing:
            key = random_key()
            state.versions[purpose] = {1: KeyVersion(seal(kek, bytes(key), _aad(purpose, 1)), time.time())}
            state.current[purpose] = 1
            added[(purpose, 1)] = key
    finally:
        wipe(kek)
    return added


__all__ = ["IntegrityError", "VaultState", "add_missing_purposes", "add_version", "create", "derive_master", "load",
           "open_keys", "rewrap", "save", "state_path"]

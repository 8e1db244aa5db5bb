"""The backup archive's format, shared by its writer (:mod:`.writer`) and reader (:mod:`.reader`).

Contract: this module defines what an archive *is*: its constants and reader limits, the header and
its key wraps (parsing them, and the two openers that unwrap the archive key), the manifest records,
and the rule for entry names. It does no body I/O. It is a module of its own so the writer and the
reader each depend on one definition of the format instead of on each other.

Format, version 1 (integers big-endian)::

    0      4   magic b"CMBK"
    4      1   format version (0x01); any other version is refused with a clear error
    5      4   n: length of the header
    9      n   header, msgpack: {"created": float, "mesh_id": str, "sequence": int,
               "kdf": None | [memory_kib, iterations, parallelism, salt (16 bytes)],
               "wraps": [[kind, version, sealed archive key], ...]}
    9+n        body: a STREAM (core/stream.py) under the archive key, key version 0, whose associated
               data is bytes [0, 9+n): editing any header byte (a sequence, a wrap) fails every chunk

The archive key is random (256 bits) and wrapped with ``shared.crypto.seal``: kind ``backup-key``
(version = the mesh's ``backups`` key version; restores on the same mesh) and, optionally, kind
``passphrase`` (version None; key = Argon2id of the passphrase with ``kdf``'s profile and salt;
restores anywhere). A wrap's associated data is a label, the header without the sealed keys, and the
wrap's kind and version, so a wrap cannot be moved or the header edited before the body is read.

The body's plaintext is a sequence of entries, each ``u32 length || msgpack([name, kind, size]) ||
size bytes``: kind ``file`` (a snapshot file, extracted to disk) or ``bytes`` (data the caller adds,
such as data keys: extract returns it in memory and never writes it to disk). The last entry is
``["MANIFEST", "manifest", size]``: msgpack ``{"entries": [[name, kind, size, sha256], ...], "meta":
{...}}``; nothing follows it. Readers check every chunk, the final chunk, every entry's size and
SHA-256 against the manifest, and that the entries are exactly the manifest's, in order. Entry
names are relative POSIX paths without ``..``, ``.``, empty parts, backslashes or control characters.

Limits a reader enforces before trusting anything: a header of at most 64 KiB with 1-8 wraps, an
Argon2id profile within the OWASP floor (unless test profiles are allowed) and at most 4 GiB, 100
iterations and 64 lanes, entry headers of 8 KiB, ``bytes`` entries of 16 MiB, a manifest of 64 MiB.
"""

from __future__ import annotations

import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgpack

from shared import Argon2Profile, BadRequest, ConfigError, Unauthenticated
from shared.crypto import IntegrityError, check_profile, derive_from_password, open_sealed_secret, wipe

from ..core.errors import DamagedError, MissingKeyError

MAGIC: Final = b"CMBK"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "MANIFEST"
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_FRAME_BYTES: Final = 8 * 1024
MAX_MANIFEST_BYTES: Final = 64 << 20
#: ``bytes`` entries are held in memory on extract.
MAX_BYTES_ENTRY: Final = 16 << 20
#: An attacker-edited header must not make a reader allocate more than this for Argon2id.
MAX_ARGON2_MEMORY_KIB: Final = 4 << 20
#: The fixed prefix of an archive: magic, format version, header length.
PREFIX: Final = struct.Struct(">4sBI")
#: The length in front of each entry header in the body.
U32: Final = struct.Struct(">I")
_WRAP_AAD: Final = b"curvemesh/archive-wrap/v1"
UNPACK_ERRORS: Final = (ValueError, TypeError, msgpack.exceptions.UnpackException)

Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """No progress reporting."""



@dataclass(frozen=True, slots=True)
class Wrap:
    """The archive key sealed for one opener: ``backup-key`` (with its version) or ``passphrase``."""

    kind: str
    version: int | None
    sealed: bytes


@dataclass(frozen=True, slots=True)
class ArchiveHeader:
    """The parsed header; ``raw`` is its bytes as stored (the body's associated data)."""

    created: float
    mesh_id: str
    sequence: int
    kdf: tuple[Argon2Profile, bytes] | None
    wraps: tuple[Wrap, ...]
    raw: bytes

    @property
    def backup_key_version(self) -> int | None:
        """The ``backups`` key version that opens the archive, None if only a passphrase does."""
        return next((w.version for w in self.wraps if w.kind == "backup-key"), None)

    @property
    def has_passphrase(self) -> bool:
        return any(w.kind == "passphrase" for w in self.wraps)

    def wrap_aad(self, wrap: Wrap) -> bytes:
        return build_wrap_aad(self.created, self.mesh_id, self.sequence, self.kdf,
                              [(w.kind, w.version) for w in self.wraps], wrap.kind, wrap.version)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    name: str
    kind: str
    size: int
    sha256: bytes


@dataclass(slots=True)
class Manifest:
    """What an archive holds. ``extras`` (the ``bytes`` entries, by name) is filled by
    :func:`extract_archive` only; the caller wipes them (:meth:`wipe`)."""

    entries: list[ManifestEntry]
    meta: dict[str, Any]
    extras: dict[str, bytearray] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def __getitem__(self, name: str) -> bytearray:
        """The extracted ``bytes`` entry ``name`` (``KeyError`` if there is none)."""
        return self.extras[name]

    def wipe(self) -> None:
        for data in self.extras.values():
            wipe(data)
        self.extras.clear()


def kdf_wire(kdf: tuple[Argon2Profile, bytes] | None) -> list[Any] | None:
    """The header's ``kdf`` field: None, or the profile's costs and the salt."""
    if kdf is None:
        return None
    profile, salt = kdf
    return [profile.memory_kib, profile.iterations, profile.parallelism, salt]


def build_wrap_aad(created: float, mesh_id: str, sequence: int, kdf: tuple[Argon2Profile, bytes] | None,
                   wraps: list[tuple[str, int | None]], kind: str, version: int | None) -> bytes:
    """The associated data of one wrap: a label, the header without the sealed keys, the wrap's kind
    and version (see the module notes)."""
    core = [FORMAT_VERSION, created, mesh_id, sequence, kdf_wire(kdf), [list(w) for w in wraps], kind, version]
    packed: bytes = msgpack.packb(core, use_bin_type=True)
    return _WRAP_AAD + packed


def check_entry_name(name: object) -> str:
    """``name`` if it is a safe relative POSIX path (see the module notes); ``ValueError`` otherwise."""
    if not isinstance(name, str) or not 1 <= len(name.encode("utf-8", "surrogatepass")) <= 4096:
        raise ValueError("archive entry names are 1-4096 bytes of text")
    bad_char = any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch == "\\" for ch in name)
    parts = name.split("/")
    if bad_char or any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts) or name == MANIFEST_NAME:
        raise ValueError(f"archive entry name {name!r:.80} is not a safe relative path")
    return name



# -- header -----------------------------------------------------------------------------------------

def require(condition: bool) -> None:
    """Raise ``ValueError`` unless ``condition``; parsers turn it into a :class:`DamagedError`."""
    # Not `assert`: validation of untrusted input must survive `python -O`.
    if not condition:
        raise ValueError("malformed")


def parse_header(f: BinaryIO) -> ArchiveHeader:
    """Read and check the header at the start of ``f``; ``f`` is left at the start of the body."""
    prefix = f.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        raise DamagedError("archive header is truncated")
    magic, version, length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise DamagedError("not a curvemesh backup archive")
    if version != FORMAT_VERSION:
        raise DamagedError(f"archive format version {version} is not supported (this curvemesh reads "
                           f"version {FORMAT_VERSION}): it was made by another release")
    if length > MAX_HEADER_BYTES:
        raise DamagedError("archive header is too large")
    body = f.read(length)
    if len(body) < length:
        raise DamagedError("archive header is truncated")
    try:
        fields = msgpack.unpackb(body, raw=False)
        created, mesh_id, sequence = fields["created"], fields["mesh_id"], fields["sequence"]
        kdf = None
        if fields["kdf"] is not None:
            memory, iterations, parallelism, salt = fields["kdf"]
            kdf = (Argon2Profile(memory, iterations, parallelism), salt)
            require(all(type(v) is int for v in (memory, iterations, parallelism)) and type(salt) is bytes)
        wraps = tuple(Wrap(kind, version, sealed) for kind, version, sealed in fields["wraps"])
        require(set(fields) == {"created", "mesh_id", "sequence", "kdf", "wraps"} and type(created) is float
                 and type(mesh_id) is str and type(sequence) is int and 0 < len(wraps) <= 8)
        for w in wraps:
            backup = w.kind == "backup-key" and type(w.version) is int
            require((backup or (w.kind == "passphrase" and w.version is None and kdf is not None))
                     and type(w.sealed) is bytes)
    except (*UNPACK_ERRORS, KeyError):
        raise DamagedError("archive header is malformed") from None
    return ArchiveHeader(created, mesh_id, sequence, kdf, wraps, prefix + body)


def read_header(path: Path) -> ArchiveHeader:
    """The header of the archive at ``path`` (authenticated only when a key opens it, or the body is
    read). :class:`DamagedError` if it is not a version-1 archive or the header is cut or malformed."""
    with open(path, "rb") as f:
        return parse_header(f)


def _opener_failed(what: str) -> Unauthenticated:
    return Unauthenticated(f"{what} does not open this archive (or its header was changed)")


def open_with_backup_key(header: ArchiveHeader,
                         key: bytes | bytearray | Callable[[int], bytes | bytearray]) -> bytearray:
    """The archive key, unwrapped with the mesh's ``backups`` key: the key itself (of
    ``header.backup_key_version``) or a lookup by version such as ``KeySet.key``. ``BadRequest`` if
    the archive has no backup-key wrap, :class:`Unauthenticated` if the key does not open it."""
    wraps = [w for w in header.wraps if w.kind == "backup-key"]
    if not wraps:
        raise BadRequest("this archive can be opened with its passphrase only")
    for wrap in wraps:
        try:
            backup_key = key(int(wrap.version or 0)) if callable(key) else key
        except MissingKeyError:
            continue
        try:
            return open_sealed_secret(backup_key, wrap.sealed, header.wrap_aad(wrap))
        except IntegrityError:
            raise _opener_failed(f"version {wrap.version} of the backup key") from None
    raise MissingKeyError("storage does not hold the backup key version this archive was made with")


def check_archive_profile(profile: Argon2Profile, allow_test_profiles: bool) -> None:
    """Refuse an Argon2id profile an archive header asks for: below the OWASP floor (unless
    ``allow_test_profiles``), or costlier than 4 GiB, 100 iterations or 64 lanes (a header edited to
    exhaust the machine). :class:`DamagedError`."""
    if not (profile.memory_kib <= MAX_ARGON2_MEMORY_KIB and 1 <= profile.iterations <= 100
            and 1 <= profile.parallelism <= 64):
        raise DamagedError("the archive asks for an Argon2id profile beyond the allowed cost: refusing it")
    try:
        check_profile("file", profile, allow_test_profiles)
    except ConfigError:
        raise DamagedError("the archive asks for an Argon2id profile below the minimum: refusing it") from None


def open_with_passphrase(header: ArchiveHeader, passphrase: bytes | bytearray,
                         allow_test_profiles: bool = False) -> bytearray:
    """The archive key, unwrapped with a key derived from ``passphrase`` (Argon2id with the header's
    profile, checked first by :func:`check_archive_profile`). :class:`Unauthenticated` if the
    passphrase does not open it; ``BadRequest`` if the archive has no passphrase."""
    wrap = next((w for w in header.wraps if w.kind == "passphrase"), None)
    if wrap is None or header.kdf is None:
        raise BadRequest("this archive has no passphrase: open it with the mesh's backup key")
    profile, salt = header.kdf
    check_archive_profile(profile, allow_test_profiles)
    kek = derive_from_password(passphrase, salt, profile)
    try:
        return open_sealed_secret(kek, wrap.sealed, header.wrap_aad(wrap))
    except IntegrityError:
        raise _opener_failed("the passphrase") from None
    finally:
        wipe(kek)


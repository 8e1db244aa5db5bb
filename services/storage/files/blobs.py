"""The on-disk format of a file blob, and the durable steps that put one in place or remove it.

Contract: :mod:`.store` decides *what* is stored (names, uploads, which key version wins, when a
blob is rotated or removed, and the lock that orders it all); this module owns *how* a blob looks
on disk: the keyed path tags, the fixed metadata slot and its sealing, the ``.part`` files content
is streamed into, and the fsync / rename / unlink steps that make each change durable. It was split
out of the store (:mod:`.store`) so the format and its durability rules can be read and audited in one place.
Nothing here takes the store's lock: methods marked "under the lock" expect the caller to hold it.

Layout under ``root`` (directories 0700, files 0600)::

    <root>/tmp/<random>.part                       uploads and re-encryptions in progress
    <root>/<ns_tag hex>/<name_tag hex>.v<version>  one blob per file, sealed under that key version

``ns_tag`` = HMAC-SHA256(K_names, "ns" 0x00 || ns.label())[:16] and ``name_tag`` = HMAC-SHA256(K_names,
"name" 0x00 || msgpack([ns.label(), name])), K_names = derive_subkey(files key of the blob's version,
"storage-file-names"): neither namespaces nor names can be read on disk. Tags depend on the key
version, so after rotation a namespace's blobs live in another directory.

Blob format, version 1 (integers big-endian)::

    0     4     magic b"CMF1"
    4     2     n: length of the sealed metadata
    6     n     seal(K_meta, msgpack([1, owner, subject, category, name, size, chunks, created]), aad)
    6+n         zero bytes up to META_SLOT (1536): a fixed-size slot, written at commit (when size and
                chunk count are known) in front of the content streamed before it
    1536        STREAM (core/stream.py) of the content, aad = msgpack(["file1", ns.label(), name])

K_meta = derive_subkey(files key, "storage-file-meta"). The metadata's aad is a label, both path tags,
the key version and the STREAM header: a blob renamed to another name's path, or metadata paired
with another stream, fails its check.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import msgpack

from shared import BadRequest
from shared.crypto import IntegrityError, derive_subkey, open_sealed, seal, wipe
from shared.files import fsync_path

from ..core.errors import DamagedError
from ..core.keys import KeySet
from ..core.namespace import Namespace
from ..core.stream import HEADER_BYTES, StreamHeader, StreamReader, StreamWriter, chunk_count, header_of

META_SLOT: Final = 1536
MAGIC: Final = b"CMF1"
META_AAD: Final = b"curvemesh/file-meta/v1"
NS_DIR_RE: Final = re.compile(r"[0-9a-f]{32}")
BLOB_RE: Final = re.compile(r"([0-9a-f]{64})\.v([1-9][0-9]{0,9})")


@dataclass(frozen=True, slots=True)
class Blob:
    """A blob's checked metadata; ``label`` names it by its tags (never by its file name)."""

    ns: Namespace
    name: str
    size: int
    chunks: int
    version: int
    created: float
    header: StreamHeader
    label: str


def open_blob(path: Path) -> BinaryIO:
    """Open a blob for reading without following a symlink."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def stream_aad(ns: Namespace, name: str) -> bytes:
    """The associated data of a file's content STREAM."""
    aad: bytes = msgpack.packb(["file1", ns.label(), name], use_bin_type=True)
    return aad


def meta_aad(path: Path, version: int, header_raw: bytes) -> bytes:
    """The associated data of the metadata sealed in the blob at ``path`` (see the module notes)."""
    tags = bytes.fromhex(path.parent.name) + bytes.fromhex(path.name.partition(".")[0])
    return META_AAD + tags + version.to_bytes(4, "big") + header_raw


def iter_blobs(root: Path) -> Iterator[tuple[Path, int]]:
    """Every blob under ``root`` with its key version, sorted; ``(path, 0)`` for what is not a blob."""
    for ns_dir in sorted(os.scandir(root), key=lambda e: e.name):
        if ns_dir.name == "tmp":
            continue
        if not (NS_DIR_RE.fullmatch(ns_dir.name) and ns_dir.is_dir(follow_symlinks=False)):
            yield Path(ns_dir.path), 0
            continue
        for entry in sorted(os.scandir(ns_dir.path), key=lambda e: e.name):
            match = BLOB_RE.fullmatch(entry.name)
            ok = match is not None and entry.is_file(follow_symlinks=False)
            yield Path(entry.path), (int(match.group(2)) if match is not None and ok else 0)


def copy_blob(src: Path, dst: Path) -> None:
    """Copy a blob to the new file ``dst`` (0600) and fsync it."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open_blob(src) as f, os.fdopen(fd, "wb") as out:
        while piece := f.read(1 << 20):
            out.write(piece)
        out.flush()
        os.fsync(out.fileno())


class BlobDir:
    """The blob directory ``root``: its ``tmp`` directory, the subkeys that name and seal blobs (cached
    per key version), and the durable steps on blobs. Opening it removes the ``.part`` files a crash
    left in ``tmp`` (mid-upload or mid-rotation): they were never acknowledged."""

    def __init__(self, root: Path) -> None:
        self.root, self.tmp = root, root / "tmp"
        root.mkdir(mode=0o700, exist_ok=True)
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        self._cache_lock = threading.Lock()
        self._subkeys: dict[int, tuple[bytearray, bytearray, bytearray]] = {}
        # What a crash left in tmp was never acknowledged: removing it applies nothing half-way.
        for entry in os.scandir(self.tmp):
            os.unlink(entry.path)
        fsync_path(self.tmp)

    # -- keys and names -------------------------------------------------------------------------------

    def subkeys(self, keys: KeySet, version: int) -> tuple[bytearray, bytearray]:
        """K_names and K_meta of key ``version``."""
        source = keys.key(version)
        with self._cache_lock:
            entry = self._subkeys.get(version)
            # Cached subkeys are valid only for the very bytearray they were derived from.
            if entry is None or entry[0] is not source:
                if entry is not None:
                    wipe(entry[1])
                    wipe(entry[2])
                names_key = derive_subkey(source, "storage-file-names")
                entry = (source, names_key, derive_subkey(source, "storage-file-meta"))
                self._subkeys[version] = entry
            return entry[1], entry[2]

    def forget(self) -> None:
        """Wipe the cached subkeys."""
        with self._cache_lock:
            for _, names_key, meta_key in self._subkeys.values():
                wipe(names_key)
                wipe(meta_key)
            self._subkeys.clear()

    def path(self, keys: KeySet, version: int, ns: Namespace, name: str) -> Path:
        """Where the blob of ``name`` in ``ns`` sealed under key ``version`` lives."""
        names_key, _ = self.subkeys(keys, version)
        label = ns.label()
        ns_tag = hmac.new(names_key, b"ns\x00" + label, hashlib.sha256).digest()[:16]
        name_msg = b"name\x00" + msgpack.packb([label, name], use_bin_type=True)
        name_tag = hmac.new(names_key, name_msg, hashlib.sha256).hexdigest()
        return self.root / ns_tag.hex() / f"{name_tag}.v{version}"

    def in_namespace(self, keys: KeySet, version: int, ns: Namespace) -> list[Path]:
        """The blobs of ``ns`` sealed under key ``version``, sorted by path."""
        ns_dir = self.path(keys, version, ns, "").parent
        try:
            entries = sorted(os.scandir(ns_dir), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        return [Path(e.path) for e in entries if BLOB_RE.fullmatch(e.name) and e.name.endswith(f".v{version}")]

    # -- the metadata slot ----------------------------------------------------------------------------

    def _seal_meta(self, keys: KeySet, path: Path, ns: Namespace, name: str, writer: StreamWriter,
                   created: float) -> bytes:
        _, meta_key = self.subkeys(keys, writer.header.key_version)
        plain = msgpack.packb([1, ns.owner, ns.subject, ns.category, name, writer.size, writer.chunks, created],
                              use_bin_type=True)
        sealed = seal(meta_key, plain, meta_aad(path, writer.header.key_version, writer.header.raw))
        return (MAGIC + struct.pack(">H", len(sealed)) + sealed).ljust(META_SLOT, b"\x00")

    def load(self, f: BinaryIO, path: Path, keys: KeySet, version: int) -> Blob:
        """Check and parse a blob's metadata; ``f`` is left at the start of its STREAM."""
        label = f"file blob {path.parent.name}/{path.name}"
        head = f.read(META_SLOT + HEADER_BYTES)
        if len(head) < META_SLOT + HEADER_BYTES or head[:4] != MAGIC:
            raise DamagedError(f"{label} is truncated or not a file blob")
        n = struct.unpack(">H", head[4:6])[0]
        _, meta_key = self.subkeys(keys, version)
        try:
            if n > META_SLOT - 6 or any(head[6 + n:META_SLOT]):
                raise IntegrityError("bad metadata slot")
            plain = open_sealed(meta_key, head[6:6 + n], meta_aad(path, version, head[META_SLOT:]))
            fmt, owner, subject, category, name, size, chunks, created = msgpack.unpackb(plain, raw=False)
            ns = Namespace(owner, subject, category)
        except (IntegrityError, ValueError, TypeError, BadRequest):
            raise DamagedError(f"{label} metadata failed its integrity check") from None
        f.seek(META_SLOT)
        header = header_of(f)
        f.seek(META_SLOT)
        if fmt != 1 or header.key_version != version or chunks != chunk_count(size, header.chunk_size):
            raise DamagedError(f"{label} metadata does not match its content")
        return Blob(ns, name, size, chunks, version, created, header, label)

    @staticmethod
    def reader(f: BinaryIO, keys: KeySet, blob: Blob) -> StreamReader:
        """A reader of the blob's content; ``f`` must be at the start of its STREAM."""
        return StreamReader(f, lambda _v: keys.key(blob.version), stream_aad(blob.ns, blob.name), what=blob.label)

    def check(self, path: Path, keys: KeySet, version: int) -> None:
        """Check the blob at ``path`` in full (metadata, each chunk, the final chunk, size and count);
        :class:`DamagedError` naming it by its tags otherwise."""
        with open_blob(path) as f:
            blob = self.load(f, path, keys, version)
            with self.reader(f, keys, blob) as reader:
                sizes = [len(plain) for plain in reader.chunks()]
        if (sum(sizes), len(sizes)) != (blob.size, blob.chunks):
            raise DamagedError(f"{blob.label} content does not match its metadata")

    # -- .part files and durable moves ----------------------------------------------------------------

    def new_part(self) -> tuple[Path, BinaryIO]:
        """A new ``.part`` file in ``tmp`` with an empty metadata slot, open for the content."""
        path = self.tmp / f"{secrets.token_hex(16)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        out = os.fdopen(fd, "wb")
        out.write(bytes(META_SLOT))
        return path, out

    def seal_part(self, out: BinaryIO, keys: KeySet, target: Path, ns: Namespace, name: str,
                  writer: StreamWriter, created: float) -> None:
        """Write the sealed metadata of the content ``writer`` wrote (for a blob at ``target``) into the
        ``.part``'s slot, fsync and close it: the ``.part`` is durable, ready for :meth:`install`."""
        slot = self._seal_meta(keys, target, ns, name, writer, created)
        out.seek(0)
        out.write(slot)
        out.flush()
        os.fsync(out.fileno())
        out.close()

    def reencrypt(self, f: BinaryIO, blob: Blob, source_keys: KeySet, keys: KeySet) -> tuple[Path, Path]:
        """Stream ``blob``'s checked content into a durable ``.part`` sealed under ``keys.current``;
        returns the ``.part`` and the path it belongs at."""
        ns, name = blob.ns, blob.name
        part, out = self.new_part()
        try:
            writer = StreamWriter(out, keys.key(keys.current), keys.current, stream_aad(ns, name),
                                  chunk_size=blob.header.chunk_size)
            with self.reader(f, source_keys, blob) as reader, writer:
                for plain in reader.chunks():
                    writer.write(plain)
            if (writer.size, writer.chunks) != (blob.size, blob.chunks):
                raise DamagedError(f"{blob.label} content does not match its metadata")
            target = self.path(keys, keys.current, ns, name)
            self.seal_part(out, keys, target, ns, name, writer, blob.created)
        except BaseException:
            out.close()
            part.unlink(missing_ok=True)
            raise
        return part, target

    def install(self, part: Path, target: Path) -> None:
        """Under the lock: rename a durable ``.part`` to ``target`` and make the rename durable."""
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700)
            fsync_path(self.root)
        os.replace(part, target)
        fsync_path(target.parent)

    def unlink(self, path: Path) -> bool:
        """Under the lock: remove a blob durably, and its namespace directory once empty."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        fsync_path(path.parent)
        try:
            path.parent.rmdir()
        except OSError:
            return True
        fsync_path(self.root)
        return True

    def link_into(self, dest: Path) -> list[str]:
        """Under the lock: hard-link (or, across file systems, copy) every blob into the directory
        ``dest``; returns their relative paths, sorted."""
        done: list[str] = []
        for path, version in iter_blobs(self.root):
            if version:
                target = dest / path.parent.name / path.name
                target.parent.mkdir(mode=0o700, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:
                    copy_blob(path, target)
                done.append(f"{path.parent.name}/{path.name}")
        return done

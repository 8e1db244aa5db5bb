"""Writing a backup archive: one file holding a snapshot of encrypted stores and the keys that open them.

Contract: :class:`ArchiveWriter` adds entries in order and publishes the archive, durably and 0600,
only once its manifest is written; :func:`write_archive` packs a list of files and byte entries in
one go. The format itself (header, key wraps, manifest records, entry-name rule) is
:mod:`.format`; reading an archive back (verify, extract) is :mod:`.reader`. The three were split
so the writer, the format and the untrusted-input reader can each be read on their own.

Page cache. An archive is as large as everything stored, and nothing reads it soon after it is
written, so the writer syncs it every :data:`DROP_EVERY` bytes and tells the kernel to drop those
pages (``POSIX_FADV_DONTNEED``): a backup then leaves the page cache as it found it (the companion's
hot data stays cached) instead of filling it with a second copy of the store, which on the machine
measured made each GiB past the first few about ten times dearer (issue 18, docs/storage.md). The
data reaches the disk no later than before: what was synced once at the end is synced in steps.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast

import msgpack

from shared import Argon2Profile
from shared.crypto import derive_from_password, random_key, seal, wipe
from shared.files import drop_cached, fsync_path

from ..core.stream import DEFAULT_CHUNK_SIZE, StreamWriter
from .format import (
    FORMAT_VERSION,
    MAGIC,
    MANIFEST_NAME,
    MAX_ARGON2_MEMORY_KIB,
    MAX_BYTES_ENTRY,
    PREFIX,
    U32,
    ArchiveHeader,
    Manifest,
    ManifestEntry,
    Progress,
    Wrap,
    build_wrap_aad,
    check_entry_name,
    kdf_wire,
    no_progress,
)

__all__ = ["ArchiveInfo", "ArchiveWriter", "write_archive"]

#: How much of a source file the writer reads at a time.
_PIECE: Final = 1 << 20
#: Written bytes between syncs that drop the archive's pages from the page cache (module notes).
DROP_EVERY: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """A written archive: its path, size in bytes, header and manifest."""

    path: Path
    size: int
    header: ArchiveHeader
    manifest: Manifest



class ArchiveWriter:
    """Writes an archive to ``path`` (which must not exist): entries are added in order, then
    :meth:`finish` writes the manifest and publishes the file, durably, 0600. Until then the data
    goes to a ``.part`` file beside ``path`` (``O_EXCL``), removed by :meth:`abort` (or on an
    exception in a ``with`` block). ``profile`` comes from validated configuration
    (``config.argon2.file``); it is needed only with a ``passphrase``. Memory stays flat, and so
    does the page cache: every ``drop_every`` bytes written are synced and dropped from it (module
    notes; tests make it small to see it happen)."""

    def __init__(self, path: Path, *, mesh_id: str, sequence: int, backup_key: tuple[int, bytes | bytearray],
                 passphrase: bytes | bytearray | None = None, profile: Argon2Profile | None = None,
                 progress: Progress = no_progress, total_bytes: int = 0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, created: float | None = None,
                 drop_every: int = DROP_EVERY) -> None:
        if not isinstance(mesh_id, str) or not 1 <= len(mesh_id) <= 128 or type(sequence) is not int or sequence < 0:
            raise ValueError("an archive needs a mesh_id (1-128 characters) and a sequence >= 0")
        if passphrase is not None and (profile is None or not passphrase):
            raise ValueError("a passphrase needs an Argon2id profile and at least one character")
        self.path, self._progress, self._total, self._done = path, progress, total_bytes, 0
        self._drop_every, self._unsynced = max(1, drop_every), 0
        when = time.time() if created is None else float(created)
        kdf = None if passphrase is None or profile is None else (profile, secrets.token_bytes(16))
        if kdf is not None and not (kdf[0].memory_kib <= MAX_ARGON2_MEMORY_KIB and kdf[0].iterations <= 100
                                    and kdf[0].parallelism <= 64):
            raise ValueError("the Argon2id profile is costlier than a reader accepts")
        kinds: list[tuple[str, int | None]] = [("backup-key", backup_key[0])]
        kinds += [("passphrase", None)] if passphrase is not None else []
        archive_key = random_key()
        try:
            wraps = tuple(Wrap(kind, version,
                               self._wrap(archive_key, kind, backup_key[1], passphrase, kdf,
                                          build_wrap_aad(when, mesh_id, sequence, kdf, kinds, kind, version)))
                          for kind, version in kinds)
            body = msgpack.packb({"created": when, "mesh_id": mesh_id, "sequence": sequence, "kdf": kdf_wire(kdf),
                                  "wraps": [[w.kind, w.version, w.sealed] for w in wraps]}, use_bin_type=True)
            raw = PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body
            self.header = ArchiveHeader(when, mesh_id, sequence, kdf, wraps, raw)
            self._part = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._out = os.fdopen(fd, "wb")
            try:
                self._out.write(raw)
                self._stream = StreamWriter(self._out, archive_key, 0, raw, chunk_size=chunk_size)
            except BaseException:
                self._out.close()
                self._part.unlink()
                raise
        finally:
            wipe(archive_key)
        self._entries: list[ManifestEntry] = []
        self._names: set[str] = set()

    @staticmethod
    def _wrap(archive_key: bytearray, kind: str, backup_key: bytes | bytearray, passphrase: bytes | bytearray | None,
              kdf: tuple[Argon2Profile, bytes] | None, aad: bytes) -> bytes:
        # seal() reads any buffer; turning the key into bytes to please its type would leave a copy
        # that cannot be wiped.
        plain = cast(bytes, archive_key)
        if kind == "backup-key":
            return seal(backup_key, plain, aad)
        if passphrase is None or kdf is None:
            raise ValueError("a passphrase wrap needs a passphrase and a profile")
        kek = derive_from_password(passphrase, kdf[1], kdf[0])
        try:
            return seal(kek, plain, aad)
        finally:
            wipe(kek)

    def _write_entry(self, name: str, kind: str, size: int,
                     pieces: Iterable[bytes | bytearray | memoryview]) -> ManifestEntry:
        """Frame and write one entry (no name check: the public adders check first)."""
        frame = msgpack.packb([name, kind, size], use_bin_type=True)
        self._stream.write(U32.pack(len(frame)) + frame)
        digest, written = hashlib.sha256(), 0
        for piece in pieces:
            digest.update(piece)
            self._stream.write(piece)
            written += len(piece)
            self._unsynced += len(piece)
            if self._unsynced >= self._drop_every:
                self._drop_written()
            if kind != "manifest":
                self._done += len(piece)
                self._progress(self._done, self._total)
        if written != size:
            raise ValueError(f"archive entry {name!r:.80} changed size while it was being archived")
        return ManifestEntry(name, kind, size, digest.digest())

    def _drop_written(self) -> None:
        """Sync what the archive holds so far and drop its pages from the page cache (module notes)."""
        self._unsynced = 0
        self._out.flush()
        fd = self._out.fileno()
        os.fdatasync(fd)
        drop_cached(fd)

    def _claim(self, name: str) -> None:
        check_entry_name(name)
        if name in self._names:
            raise ValueError(f"archive entry {name!r:.80} is added twice")
        self._names.add(name)

    def add_file(self, name: str, source: Path) -> None:
        """Add the regular file ``source`` (not a symlink) as entry ``name``, streamed in pieces."""
        self._claim(name)
        with os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"archive entry {name!r:.80} is not a regular file")
            self._entries.append(self._write_entry(name, "file", info.st_size, iter(lambda: f.read(_PIECE), b"")))

    def add_bytes(self, name: str, data: bytes | bytearray) -> None:
        """Add ``data`` (at most 16 MiB) as entry ``name``: extract returns it in memory, never on disk."""
        self._claim(name)
        if len(data) > MAX_BYTES_ENTRY:
            raise ValueError(f"a bytes entry is at most {MAX_BYTES_ENTRY} bytes")
        self._entries.append(self._write_entry(name, "bytes", len(data), [memoryview(data)]))

    def finish(self, meta: dict[str, Any]) -> ArchiveInfo:
        """Write the manifest (with ``meta``), fsync, and publish the archive at ``path`` (never
        replacing a file there); durable on return."""
        manifest = Manifest(list(self._entries), dict(meta))
        body = msgpack.packb({"entries": [[e.name, e.kind, e.size, e.sha256] for e in self._entries],
                              "meta": manifest.meta}, use_bin_type=True)
        self._write_entry(MANIFEST_NAME, "manifest", len(body), [body])
        self._stream.close()
        self._out.flush()
        os.fsync(self._out.fileno())
        drop_cached(self._out.fileno())
        self._out.close()
        try:
            os.link(self._part, self.path)  # fails if ``path`` exists: an archive is never overwritten
        except FileExistsError:
            raise
        except OSError:
            # A file system without hard links (a FAT backup drive): check, then rename.
            if self.path.exists():
                raise FileExistsError(f"{self.path} exists") from None
            os.rename(self._part, self.path)
        self._part.unlink(missing_ok=True)
        fsync_path(self.path.parent)
        return ArchiveInfo(self.path, self.path.stat().st_size, self.header, manifest)

    def abort(self) -> None:
        """Discard the archive being written. Idempotent."""
        self._stream.discard()
        self._out.close()
        self._part.unlink(missing_ok=True)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or not self._out.closed:
            self.abort()


def write_archive(path: Path, files: list[tuple[str, Path]], extra: dict[str, bytes | bytearray],
                  meta: dict[str, Any], backup_key: tuple[int, bytes | bytearray],
                  passphrase: bytes | bytearray | None = None, profile: Argon2Profile | None = None,
                  progress: Progress = no_progress, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ArchiveInfo:
    """Pack ``files`` (entry name, source path) and ``extra`` (``bytes`` entries) into a new archive at
    ``path``. ``meta`` goes into the manifest and must hold ``mesh_id`` (str) and ``sequence`` (int),
    which also go into the header. ``progress(done, total)`` counts plaintext bytes."""
    try:
        mesh_id, sequence = meta["mesh_id"], meta["sequence"]
    except KeyError:
        raise ValueError("archive meta must hold mesh_id and sequence") from None
    total = sum(p.stat().st_size for _, p in files) + sum(len(d) for d in extra.values())
    with ArchiveWriter(path, mesh_id=mesh_id, sequence=sequence, backup_key=backup_key, passphrase=passphrase,
                       profile=profile, progress=progress, total_bytes=total, chunk_size=chunk_size) as writer:
        for name, source in files:
            writer.add_file(name, source)
        for name, data in extra.items():
            writer.add_bytes(name, data)
        return writer.finish(meta)


"""Reading a backup archive: the verify pass, extraction to disk, and the checks on what it names.

Contract: :func:`verify_archive` and :func:`extract_archive` trust nothing in the body until it has
been checked: every chunk authenticates, the final chunk is there, every entry's header, name, size
and SHA-256 match the manifest, and no entry is missing, extra, repeated or reordered. Extraction
makes a full verify pass first and writes only in a second pass, through directory descriptors that
never follow a symlink or replace a file, removing what it wrote if that pass fails. The format
itself (header, wraps, openers, manifest records, entry-name rule) is in :mod:`.format`. This
module is apart from the writer (:mod:`.writer`) so the untrusted-input side can be read on its own.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import msgpack

from shared.crypto import wipe

from ..core.errors import DamagedError
from ..core.stream import StreamReader
from .format import (
    MANIFEST_NAME,
    MAX_BYTES_ENTRY,
    MAX_FRAME_BYTES,
    MAX_MANIFEST_BYTES,
    U32,
    UNPACK_ERRORS,
    ArchiveHeader,
    Manifest,
    ManifestEntry,
    Progress,
    check_entry_name,
    no_progress,
    parse_header,
    require,
)


class _Plain:
    """The body's plaintext as a byte source, pulled from the STREAM one checked chunk at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._buf, self._pos = chunks, b"", 0

    def _fill(self) -> bool:
        while self._pos >= len(self._buf):
            following = next(self._chunks, None)
            if following is None:
                return False
            self._buf, self._pos = following, 0
        return True

    def pieces(self, n: int) -> Iterator[memoryview]:
        while n:
            if not self._fill():
                raise DamagedError("archive body ends inside an entry")
            take = min(n, len(self._buf) - self._pos)
            yield memoryview(self._buf)[self._pos:self._pos + take]
            self._pos, n = self._pos + take, n - take

    def read(self, n: int) -> bytes:
        return b"".join(self.pieces(n))

    def at_end(self) -> bool:
        return not self._fill()


class _Extractor:
    """Pass two of :func:`extract_archive`: ``file`` entries are written under ``dest`` through
    directory file descriptors opened with ``O_NOFOLLOW`` (no symlink is ever followed, no file
    replaced), ``bytes`` entries are kept in memory. :meth:`cleanup` removes everything it made."""

    def __init__(self, dest: Path) -> None:
        self.dest, self.made, self.extras = dest, list[Path](), dict[str, bytearray]()
        self._root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._out: BinaryIO | None = None
        self._buf, self._pos, self._name = bytearray(), 0, ""

    def open(self, name: str, kind: str, size: int) -> None:
        if kind == "bytes":
            self._buf, self._pos, self._name = bytearray(size), 0, name
            return
        parts = name.split("/")
        fd = os.dup(self._root)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.made.append(self.dest.joinpath(*parts[:depth]))
                except FileExistsError:
                    pass
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = inner
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = os.open(parts[-1], flags, 0o600, dir_fd=fd)
        finally:
            os.close(fd)
        self.made.append(self.dest.joinpath(*parts))
        self._out = os.fdopen(out, "wb")

    def write(self, piece: memoryview) -> None:
        if self._out is not None:
            self._out.write(piece)
        else:
            self._buf[self._pos:self._pos + len(piece)] = piece
            self._pos += len(piece)

    def close(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
            self._out = None
        else:
            self.extras[self._name], self._buf = self._buf, bytearray()

    def finish(self) -> None:
        """Make the new directory entries durable."""
        for directory in [self.dest, *(p for p in self.made if p.is_dir())]:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.close(self._root)

    def cleanup(self) -> None:
        if self._out is not None:
            self._out.close()
        for path in reversed(self.made):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        wipe(self._buf)
        for data in self.extras.values():
            wipe(data)
        os.close(self._root)


def _parse_manifest(data: bytes) -> Manifest:
    try:
        fields = msgpack.unpackb(data, raw=False)
        require(set(fields) == {"entries", "meta"} and isinstance(fields["meta"], dict))
        entries = [ManifestEntry(name, kind, size, digest) for name, kind, size, digest in fields["entries"]]
        require(all(type(e.name) is str and type(e.kind) is str and type(e.size) is int
                     and type(e.sha256) is bytes for e in entries))
    except UNPACK_ERRORS:
        raise DamagedError("archive manifest is malformed") from None
    return Manifest(entries, fields["meta"])


def _check_entry(name: object, kind: object, size: object, seen: set[str]) -> None:
    if kind not in ("file", "bytes") or type(size) is not int or size < 0 or not isinstance(name, str):
        raise DamagedError("archive entry header is malformed")
    try:
        check_entry_name(name)
    except ValueError as exc:
        raise DamagedError(str(exc)) from None
    if name in seen:
        raise DamagedError(f"archive entry {name!r:.80} appears twice")
    if kind == "bytes" and size > MAX_BYTES_ENTRY:
        raise DamagedError(f"archive entry {name!r:.80} is too large for a bytes entry")


def _compare(manifest: Manifest, seen: list[ManifestEntry]) -> None:
    """Raise naming the first difference between the manifest and the entries the body holds."""
    listed = {e.name: e for e in manifest.entries}
    for entry in seen:
        if entry.name not in listed:
            raise DamagedError(f"archive entry {entry.name!r:.80} is not in the manifest")
        if listed[entry.name] != entry:
            raise DamagedError(f"archive entry {entry.name!r:.80} does not match the manifest (size or SHA-256)")
    if len(seen) != len(manifest.entries) or manifest.entries != seen:
        missing = [e.name for e in manifest.entries if e.name not in {s.name for s in seen}]
        raise DamagedError(f"archive entry {missing[0]!r:.80} in the manifest is missing" if missing
                           else "archive entries are not in the manifest's order")
    files = {e.name for e in seen if e.kind == "file"}
    for name in files:
        parts = name.split("/")
        clash = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in files), None)
        if clash is not None:
            raise DamagedError(f"archive entry {clash!r:.80} is both a file and a directory")


def _walk(f: BinaryIO, header: ArchiveHeader, archive_key: bytes | bytearray, progress: Progress, offset: int,
          total: int, expected: Manifest | None = None, sink: _Extractor | None = None) -> Manifest:
    """One full pass over the body: every chunk, entry and hash checked; ``sink`` receives entries
    that passed their header checks (their hash is checked against ``expected`` before ``close``)."""
    def lookup(version: int) -> bytes | bytearray:
        if version != 0:
            raise DamagedError("archive body names an unknown key version")
        return archive_key

    f.seek(len(header.raw))
    seen: list[ManifestEntry] = []
    names: set[str] = set()
    with StreamReader(f, lookup, header.raw, what="archive") as reader:
        def chunks() -> Iterator[bytes]:
            for chunk in reader.chunks():
                progress(offset + f.tell(), total)
                yield chunk

        plain = _Plain(chunks())
        while True:
            length = U32.unpack(plain.read(4))[0]
            if length > MAX_FRAME_BYTES:
                raise DamagedError("archive entry header is malformed")
            try:
                name, kind, size = msgpack.unpackb(plain.read(length), raw=False)
            except UNPACK_ERRORS:
                raise DamagedError("archive entry header is malformed") from None
            if kind == "manifest":
                break
            _check_entry(name, kind, size, names)
            want = expected.entries[len(seen)] if expected is not None and len(seen) < len(expected.entries) else None
            if expected is not None and (want is None or (want.name, want.kind, want.size) != (name, kind, size)):
                raise DamagedError(f"archive entry {name!r:.80} differs from the first pass")
            names.add(name)
            digest = hashlib.sha256()
            if sink is not None:
                sink.open(name, kind, size)
            for piece in plain.pieces(size):
                digest.update(piece)
                if sink is not None:
                    sink.write(piece)
            seen.append(ManifestEntry(name, kind, size, digest.digest()))
            if want is not None and want != seen[-1]:
                raise DamagedError(f"archive entry {name!r:.80} does not match the manifest (size or SHA-256)")
            if sink is not None:
                sink.close()
        if name != MANIFEST_NAME or type(size) is not int or not 0 <= size <= MAX_MANIFEST_BYTES:
            raise DamagedError("archive manifest is malformed")
        manifest = _parse_manifest(plain.read(size))
        if not plain.at_end():
            raise DamagedError("archive holds data after its manifest")
    _compare(manifest, seen)
    progress(offset + f.seek(0, 2), total)
    return manifest


def verify_archive(path: Path, archive_key: bytes | bytearray, progress: Progress = no_progress) -> Manifest:
    """Check the whole archive: every chunk authenticates, the final chunk is there, every entry's
    size and SHA-256 match the manifest, no entry is missing or extra, every name is safe. Returns
    the manifest; :class:`DamagedError` naming what is wrong. ``progress(done, total)`` in archive bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return _walk(f, parse_header(f), archive_key, progress, 0, size)


def extract_archive(path: Path, archive_key: bytes | bytearray, dest: Path,
                    progress: Progress = no_progress) -> Manifest:
    """Verify the whole archive first (:func:`verify_archive`), then write its ``file`` entries under
    ``dest`` (absent or an empty directory; files 0600, directories 0700, each fsynced) and return the
    manifest with its ``bytes`` entries in ``extras`` (``manifest[name]``; wipe them when done).
    Nothing is written before the first pass has checked everything; if the second pass fails (the
    file changed in between), what it wrote is removed. ``progress`` covers both passes."""
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise ValueError("extract destination must be absent or an empty directory")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = parse_header(f)
        manifest = _walk(f, header, archive_key, progress, 0, 2 * size)
        made = not dest.exists()
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        sink = _Extractor(dest)
        try:
            result = _walk(f, header, archive_key, progress, size, 2 * size, expected=manifest, sink=sink)
            sink.finish()
        except BaseException:
            sink.cleanup()
            if made:
                dest.rmdir()
            raise
    result.extras = sink.extras
    return result

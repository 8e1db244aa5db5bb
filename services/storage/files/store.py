"""The encrypted file store: one blob per file, named by keyed tags, its content a STREAM.

Contract: this module holds the store's public API (:class:`FileStore`, :class:`Upload`,
:class:`FileInfo`, :func:`check_name`) and its rules: valid names, how uploads become files, which
key version wins, rotation, import, verification, snapshots, and the one lock ordering mutations.
The on-disk blob format and its durable steps live in :mod:`.blobs`, with the format notes.

Uploads are encrypted as they arrive into a ``.part`` file (plaintext never touches disk) that
commit fsyncs and renames into place; ``.part`` files left by a crash (mid-upload or mid-rotation)
were never acknowledged and are removed when the store opens.

A name lives under one key version at a time: commit removes the name's blobs of other versions,
and rotation removes the old blob once the new one is durable. Should a crash leave both, the higher
version holds the newer content and wins (current versions only increase). Mutations take one lock;
reads open their blob under it and read outside it (a replaced blob stays readable through its fd).
"""

from __future__ import annotations

import builtins
import os
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from shared import BadRequest, NotFound

from ..core.errors import DamagedError
from ..core.keys import KeySet
from ..core.namespace import Namespace
from ..core.stream import DEFAULT_CHUNK_SIZE, StreamWriter
from .blobs import META_SLOT as META_SLOT  # Re-exported: public here before the split.
from .blobs import Blob, BlobDir, iter_blobs, open_blob, stream_aad

MAX_NAME_CHARS: Final = 255
MAX_PIECE_BYTES: Final = 256 * 1024
#: Plaintext one ``read`` returns at most (a reply stays well under the mesh's 1 MiB messages).
MAX_READ_BYTES: Final = 512 * 1024
MAX_LIST: Final = 1000
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A stored file; ``created`` is when this content was committed (UNIX time)."""

    name: str
    size: int
    chunks: int
    version: int
    created: float


def _info(blob: Blob) -> FileInfo:
    return FileInfo(blob.name, blob.size, blob.chunks, blob.version, blob.created)


def check_name(name: object, what: str = "file name", *, empty_ok: bool = False) -> str:
    """``name`` if it is 1-255 characters (0 allowed with ``empty_ok``) and has no control
    characters; ``BadRequest`` otherwise."""
    low = 0 if empty_ok else 1
    if not isinstance(name, str) or not low <= len(name) <= MAX_NAME_CHARS:
        raise BadRequest(f"{what} must be {low}-{MAX_NAME_CHARS} characters")
    if any(unicodedata.category(ch) in _REFUSED_CATEGORIES for ch in name):
        raise BadRequest(f"{what} must not contain control characters")
    return name


def _no_step(step: str) -> None:
    """No fault injection (production)."""


class Upload:
    """A file being uploaded: pieces are encrypted into its ``.part`` file as they arrive. Finish it
    with :meth:`FileStore.commit` or :meth:`FileStore.abort`."""

    def __init__(self, keys: KeySet, ns: Namespace, name: str, size_hint: int | None, path: Path,
                 out: BinaryIO, writer: StreamWriter) -> None:
        self.keys, self.ns, self.name, self.size_hint, self.path = keys, ns, name, size_hint, path
        self.version = writer.header.key_version
        self.out, self.writer = out, writer
        self.lock = threading.Lock()
        self.done = False

    def write(self, data: bytes) -> int:
        """Append a piece of at most 256 KiB; returns the bytes received so far. ``BadRequest`` past
        ``size_hint`` or once the upload is finished."""
        if len(data) > MAX_PIECE_BYTES:
            raise BadRequest(f"an upload piece is at most {MAX_PIECE_BYTES} bytes")
        with self.lock:
            if self.done:
                raise BadRequest("the upload is already finished")
            if self.size_hint is not None and self.writer.size + len(data) > self.size_hint:
                raise BadRequest("the upload is larger than its announced size")
            self.writer.write(data)
            return self.writer.size


class FileStore:
    """Encrypted files per namespace under ``root`` (see the module notes). ``keys`` is always the
    ``files`` :class:`KeySet`; new content is sealed under ``keys.current``. ``checkpoint`` is called
    with ``commit-written`` / ``rotate-written`` (the ``.part`` is durable, not renamed) and
    ``commit-renamed`` / ``rotate-renamed`` (renamed, the other version not yet removed): tests kill
    the process there, as with ``write_atomic``."""

    def __init__(self, root: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 checkpoint: Callable[[str], None] = _no_step) -> None:
        self.root, self.chunk_size, self._checkpoint = root, chunk_size, checkpoint
        self._lock = threading.Lock()
        self._uploads: set[Upload] = set()
        # Opening the blob directory creates it and clears what a crash left in its tmp directory.
        self._blobs = BlobDir(root)

    def _path(self, keys: KeySet, version: int, ns: Namespace, name: str) -> Path:
        return self._blobs.path(keys, version, ns, name)

    def _locate(self, keys: KeySet, ns: Namespace, name: str) -> tuple[BinaryIO, Blob] | None:
        check_name(name)
        # The current version first, then older ones: the newest content of a name wins.
        order = [keys.current] + [v for v in sorted(keys.versions(), reverse=True) if v != keys.current]
        with self._lock:
            for version in order:
                path = self._path(keys, version, ns, name)
                try:
                    f = open_blob(path)
                except FileNotFoundError:
                    continue
                break
            else:
                return None
        try:
            return f, self._blobs.load(f, path, keys, version)
        except BaseException:
            f.close()
            raise

    # -- uploads --------------------------------------------------------------------------------------

    def begin(self, keys: KeySet, ns: Namespace, name: str, size_hint: int | None) -> Upload:
        """Start uploading ``name`` (replacing any file of that name at commit) under the current key."""
        check_name(name)
        if size_hint is not None and size_hint < 0:
            raise BadRequest("size must not be negative")
        key = keys.key(keys.current)
        part, out = self._blobs.new_part()
        writer = StreamWriter(out, key, keys.current, stream_aad(ns, name), chunk_size=self.chunk_size)
        upload = Upload(keys, ns, name, size_hint, part, out, writer)
        with self._lock:
            self._uploads.add(upload)
        return upload

    def commit(self, upload: Upload) -> FileInfo:
        """Finish ``upload``: on return the file is durable under its name, replacing any previous one."""
        with upload.lock:
            if upload.done:
                raise BadRequest("the upload is already finished")
            upload.done = True
            keys, ns, name, version, writer = upload.keys, upload.ns, upload.name, upload.version, upload.writer
            created = time.time()
            try:
                writer.close()
                target = self._path(keys, version, ns, name)
                self._blobs.seal_part(upload.out, keys, target, ns, name, writer, created)
                if version != keys.current:
                    # The key rotated during the upload. Under an older version than the current one
                    # the new content would pass for stale, so it moves to the current key first.
                    with open_blob(upload.path) as f:
                        fresh, target = self._blobs.reencrypt(f, self._blobs.load(f, target, keys, version), keys, keys)
                    upload.path.unlink()
                    upload.path, version = fresh, keys.current
                self._checkpoint("commit-written")
                with self._lock:
                    self._uploads.discard(upload)
                    self._blobs.install(upload.path, target)
                    self._checkpoint("commit-renamed")
                    for other in keys.versions():
                        if other != version:
                            self._blobs.unlink(self._path(keys, other, ns, name))
            except BaseException:
                self._drop(upload)
                raise
        return FileInfo(name, writer.size, writer.chunks, version, created)

    def abort(self, upload: Upload) -> None:
        """Drop ``upload`` and its ``.part`` file. Idempotent."""
        with upload.lock:
            if not upload.done:
                upload.done = True
                self._drop(upload)

    def _drop(self, upload: Upload) -> None:
        upload.writer.discard()
        upload.out.close()
        upload.path.unlink(missing_ok=True)
        with self._lock:
            self._uploads.discard(upload)

    # -- reads ----------------------------------------------------------------------------------------

    def info(self, keys: KeySet, ns: Namespace, name: str) -> FileInfo | None:
        """The file's checked metadata, or None when there is no such file."""
        found = self._locate(keys, ns, name)
        if found is None:
            return None
        found[0].close()
        return _info(found[1])

    def read(self, keys: KeySet, ns: Namespace, name: str, offset_chunk: int,
             max_chunks: int) -> tuple[bytes, int | None]:
        """Plaintext of chunks ``[offset_chunk, offset_chunk + n)`` (n at most ``max_chunks`` and 512 KiB
        worth) and the next chunk index, None at the end. ``NotFound`` without such a file,
        ``BadRequest`` past its end; every chunk is checked before it is returned."""
        if max_chunks < 1 or offset_chunk < 0:
            raise BadRequest("offset must be >= 0 and max_chunks >= 1")
        found = self._locate(keys, ns, name)
        if found is None:
            raise NotFound("no such file")
        f, blob = found
        with f, self._blobs.reader(f, keys, blob) as reader:
            total = blob.chunks
            if offset_chunk >= total:
                raise BadRequest(f"chunk {offset_chunk} is past the end of the file ({total} chunks)")
            end = min(total, offset_chunk + min(max_chunks, max(1, MAX_READ_BYTES // blob.header.chunk_size)))
            parts = []
            for index in range(offset_chunk, end):
                plain, last = reader.read_chunk(index)
                if last != (index == total - 1):
                    raise DamagedError(f"{blob.label} chunk {index} failed its integrity check")
                parts.append(plain)
        return b"".join(parts), (end if end < total else None)

    def list(self, keys: KeySet, ns: Namespace, prefix: str, after: str | None,
             limit: int) -> tuple[list[FileInfo], str | None]:
        """Files of ``ns`` named ``prefix``..., sorted by name, after ``after``: at most ``limit``
        (1-1000) and the cursor of the next page (None at the end). O(files in the namespace) per
        call: every metadata block of the namespace is opened and checked."""
        check_name(prefix, "prefix", empty_ok=True)
        if after is not None:
            check_name(after, "after")
        if not 1 <= limit <= MAX_LIST:
            raise BadRequest(f"limit must be 1 to {MAX_LIST}")
        found: dict[str, FileInfo] = {}
        for version in sorted(keys.versions()):
            for path in self._blobs.in_namespace(keys, version, ns):
                try:
                    with open_blob(path) as f:
                        info = _info(self._blobs.load(f, path, keys, version))
                except FileNotFoundError:
                    continue
                if info.name.startswith(prefix) and (after is None or info.name > after):
                    found[info.name] = info  # versions ascend: the newest content of a name wins
        names = sorted(found)
        page = [found[n] for n in names[:limit]]
        return page, (page[-1].name if len(names) > limit else None)

    # -- mutations and maintenance --------------------------------------------------------------------

    def delete(self, keys: KeySet, ns: Namespace, name: str) -> bool:
        """Remove ``name`` durably; False when there was no such file."""
        check_name(name)
        with self._lock:
            removed = [self._blobs.unlink(self._path(keys, v, ns, name)) for v in keys.versions()]
        return any(removed)

    def rotate_step(self, keys: KeySet, from_version: int) -> int:
        """Re-encrypt one blob from ``from_version`` to ``keys.current``; 1, or 0 when none is left.
        Crash-safe and resumable: the new blob is durable before the old one is removed, and an old
        blob whose name exists under a newer version is stale and only removed."""
        if from_version == keys.current:
            raise ValueError("cannot rotate away from the current key version")
        path = next((p for p, v in iter_blobs(self.root) if v == from_version), None)
        if path is None:
            return 0
        with open_blob(path) as f:
            blob = self._blobs.load(f, path, keys, from_version)
            ns, name, inode = blob.ns, blob.name, os.fstat(f.fileno()).st_ino
            newer = [v for v in keys.versions() if v > from_version]
            with self._lock:
                if any(self._path(keys, v, ns, name).exists() for v in newer):
                    self._blobs.unlink(path)
                    return 1
            part, target = self._blobs.reencrypt(f, blob, keys, keys)
        try:
            self._checkpoint("rotate-written")
            with self._lock:
                # A commit or delete of this name meanwhile wins: it has removed the old blob.
                still = path.exists() and os.stat(path).st_ino == inode
                if still and not any(self._path(keys, v, ns, name).exists() for v in newer):
                    self._blobs.install(part, target)
                    self._checkpoint("rotate-renamed")
                if still:
                    self._blobs.unlink(path)
        finally:
            part.unlink(missing_ok=True)
        return 1

    def import_from(self, source: Path, source_keys: KeySet, keys: KeySet) -> int:
        """Re-encrypt every blob of ``source`` (a snapshot sealed under ``source_keys``, as a restore
        extracts it) into this store under ``keys.current``; returns how many. Each blob is durable
        on its own and replaces a blob of the same name, so an interrupted import can run again."""
        count = 0
        for path, version in iter_blobs(source):
            if version == 0:
                raise DamagedError(f"snapshot entry {path.name} is not a file blob")
            with open_blob(path) as f:
                blob = self._blobs.load(f, path, source_keys, version)
                part, target = self._blobs.reencrypt(f, blob, source_keys, keys)
            try:
                with self._lock:
                    self._blobs.install(part, target)
            finally:
                part.unlink(missing_ok=True)
            count += 1
        return count

    def count(self, version: int) -> int:
        """Blobs sealed under key ``version``."""
        return sum(1 for _, v in iter_blobs(self.root) if v == version)

    def is_empty(self) -> bool:
        """True when the store holds no blob."""
        return not any(v for _, v in iter_blobs(self.root))

    def verify(self, keys: KeySet) -> builtins.list[str]:
        """Check every blob in full (metadata, each chunk, the final chunk, size and count); returns
        the problems found, each naming a blob by its tags, never a file name or data."""
        problems: builtins.list[str] = []
        for path, version in iter_blobs(self.root):
            rel = path.name if path.parent == self.root else f"{path.parent.name}/{path.name}"
            if version == 0:
                problems.append(f"{rel}: not a file blob")
            elif not keys.has(version):
                problems.append(f"file blob {rel}: sealed under key version {version}, which storage does not hold")
            else:
                try:
                    self._blobs.check(path, keys, version)
                except FileNotFoundError:
                    continue
                except DamagedError as exc:
                    problems.append(exc.message)
        return problems

    def snapshot(self, dest: Path) -> builtins.list[str]:
        """Copy every blob (already encrypted) into ``dest`` (absent or empty) consistently: commits,
        deletes and rotations wait meanwhile. Blobs are hard-linked when ``dest`` is on the same file
        system (a blob is never modified in place, only replaced or removed), else copied. Returns
        the relative paths, sorted."""
        if dest.is_symlink() or (dest.exists() and any(dest.iterdir())):
            raise ValueError("snapshot destination must be absent or an empty directory")
        dest.mkdir(mode=0o700, exist_ok=True)
        with self._lock:
            return self._blobs.link_into(dest)

    def forget_keys(self) -> None:
        """Wipe the cached subkeys and drop uploads in progress (the mesh is being sealed)."""
        with self._lock:
            uploads = list(self._uploads)
        for upload in uploads:
            self.abort(upload)
        self._blobs.forget()

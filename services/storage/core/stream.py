"""STREAM: chunked AES-256-GCM for data too large to seal in one piece (files, backup archives).

The construction is the "online authenticated encryption" STREAM of Hoang, Reyhanitabar, Rogaway
and Vizár (CRYPTO 2015), as used by Tink's streaming AEAD and by age: the plaintext is cut into
chunks, each sealed with AES-256-GCM under a nonce made of a per-stream prefix, the chunk's index
and a flag that is set on the last chunk only. Memory stays at a chunk or two whatever the size.

Format, version 1 (all integers big-endian)::

    offset  bytes  field
    0       4      magic b"CMS1"
    4       1      format version (0x01)
    5       4      key version: which version of the data key the stream is sealed under
    9       16     salt, random per stream
    25      7      nonce prefix, random per stream
    32      4      chunk size C: plaintext bytes of every chunk but the last (MIN..MAX_CHUNK_SIZE)
    36             chunk 0, chunk 1, ... each = AES-256-GCM ciphertext || 16-byte tag

- Every chunk but the last holds exactly C plaintext bytes; the last holds 1..C bytes, or 0 bytes
  when the whole plaintext is empty (an empty stream is one empty final chunk). So a plaintext of
  n bytes has ``max(1, ceil(n / C))`` chunks, and a reader knows which chunk must be the last one
  from the stream's length alone.
- A stream runs to the end of its file (it may follow other data, as in a file blob or an archive):
  nothing may follow its last chunk.
- Nonce of chunk i = nonce prefix (7) || i (u32) || 0x01 on the last chunk, else 0x00 (1) = 12 bytes.
- Associated data of every chunk = the 36 header bytes || the caller's ``aad`` (not stored: a file
  store passes the file's namespace and name, so a stream copied under another name fails). The
  header is fixed-length, so the concatenation is unambiguous.
- Chunk key = HKDF-SHA256(ikm = the data key, salt = the header's salt, info = b"curvemesh/v1/
  storage-stream"). Each stream has its own key: with one key for every stream, two streams whose
  56-bit nonce prefixes collide (expected after ~2**28 streams) would reuse nonces; with a key per
  128-bit salt that needs a salt collision (~2**64 streams), and GCM's per-key limits apply per stream.

What a reader detects, each as :class:`DamagedError` naming the chunk index and nothing else:
truncation (the last chunk present fails under the "last" flag; bytes after the last chunk make it
fail under "not last"), reordered or swapped chunks (the index is in the nonce), chunks spliced in
from another stream (another key and prefix), an edited header (it is associated data of every
chunk) and any flipped bit.

Why :mod:`shared.hazmat`: the recipes in :mod:`shared.crypto` pick a random nonce per seal, while
STREAM's security rests on nonces derived from the chunk index and the last-chunk flag; that
derivation is this module's format, so it uses the raw primitive and owns nonce uniqueness (a fresh
key per stream, a distinct index per chunk).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Final

from shared import BadRequest, hazmat
from shared.crypto import wipe

from .errors import DamagedError

MAGIC: Final = b"CMS1"
FORMAT_VERSION: Final = 1
HEADER_BYTES: Final = 36
TAG_BYTES: Final = hazmat.GCM_TAG_BYTES
DEFAULT_CHUNK_SIZE: Final = 64 * 1024
MIN_CHUNK_SIZE: Final = 16
#: A reader allocates a chunk before it can authenticate the header, so the size it accepts is capped.
MAX_CHUNK_SIZE: Final = 4 * 1024 * 1024
MAX_CHUNKS: Final = 1 << 32

_HEADER: Final = struct.Struct(">4sBI16s7sI")
_INFO: Final = b"curvemesh/v1/storage-stream"

#: Maps a key version to the data key of that version (``KeySet.key``); may raise ``MissingKeyError``.
KeyLookup = Callable[[int], bytes | bytearray]


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The parsed 36-byte header; ``raw`` is the bytes as stored (associated data of every chunk)."""

    key_version: int
    salt: bytes
    nonce_prefix: bytes
    chunk_size: int
    raw: bytes


def chunk_count(size: int, chunk_size: int) -> int:
    """Chunks of a stream of ``size`` plaintext bytes: ``max(1, ceil(size / chunk_size))``."""
    return max(1, -(-size // chunk_size))


def stream_length(size: int, chunk_size: int) -> int:
    """Bytes a stream of ``size`` plaintext bytes takes, header included."""
    return HEADER_BYTES + size + TAG_BYTES * chunk_count(size, chunk_size)


def _parse_header(raw: bytes) -> StreamHeader:
    if len(raw) < HEADER_BYTES:
        raise DamagedError("stream header is truncated")
    magic, version, key_version, salt, prefix, chunk_size = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DamagedError("not a curvemesh stream (bad magic)")
    if version != FORMAT_VERSION:
        raise DamagedError(f"stream has unknown format version {version} (this curvemesh reads {FORMAT_VERSION})")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise DamagedError("stream header names an invalid chunk size")
    return StreamHeader(key_version, salt, prefix, chunk_size, raw)


def _stream_key(data_key: bytes | bytearray, salt: bytes) -> bytearray:
    if len(data_key) != hazmat.AES_KEY_BYTES:
        raise ValueError(f"a data key is {hazmat.AES_KEY_BYTES} bytes")
    return hazmat.hkdf_sha256(data_key, salt=salt, info=_INFO, length=hazmat.AES_KEY_BYTES)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _read_exact(src: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at end of file (a raw file may return short reads)."""
    data = src.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def header_of(src: BinaryIO) -> StreamHeader:
    """Parse the header at ``src``'s position (which is left just after it). Unauthenticated until a
    chunk is read; :class:`DamagedError` if it is not a version-1 stream header."""
    return _parse_header(_read_exact(src, HEADER_BYTES))


class StreamWriter:
    """Encrypts a stream into the binary file object ``out`` (from its current position).

    The header is written at once; :meth:`write` buffers at most one chunk and emits each chunk once
    it knows another follows; :meth:`close` emits the final chunk and wipes the stream key. The
    caller owns ``out`` (flush, fsync, close). After :meth:`close`, ``size`` is the plaintext length
    and ``chunks`` the number of chunks. Used as a context manager, an exception discards the stream.
    """

    def __init__(self, out: BinaryIO, key: bytes | bytearray, key_version: int, aad: bytes, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes")
        if not 0 <= key_version < 1 << 32:
            raise ValueError("key version must fit in 32 bits")
        salt, prefix = secrets.token_bytes(16), secrets.token_bytes(7)
        raw = _HEADER.pack(MAGIC, FORMAT_VERSION, key_version, salt, prefix, chunk_size)
        self.header = StreamHeader(key_version, salt, prefix, chunk_size, raw)
        self._key = _stream_key(key, salt)
        self._aad = raw + aad
        self._out = out
        self._buf = bytearray()
        self._closed = False
        self.size = 0
        self.chunks = 0
        out.write(raw)

    def _emit(self, last: bool) -> None:
        if self.chunks >= MAX_CHUNKS:
            raise ValueError("stream is too long for a 32-bit chunk index")
        nonce = _nonce(self.header.nonce_prefix, self.chunks, last)
        self._out.write(hazmat.aes256gcm_encrypt(self._key, nonce, self._buf, self._aad))
        self.chunks += 1
        # The buffer held plaintext: clear it in place before reuse rather than leave it in memory.
        wipe(self._buf)
        del self._buf[:]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the plaintext."""
        if self._closed:
            raise ValueError("stream is closed")
        view = memoryview(data).cast("B")
        size = self.header.chunk_size
        while view:
            room = size - len(self._buf)
            if room == 0:
                # The buffer is full and more data follows, so this chunk is not the last.
                self._emit(last=False)
                continue
            self._buf += view[:room]
            self.size += min(room, len(view))
            view = view[room:]

    def close(self) -> None:
        """Emit the final chunk (possibly empty) and wipe the key. Idempotent."""
        if self._closed:
            return
        try:
            self._emit(last=True)
        finally:
            self.discard()

    def discard(self) -> None:
        """Wipe the key and buffer without finishing the stream (what was written is left truncated)."""
        self._closed = True
        wipe(self._key)
        wipe(self._buf)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


class StreamReader:
    """Decrypts and checks a stream read from ``src``, whose header starts at ``src``'s position.

    ``key_lookup`` maps the header's key version to the data key; ``aad`` must be what the writer
    was given. ``what`` names the stream in error messages ("file blob 3f2a…"). Every chunk is
    authenticated before its plaintext is released; any failure raises :class:`DamagedError`
    "<what> chunk N failed its integrity check". ``src`` must be seekable. Close (or use as a context
    manager) to wipe the stream key.
    """

    def __init__(self, src: BinaryIO, key_lookup: KeyLookup, aad: bytes, *, what: str = "stream") -> None:
        self._src = src
        self._base = src.tell()
        self._what = what
        self.header = header_of(src)
        self._key = _stream_key(key_lookup(self.header.key_version), self.header.salt)
        self._aad = self.header.raw + aad

    def _offset(self, index: int) -> int:
        return self._base + HEADER_BYTES + index * (self.header.chunk_size + TAG_BYTES)

    def _open(self, sealed: bytes, index: int, last: bool) -> bytes:
        try:
            return hazmat.aes256gcm_decrypt(self._key, _nonce(self.header.nonce_prefix, index, last), sealed,
                                            self._aad)
        except hazmat.InvalidTag:
            raise DamagedError(f"{self._what} chunk {index} failed its integrity check") from None

    def chunks(self) -> Iterator[bytes]:
        """Every chunk's plaintext in order, each checked before it is yielded; the last one is the
        chunk that carries the final flag, and nothing may follow it."""
        full = self.header.chunk_size + TAG_BYTES
        self._src.seek(self._offset(0))
        current = _read_exact(self._src, full)
        index = 0
        while True:
            if index >= MAX_CHUNKS:
                raise DamagedError(f"{self._what} chunk {index} failed its integrity check")
            # Read one chunk ahead: a chunk is the last one exactly when nothing follows it. A
            # short chunk can only be followed by end of file, so no read is needed after it.
            following = _read_exact(self._src, full) if len(current) == full else b""
            last = not following
            yield self._open(current, index, last)
            if last:
                return
            current, index = following, index + 1

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks()

    def read_chunk(self, index: int) -> tuple[bytes, bool]:
        """Plaintext of chunk ``index`` and whether it is the last. Asking past the end of an intact
        stream raises ``BadRequest``; of a truncated one, :class:`DamagedError`."""
        if not 0 <= index < MAX_CHUNKS:
            raise BadRequest(f"chunk index must be 0 to {MAX_CHUNKS - 1}")
        full = self.header.chunk_size + TAG_BYTES
        self._src.seek(self._offset(index))
        # One byte more than a chunk tells whether another chunk follows this one.
        data = _read_exact(self._src, full + 1)
        if not data:
            # Past the end: an intact stream's last chunk carries the final flag, a truncated one's does not.
            body = self._src.seek(0, 2) - self._offset(0)
            if body <= 0:
                raise DamagedError(f"{self._what} chunk 0 failed its integrity check")
            self.read_chunk(-(-body // full) - 1)
            raise BadRequest(f"chunk {index} is past the end of the stream")
        last = len(data) <= full
        return self._open(data[:full], index, last), last

    def close(self) -> None:
        """Wipe the stream key. Idempotent."""
        wipe(self._key)

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def iter_plaintext(src: BinaryIO, key_lookup: KeyLookup, aad: bytes, *, what: str = "stream") -> Iterator[bytes]:
    """Every checked chunk of the stream at ``src``'s position, in order (see :class:`StreamReader`)."""
    with StreamReader(src, key_lookup, aad, what=what) as reader:
        yield from reader.chunks()


def read_chunk(src: BinaryIO, key_lookup: KeyLookup, aad: bytes, index: int, *,
               what: str = "stream") -> tuple[bytes, bool]:
    """Random access: ``(plaintext, is_last)`` of chunk ``index`` of the stream at ``src``'s position."""
    with StreamReader(src, key_lookup, aad, what=what) as reader:
        return reader.read_chunk(index)

"""A bounded, persistent spool for records waiting for delivery (audit events, supervisor events).

The file is a sequence of frames, each a 4-byte big-endian length and that many bytes of msgpack:

* a msgpack map is a *record*; records are delivered in file order;
* the msgpack array ``["spool.ack", n]`` is an *ack marker*: the first ``n`` records of this file
  were delivered. ``n`` counts from the start of the file, so a marker stands on its own and the
  last valid one wins; a marker claiming more records than precede it, or fewer than an earlier
  marker, is ignored, because delivering a record again is safe and skipping one is not;
* any other frame is skipped, as it always was.

A file written before ack markers existed holds only records, so all of them load as pending. A
file written now still loads in that older code, which skips the markers: it delivers the acked
records again and loses none.

:meth:`Spool.append` writes a frame and :meth:`Spool.sync` fsyncs it. An owner whose thread must
not wait on the disk takes the fsyncs off the spool as a :class:`SyncJob` (:meth:`Spool.sync_job`)
and runs it on a thread of its own: the broker does so on its timer, so a deny is durable within a
tick plus however long the disk takes, and its routing never waits for it. :meth:`Spool.ack` appends
a marker and fsyncs (or, with ``sync=False``, leaves that to the owner's next sync): the one fsync
the former whole-file rewrite cost, for a constant number of bytes. Acked records stay in
the file as dead bytes until they outweigh the pending ones and exceed ``compact_bytes``; then the
pending records alone are written to a temporary file, which is fsynced, renamed over the spool,
and the directory fsynced. A compaction writes fewer bytes than it discards, so over the spool's
life it rewrites at most as many bytes as were ever appended: draining N records costs O(N).

Crashes: a torn frame at the tail (a crash mid-append or mid-marker) is cut off at open; a torn
marker only means its records are delivered again. A compaction replaces the file by one rename of
a complete, fsynced file with no markers, so a crash leaves the old file with its markers or the
new one with exactly the pending records, never a mix; a temporary file left by a crash before the
rename is deleted at open.

When ``max_records`` records are pending, new ones are counted in :attr:`Spool.dropped` instead of
stored, and the count itself is spooled as a ``spool.overflow`` record as soon as there is room: a
loss is never silent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
from array import array
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from ._files import fsync_path

_LEN = struct.Struct(">I")
_MAX_RECORD = 64 << 10
_ACK = "spool.ack"
_MODE = 0o600
_CHUNK = 1 << 20
#: Dead bytes (acked records, markers) a spool file may carry before a compaction is considered.
COMPACT_BYTES = 1 << 20


def _no_step(step: str) -> None:
    """No fault injection (production)."""


def _frame(item: object) -> bytes:
    """``item`` as one frame; ValueError if it is larger than a frame may be (the load would
    take such a frame for a torn tail and cut it, with every record after it)."""
    data: bytes = msgpack.packb(item, use_bin_type=True)
    if len(data) > _MAX_RECORD:
        raise ValueError("spool record too large")
    return _LEN.pack(len(data)) + data


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Spool:
    """An append-only spool file holding at most ``max_records`` pending records.

    ``compact_bytes`` is how many dead bytes the file may carry before it is compacted (provided
    they also outweigh the pending records). ``checkpoint`` is called with ``"ack-written"``,
    ``"ack-synced"``, ``"compact-written"``, ``"compact-renamed"`` and ``"compact-synced"``: tests
    use it to kill the process at each step; and with ``"fsync"`` just before the file is fsynced,
    by :meth:`sync` or by a :class:`SyncJob` on whatever thread runs it (tests stall the disk
    there). Not thread-safe: one owner appends and acks; a :class:`SyncJob` never touches the spool.
    """

    def __init__(self, path: Path, max_records: int, *, compact_bytes: int = COMPACT_BYTES,
                 checkpoint: Callable[[str], None] = _no_step) -> None:
        self.path = path
        self.max_records = max_records
        self.dropped = 0
        self._compact_bytes = compact_bytes
        self._checkpoint = checkpoint
        self._unsynced = False       # frames written but not yet fsynced
        self._dir_unsynced = False   # the file's directory entry is not yet known to be durable
        self._records: deque[dict[str, Any]] = deque()
        # The frame size of each pending record is self._sizes[self._head + i]: acks advance the
        # head, and the acked prefix is trimmed only once it is half the array, so an ack costs
        # O(records acked) rather than a copy of everything still pending.
        self._sizes = array("L")
        self._head = 0
        self._live = 0     # bytes of the pending records' frames
        self._size = 0     # bytes in the file, all of them whole frames
        self._acked = 0    # records acked since the start of this file: the next marker's n
        self._tmp.unlink(missing_ok=True)  # only a crash before a compaction's rename leaves it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, _MODE)
        # The file object only owns the descriptor (closed with it, even if close() is never
        # called); every write goes through os.write so that a failed one can be undone.
        self._file = os.fdopen(fd, "ab", buffering=0)
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise

    @property
    def _tmp(self) -> Path:
        return self.path.with_name(f".{self.path.name}.compact")

    def _load(self) -> None:
        fd = self._file.fileno()
        os.lseek(fd, 0, os.SEEK_SET)  # opening in append mode put the offset at the end
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read()
        view = memoryview(data)
        records: list[dict[str, Any]] = []
        sizes = array("L")
        offset = acked = 0
        while offset + _LEN.size <= len(data):
            (size,) = _LEN.unpack_from(data, offset)
            end = offset + _LEN.size + size
            if size > _MAX_RECORD or end > len(data):
                break
            try:
                item = msgpack.unpackb(view[offset + _LEN.size:end], raw=False, strict_map_key=True)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                break
            if isinstance(item, dict):
                records.append(item)
                sizes.append(end - offset)
            elif (isinstance(item, list) and len(item) == 2 and item[0] == _ACK and type(item[1]) is int
                  and acked <= item[1] <= len(records)):
                acked = item[1]
            offset = end
        view.release()
        if offset != len(data):
            # A torn tail from a crash mid-append: keep every whole frame before it.
            os.ftruncate(fd, offset)
            os.fsync(fd)
        # A new (or empty) file's directory entry may not be durable yet: the first sync() makes
        # it so, else records fsynced into the file could vanish with its name in a power loss.
        self._dir_unsynced = offset == 0
        del sizes[:acked]
        self._records = deque(itertools.islice(records, acked, None))
        self._sizes, self._head = sizes, 0
        self._live, self._size, self._acked = sum(sizes), offset, acked

    def __len__(self) -> int:
        return len(self._records)

    def append(self, record: dict[str, Any]) -> bool:
        """Spool ``record``; False (and counted in :attr:`dropped`) if the spool is full."""
        if self.dropped and len(self._records) < self.max_records:
            self._write({"type": "spool.overflow", "dropped": self.dropped})
            self.dropped = 0
        if len(self._records) >= self.max_records:
            self.dropped += 1
            return False
        self._write(record)
        return True

    def _write(self, record: dict[str, Any]) -> None:
        frame = _frame(record)
        self._append(frame)
        self._records.append(record)
        self._sizes.append(len(frame))
        self._live += len(frame)

    def _append(self, frame: bytes) -> None:
        """Append one whole frame. A failed write (a full disk) is cut off again: a torn frame
        followed by later ones would make the next load stop there and cut every record after it."""
        fd = self._file.fileno()
        try:
            _write_all(fd, frame)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise
        self._size += len(frame)
        self._unsynced = True

    def sync(self) -> None:
        """Make every appended record (and ack) durable, if any is not yet: fsync the file, and its
        directory when the file is new or was just replaced by a compaction. A :class:`SyncJob`
        taken earlier may still be running: what it covers is durable only once it has run."""
        if self._unsynced:
            self._checkpoint("fsync")
            os.fsync(self._file.fileno())
            self._unsynced = False
        if self._dir_unsynced:
            fsync_path(self.path.parent)
            self._dir_unsynced = False

    def sync_job(self) -> SyncJob | None:
        """What :meth:`sync` would do now, as a :class:`SyncJob` for another thread to run, or None
        when everything is durable already. The spool counts that work as done: whoever runs the
        job owns its failure (the spool does not retry it), and whoever needs the records durable
        waits for the job."""
        if not (self._unsynced or self._dir_unsynced):
            return None
        job = SyncJob(os.dup(self._file.fileno()) if self._unsynced else None,
                      self.path.parent if self._dir_unsynced else None, self._checkpoint)
        self._unsynced = self._dir_unsynced = False
        return job

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` records, in order, still waiting for delivery."""
        if limit < 0:
            return list(self._records)[:limit]  # what slicing with a negative limit always meant
        return list(itertools.islice(self._records, limit))

    def ack(self, count: int, *, sync: bool = True) -> None:
        """Forget the oldest ``count`` records: they were delivered durably. The ack is durable
        when this returns, or with ``sync=False`` once the owner's next :meth:`sync` (or
        :class:`SyncJob`) has run; a crash before that only means those records are delivered again."""
        count = min(count, len(self._records))
        if count <= 0:
            return
        for _ in range(count):
            self._records.popleft()
        end = self._head + count
        self._live -= sum(self._sizes[self._head:end])
        self._head = end
        if 2 * self._head >= len(self._sizes):
            del self._sizes[:self._head]  # costs at most the records acked since the last trim
            self._head = 0
        self._acked += count
        dead = self._size - self._live
        if dead > self._compact_bytes and dead > self._live:
            self._compact()
            if sync:
                self.sync()  # the rename: the new file's data is already fsynced
                self._checkpoint("compact-synced")
            return
        self._append(_frame([_ACK, self._acked]))
        self._checkpoint("ack-written")
        if sync:
            self.sync()
            self._checkpoint("ack-synced")

    def _compact(self) -> None:
        """Replace the file by one holding only the pending records, and no marker (nothing in it
        is acked yet). It is complete and fsynced before the rename, so the rename is the one step
        that applies the ack: a crash before it leaves the old file (this ack is then undone, its
        records delivered again), a crash after it the new one (no pending record is in both)."""
        tmp = self._tmp
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, _MODE)
        try:
            os.fchmod(fd, _MODE)  # O_CREAT keeps the mode of a file already there: never trust it
            sizes = array("L")
            chunk = bytearray()
            for record in self._records:
                frame = _frame(record)
                sizes.append(len(frame))
                chunk += frame
                if len(chunk) >= _CHUNK:
                    _write_all(fd, chunk)
                    chunk.clear()
            _write_all(fd, chunk)
            os.fsync(fd)
            self._checkpoint("compact-written")
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        # The new descriptor is the renamed file itself: appends go on in it with no reopening
        # by name, and if the directory fsync below fails, nothing is written to the old inode.
        old, self._file = self._file, os.fdopen(fd, "ab", buffering=0)
        old.close()
        self._sizes, self._head = sizes, 0
        self._live = self._size = sum(sizes)
        self._acked = 0
        self._unsynced = False
        self._dir_unsynced = True
        self._checkpoint("compact-renamed")

    def close(self) -> None:
        """Make everything durable and close the file. Closing twice is harmless."""
        if self._file.closed:
            return
        try:
            self.sync()
        finally:
            self._file.close()


class SyncJob:
    """The fsyncs :meth:`Spool.sync` would have made when :meth:`Spool.sync_job` took them: the
    spool's file (a duplicate of its descriptor) and, when its name may not be durable yet, its
    directory. It never touches the spool, so it runs on any thread while the owner goes on
    appending; the duplicate keeps the file open even if a compaction replaces and closes the
    spool's own. :meth:`run` it once or :meth:`discard` it; either closes the duplicate.
    """

    def __init__(self, fd: int | None, directory: Path | None, checkpoint: Callable[[str], None]) -> None:
        self._fd = fd
        self.directory = directory
        self._checkpoint = checkpoint

    def absorb(self, older: SyncJob) -> None:
        """Take over the work of ``older``, a job taken before this one and not run, and discard
        it. This job's descriptor (when it has one) is the spool's file now, which holds every
        record ``older``'s file held that still matters: the same file, or the one a compaction
        wrote the pending records to, fsynced. So this one's fsync covers both, and only
        ``older``'s directory fsync (or its descriptor, when this job has none) is kept."""
        if self._fd is None:
            self._fd, older._fd = older._fd, None
        if self.directory is None:
            self.directory = older.directory
        older.discard()

    def run(self) -> None:
        """fsync the file, then the directory; ``OSError`` as ``os.fsync`` raises it."""
        try:
            if self._fd is not None:
                self._checkpoint("fsync")
                os.fsync(self._fd)
            if self.directory is not None:
                fsync_path(self.directory)
        finally:
            self.discard()

    def discard(self) -> None:
        """Close the duplicate descriptor without syncing (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

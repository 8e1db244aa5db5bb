"""The RocksDB database under the key-value store: opening and closing it, point and ranged reads,
and durable writes that do not hold the GIL while the disk syncs. It knows nothing of sealing:
keys and values are the bytes :mod:`.store` made.

Why not one synced write. ``Rdict.write`` holds the GIL for the whole call (rocksdict 0.3.29), the
WAL's fsync included. With ``sync`` set, every thread of the storage process stopped while the disk
synced each group commit: its event loop with them (no health, no heartbeats, no records or files
work), and the reads of other names, for as long as the disk took; a stalled disk froze the whole
process. ``Rdict.flush_wal`` releases the GIL. So :meth:`Database.write` writes a batch unsynced
(to the WAL file, which reaches the page cache, and to the memtable), then syncs the WAL with
``flush_wal(sync=True)``, and returns only after both: what returned is on disk, as before
(DESIGN.md invariant 9), and a crash before the sync loses only a batch that was never acknowledged.

What that costs, and how it is paid. A synced write inserts into the memtable only after the sync;
here the batch is readable between the two steps, before it is durable. :attr:`Database.in_flight`
names the batch's entries until its sync returns, and a read that may have seen one of them waits
for the sync (:meth:`.store.KvStore.get` redoes it under the store's lock, which the writer holds
until then). Reads of other names go on during the sync.

A failed sync is final. After a failed fsync the kernel may have dropped the dirty pages and still
report the next fsync clean (fsyncgate), so a retry proves nothing: the database refuses every
later call with :class:`~..core.errors.DurabilityLostError`, until storage restarts
and RocksDB recovers from what its WAL really holds. The write that failed may or may not be there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import rocksdict
import structlog

from shared import Unavailable

from ..core.errors import DurabilityLostError, StoreError
from . import settings

__all__ = ["LOST", "Database", "InFlight"]

log = structlog.get_logger("storage")

#: What every call answers once a sync failed.
LOST: Final = ("the key-value store could not make a write durable (its disk sync failed); it refuses "
               "every call until storage restarts: restart storage, and check the disk")
#: Entries per ranged read (an iterator keeps the database open, so none outlives a chunk), and the
#: value bytes after which a chunk ends early, so 1000 large values are never held at once.
CHUNK: Final = 1000
_CHUNK_BYTES: Final = 16 * 1024 * 1024


class InFlight:
    """The entries of the batch whose sync is running, as ``(namespace, name, ...)`` tuples.

    The set a read looks up is built on the first :meth:`holds`: a write pays nothing for it unless
    a read comes while its sync runs."""

    __slots__ = ("_entries", "_pairs")

    def __init__(self, entries: Sequence[tuple[Any, ...]]) -> None:
        self._entries = entries
        self._pairs: frozenset[tuple[Any, bytes]] | None = None

    def holds(self, ns: Any, name: bytes) -> bool:
        """Whether the batch writes or deletes ``name`` in ``ns`` (under any key version)."""
        pairs = self._pairs
        if pairs is None:
            # Two reads may both build it; each builds the same set, and the second assignment wins.
            pairs = self._pairs = frozenset((entry[0], entry[1]) for entry in self._entries)
        return (ns, name) in pairs


class Database:
    """One open RocksDB database (module notes). ``lock`` is its owner's: ranged reads, writes and
    close take it; :attr:`get`, :attr:`in_flight` and :attr:`failed` are read without it."""

    def __init__(self, path: Path, lock: threading.RLock) -> None:
        """Open (creating it 0700 when missing) the database in directory ``path``. Raises
        :class:`~shared.Unavailable` when RocksDB refuses (locked by another opener, corrupt)."""
        settings.private_dir(path)
        os.chmod(path, 0o700)  # an existing directory is tightened too
        try:
            db = rocksdict.Rdict(str(path), settings.store_options())
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
            raise Unavailable(f"{path}: cannot open the rocksdb store: {str(exc)[:200]}") from None
        self._db: rocksdict.Rdict | None = db
        self._lock = lock
        #: ``Rdict.get`` of the open database, bound once for the store's get path; None once closed
        #: or once a sync failed (the store then takes its locked path, which asks :meth:`live` why).
        self.get: Callable[[bytes], bytes | None] | None = db.get
        self._unsynced = rocksdict.WriteOptions()
        self._unsynced.sync = False
        #: The batch between its write and the end of its sync, or None.
        self.in_flight: InFlight | None = None
        #: :data:`LOST` once a sync failed; None while every sync succeeded.
        self.failed: str | None = None

    def close(self) -> None:
        """Flush and close (idempotent). Closed even when the flush fails (logged): every
        acknowledged write is in the synced WAL, which the next open replays."""
        with self._lock:
            if self._db is not None:
                db, self._db, self.get = self._db, None, None
                try:
                    db.close()
                except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
                    log.error("kv_close_failed", reason=str(exc)[:200])

    def live(self) -> rocksdict.Rdict:
        """The open database; :class:`DurabilityLostError` after a failed sync, ``UNAVAILABLE`` once closed."""
        if self.failed is not None:
            raise DurabilityLostError(self.failed)
        if self._db is None:
            raise Unavailable("the rocksdb store is closed")
        return self._db

    def read(self, key: bytes) -> bytes | None:
        """The value at ``key``, or None (the checked path: the store's fast get uses :attr:`get`)."""
        db = self.live()
        try:
            blob: bytes | None = db.get(key)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
            raise Unavailable(f"reading the rocksdb store failed: {str(exc)[:200]}") from None
        return blob

    def range(self, start: bytes, end: bytes | None, limit: int, *, values: bool = True) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(key, value)`` from ``start`` (inclusive) to ``end`` (exclusive), fewer
        once ``_CHUNK_BYTES`` of values are read; values are ``b""`` when not wanted."""
        with self._lock:
            opts = rocksdict.ReadOptions()
            if end is not None:
                opts.set_iterate_upper_bound(end)
            it = self.live().iter(opts)
            out: list[tuple[bytes, bytes]] = []
            size = 0
            try:
                it.seek(start)
                while it.valid() and len(out) < limit and size < _CHUNK_BYTES:
                    out.append((it.key(), it.value() if values else b""))
                    size += len(out[-1][1])
                    it.next()
                # An I/O error or corruption ends iteration as if the range were over; status() says which.
                it.status()
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
                raise Unavailable(f"reading the rocksdb store failed: {str(exc)[:200]}") from None
            finally:
                del it
            return out

    def chunks(self, prefix: bytes, *, values: bool = True) -> Iterator[list[tuple[bytes, bytes]]]:
        """Every entry under ``prefix``, in key order, as lists of at most :data:`CHUNK`."""
        start, end = prefix, settings.prefix_end(prefix)
        while chunk := self.range(start, end, CHUNK, values=values):
            yield chunk
            start = chunk[-1][0] + b"\x00"

    def checkpoint(self, dest: Path) -> None:
        """A consistent copy in the new directory ``dest``, SST files hard-linked on the same filesystem."""
        with self._lock:
            checkpoint = rocksdict.Checkpoint(self.live())
            try:
                checkpoint.create_checkpoint(str(dest))
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
                raise Unavailable(f"{dest}: the rocksdb checkpoint failed: {str(exc)[:200]}") from None
            finally:
                # A live Checkpoint keeps the database open after close().
                del checkpoint

    def write(self, batch: rocksdict.WriteBatch, entries: Sequence[tuple[Any, ...]]) -> None:
        """Write ``batch``, which writes or deletes ``entries`` (``(namespace, name, ...)`` each), and
        return once it is on disk (module notes); the caller holds the lock. :class:`StoreError` when
        RocksDB refuses the write (nothing of it was applied); :class:`DurabilityLostError` when the
        sync fails, and for every call after."""
        db = self.live()
        self.in_flight = InFlight(entries)
        try:
            db.write(batch, self._unsynced)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception for every RocksDB status
            self.in_flight = None
            raise StoreError(f"the rocksdb write failed: {str(exc)[:200]}") from None
        try:
            db.flush_wal(True)
        except Exception as exc:  # noqa: BLE001 - as above
            # in_flight stays set: the batch's entries are readable but may never reach the disk. The
            # get path is closed, and every later call refused.
            self.failed, self.get = LOST, None
            log.error("kv_sync_failed", reason=str(exc)[:200])
            raise DurabilityLostError(LOST) from None
        self.in_flight = None

"""A bounded, persistent spool for audit events waiting for the audit service.

Records are msgpack maps framed by a 4-byte big-endian length, appended to one
file. :meth:`Spool.sync` makes appended records durable (the broker calls it
on its timer, so a deny is durable within one tick); :meth:`Spool.ack` drops
delivered records with an atomic rewrite. A torn record at the tail, left by
a crash mid-write, is cut off at open. When the bound is reached, new records
are counted instead of stored, and the count itself is spooled as a
``spool.overflow`` record as soon as there is room: a loss is never silent.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import msgpack

_LEN = struct.Struct(">I")
_MAX_RECORD = 64 << 10


class Spool:
    """An append-only spool file holding at most ``max_records`` records."""

    def __init__(self, path: Path, max_records: int) -> None:
        self.path = path
        self.max_records = max_records
        self.dropped = 0
        self._unsynced = False
        self._records: list[dict[str, Any]] = self._load()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "ab")

    def _load(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        offset = 0
        while offset + _LEN.size <= len(data):
            (size,) = _LEN.unpack_from(data, offset)
            end = offset + _LEN.size + size
            if size > _MAX_RECORD or end > len(data):
                break
            try:
                record = msgpack.unpackb(data[offset + _LEN.size:end], raw=False, strict_map_key=True)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                break
            if isinstance(record, dict):
                records.append(record)
            offset = end
        if offset != len(data):
            # A torn tail from a crash mid-append: keep every whole record before it.
            with open(self.path, "r+b") as handle:
                handle.truncate(offset)
                os.fsync(handle.fileno())
        return records

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
        data = msgpack.packb(record, use_bin_type=True)
        if len(data) > _MAX_RECORD:
            raise ValueError("spool record too large")
        self._file.write(_LEN.pack(len(data)) + data)
        self._file.flush()
        self._records.append(record)
        self._unsynced = True

    def sync(self) -> None:
        """Make every appended record durable (fsync), if any is not yet."""
        if self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` records, in order, still waiting for delivery."""
        return self._records[:limit]

    def ack(self, count: int) -> None:
        """Forget the oldest ``count`` records: they were delivered durably."""
        if count <= 0:
            return
        self._records = self._records[count:]
        tmp = self.path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as out:
            for record in self._records:
                data = msgpack.packb(record, use_bin_type=True)
                out.write(_LEN.pack(len(data)) + data)
            out.flush()
            os.fsync(out.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self._file = os.fdopen(fd, "ab")
        self._unsynced = False

    def close(self) -> None:
        self.sync()
        self._file.close()

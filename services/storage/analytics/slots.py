"""The lock of each analytics file and its open DuckDB instance, at most ``max_open`` of them.

Contract:

- One :class:`Slot` per file name. Its lock is held for the whole of any call on that file
  (rotation included), so calls on one namespace are serialised while other namespaces keep
  serving. Only the holder of a live slot touches the slot's file or instance.
- A slot is *retired* once its instance is closed for good (rotation moved the file, eviction,
  damage, :meth:`Slots.close`): it leaves the table, and :meth:`Slots.hold` makes a caller that was
  waiting on it look the name up again, since the file may have moved meanwhile.
- At most ``max_open`` instances stay open: :meth:`Slots.evict` closes the least recently used
  idle ones and never waits for a busy one (an instance costs memory and threads while open).

Nothing here knows about keys, files or SQL: :class:`~.store.AnalyticsStore` decides what to
open under a held slot. Split out of the store (:mod:`.store`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

__all__ = ["Slot", "Slots"]


@dataclass(eq=False)
class Slot:
    """One namespace file: its lock, and its open instance if any. ``retired`` once it was closed
    for good (moved by rotation, evicted, damaged): a waiter then looks the namespace up again."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    con: duckdb.DuckDBPyConnection | None = None
    retired: bool = False
    used: int = 0


class Slots:
    """The live slots of the files under ``root``, by file name."""

    def __init__(self, root: Path, max_open: int) -> None:
        self.root = root
        self.max_open = max_open
        self._guard = threading.Lock()
        self._slots: dict[str, Slot] = {}
        self._clock = itertools.count(1)

    def _slot(self, name: str) -> Slot:
        with self._guard:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = Slot(self.root / name)
            return slot

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[Slot]:
        """The live slot of file ``name``, locked. Only the holder of a live slot touches its file; a
        slot retired while we waited is looked up again (its file may have moved)."""
        while True:
            slot = self._slot(name)
            with slot.lock:
                if slot.retired:
                    continue
                yield slot
                return

    def touch(self, slot: Slot) -> None:
        """Mark ``slot`` (held) as the most recently used, for :meth:`evict`."""
        slot.used = next(self._clock)

    @staticmethod
    def shut(slot: Slot) -> None:
        """Close the slot's instance (the caller holds its lock); DuckDB checkpoints on close."""
        if slot.con is not None:
            con, slot.con = slot.con, None
            with contextlib.suppress(duckdb.Error):
                con.close()

    def retire(self, slot: Slot) -> None:
        """Close the slot's instance for good and drop the slot (the caller holds its lock)."""
        self.shut(slot)
        slot.retired = True
        with self._guard:
            if self._slots.get(slot.path.name) is slot:
                del self._slots[slot.path.name]

    def evict(self, keep: Slot) -> None:
        """Close the least recently used idle instances beyond ``max_open`` (never waiting)."""
        with self._guard:
            idle = sorted((s for s in self._slots.values() if s.con is not None and s is not keep),
                          key=lambda s: s.used)
        for slot in idle[: max(0, len(idle) + 1 - self.max_open)]:
            if slot.lock.acquire(blocking=False):
                try:
                    self.retire(slot)
                finally:
                    slot.lock.release()

    def close(self) -> None:
        """Retire every slot, interrupting the query of any busy one so its lock comes free soon."""
        with self._guard:
            slots = list(self._slots.values())
        for slot in slots:
            if not slot.lock.acquire(blocking=False):
                con = slot.con
                if con is not None:
                    with contextlib.suppress(duckdb.Error):
                        con.interrupt()
                slot.lock.acquire()
            try:
                self.retire(slot)
            finally:
                slot.lock.release()

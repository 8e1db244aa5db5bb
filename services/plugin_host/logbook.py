"""What plugins print: kept per plugin in plugin-host's encrypted database, in batches.

The sandbox hands over each line a plugin writes to stdout or stderr (already bounded, truncated and
made printable; a plugin that writes faster than ``[plugins] log_bytes_per_s`` is killed for
flooding). Lines are buffered here and written once a second in one transaction, trimmed to the last
``[plugins] log_lines`` per plugin. While the database is sealed, lines wait in a bounded buffer:
the oldest are dropped first, and the drop is counted in the next line written
(``meshctl plugins logs`` shows it), so a gap is never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Final

import structlog

from shared import MeshError

from .store import PluginDB

log = structlog.get_logger("plugin-host")

FLUSH_PERIOD_S: Final = 1.0
BUFFER_LINES: Final = 10_000


class Logbook:
    """Buffers ``(plugin, time, stream, line)`` and flushes them to the database."""

    def __init__(self, db: Callable[[], PluginDB], keep: int, clock: Callable[[], float]) -> None:
        self.db = db
        self.keep = keep
        self.clock = clock
        self.pending: deque[tuple[str, float, str, str]] = deque()
        self.dropped: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def writer(self, name: str) -> Callable[[str, str], None]:
        """The ``on_log`` callback for plugin ``name``."""
        def write(stream: str, line: str) -> None:
            if len(self.pending) >= BUFFER_LINES:
                lost = self.pending.popleft()
                self.dropped[lost[0]] = self.dropped.get(lost[0], 0) + 1
            self.pending.append((name, self.clock(), stream, line))
        return write

    def note(self, name: str, line: str) -> None:
        """A line plugin-host itself writes into the plugin's log (a start, a kill)."""
        self.writer(name)("host", line)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="plugin-logbook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_PERIOD_S)
            self.flush()

    def flush(self) -> None:
        """Write what is pending (nothing while the database is sealed: it waits)."""
        if not self.pending and not self.dropped:
            return
        try:
            db = self.db()
        except MeshError:
            return
        now = self.clock()
        rows = [(name, now, "host", f"[{count} lines lost while the plugin database was sealed]")
                for name, count in self.dropped.items()] + list(self.pending)
        try:
            db.add_logs(rows, self.keep)
        except Exception as exc:  # noqa: BLE001 - a log write must never take plugin-host down
            log.warning("plugin logs not written; kept for the next try", error=type(exc).__name__)
            return
        self.pending.clear()
        self.dropped.clear()

    def forget(self, name: str) -> None:
        self.pending = deque(row for row in self.pending if row[0] != name)
        self.dropped.pop(name, None)

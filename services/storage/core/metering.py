"""Read metering: how much each caller reads of each user's data, reported to audit.

Every read (``kv.get``, ``kv.scan``, ``records.get``, ``records.query``, ``analytics.query``,
``files.get``) adds the bytes it returned to a counter per ``(caller, person, category)``. Every
:data:`FLUSH_S` seconds the counters become ``storage.read`` records (``on_behalf_of`` = the person
whose data was read, the user id authn verified; absent for a caller's own data; ``details.bytes``,
``details.count``), which audit's ``large_read`` rule sums per person.

The counters are sent straight to ``audit.append``, not through a spool on disk: they name users,
and nothing that names a user is written outside an encrypted store. While audit cannot take them
they stay in memory and are sent with the next flush; at most :data:`MAX_PENDING` counters are
kept, and a crash loses at most one interval of them (they are evidence for an alert, not
acknowledged writes). Reads are never refused because metering is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgpack
import structlog

from shared import MeshError

from .namespace import PEOPLE, Namespace

log = structlog.get_logger("storage")

FLUSH_S: Final = 10.0
MAX_PENDING: Final = 10_000
_RECORDS_PER_CALL: Final = 500


def encoded_size(doc: Any) -> int:
    """Bytes of ``doc`` on the wire (what read metering counts for documents, rows and results)."""
    return 0 if doc is None else len(msgpack.packb(doc, use_bin_type=True))


class ReadMeter:
    """Counters of bytes read; :meth:`flush` sends them with ``append(records)``."""

    def __init__(self, append: Callable[[list[dict[str, Any]]], Awaitable[Any]]) -> None:
        self._append = append
        self._counts: dict[tuple[str, str, str], list[int]] = {}
        self.dropped = 0

    def add(self, caller: str, ns: Namespace, size: int) -> None:
        """Count one read of ``size`` bytes by ``caller`` from ``ns`` (a person's data is counted
        against that person; a caller's own data against no one)."""
        key = (caller, ns.subject if ns.owner == PEOPLE else "", ns.category)
        entry = self._counts.get(key)
        if entry is None:
            if len(self._counts) >= MAX_PENDING:
                self.dropped += 1
                return
            entry = self._counts[key] = [0, 0]
        entry[0] += size
        entry[1] += 1

    async def flush(self) -> None:
        """Send every counter; those audit did not take are kept for the next flush."""
        if not self._counts:
            return
        counts, self._counts = self._counts, {}
        items = list(counts.items())
        for start in range(0, len(items), _RECORDS_PER_CALL):
            part = items[start:start + _RECORDS_PER_CALL]
            records = [{"type": "storage.read", "outcome": "ok", **({"on_behalf_of": subject} if subject else {}),
                        "details": {"subject": caller, "category": category, "bytes": size, "count": reads}}
                       for (caller, subject, category), (size, reads) in part]
            try:
                await self._append(records)
            except MeshError as exc:
                for key, (size, reads) in part:
                    entry = self._counts.setdefault(key, [0, 0])
                    entry[0] += size
                    entry[1] += reads
                log.info("read_metering_deferred", reason=exc.code, pending=len(self._counts))
                return

    async def run(self) -> None:
        """Flush every :data:`FLUSH_S` seconds until cancelled (the owner flushes once more at stop)."""
        while True:
            await asyncio.sleep(FLUSH_S)  # a reporting period, not a synchronisation
            await self.flush()

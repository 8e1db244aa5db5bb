"""The analytics engine under the service: ``storage.analytics.table|ingest|query|tables`` over DuckDB.

Each namespace has its own encrypted DuckDB database; a query runs in an instance where only that
database is attached, external access is disabled and the configuration is locked, and it must be a
single ``SELECT``. See :mod:`.store` and :mod:`.sandbox` for what is refused and how. The handlers
that answer these calls on the wire are the service's (``Storage.analytics_*``); they delegate here.

The store is made once, when the service starts, after DuckDB's secure crypto module has proved it
can write and read an encrypted database: without it storage refuses to start rather than write
unencrypted files. Sealing closes every instance (DuckDB forgets the keys with them); the store
itself stays until the service stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from shared import BadRequest, RequestContext, StateError

from ..core.context import StorageCore
from ..core.engine import StepwiseEngine
from ..core.keys import KeySet
from ..core.metering import encoded_size
from .schema import AnalyticsIngest, AnalyticsQuery, AnalyticsScope, AnalyticsTable
from .store import AnalyticsStore, StartupError

MAX_QUERY_ROWS: Final = 10_000
MAX_QUERY_S: Final = 30.0


class AnalyticsEngine(StepwiseEngine):
    """The DuckDB store (``store``, None until started) and the requests over it."""

    name = "analytics"
    purpose = "duckdb"
    #: Two threads: each namespace file has its own lock, so one slow query does not hold up another namespace.
    threads = 2

    def __init__(self, core: StorageCore) -> None:
        super().__init__(core)
        self.store: AnalyticsStore | None = None

    def _opened(self) -> AnalyticsStore:
        """The store: call it after :meth:`~..core.context.StorageCore.require`."""
        assert self.store is not None
        return self.store

    # -- requests ---------------------------------------------------------------------------

    async def table(self, ctx: RequestContext, req: AnalyticsTable) -> dict[str, Any]:
        """Create one of the caller's tables (idempotent when identical)."""
        self.core.require()
        store = self._opened()
        if any(len(column) != 2 for column in req.columns):
            raise BadRequest("each column is [name, type]")
        columns = [(name, kind) for name, kind in req.columns]
        await self.run(store.create_table, self.keys, await self.core.access(ctx, req, "write"),
                       req.table, columns)
        return {"table": req.table}

    async def ingest(self, ctx: RequestContext, req: AnalyticsIngest) -> dict[str, Any]:
        """Append the rows in one transaction (all or none), durable on return."""
        self.core.require()
        count = await self.run(self._opened().ingest, self.keys, await self.core.access(ctx, req, "write"),
                               req.table, req.rows)
        return {"rows": count}

    async def query(self, ctx: RequestContext, req: AnalyticsQuery) -> dict[str, Any]:
        """Run one read-only SELECT within the request's deadline; the result's size is metered."""
        self.core.require()
        store = self._opened()
        if not 1 <= req.max_rows <= MAX_QUERY_ROWS:
            raise BadRequest(f"max_rows must be 1 to {MAX_QUERY_ROWS}")
        # Leave the reply time to travel back before the caller's deadline passes.
        timeout = min(MAX_QUERY_S, max(0.1, ctx.remaining() - 0.2))
        ns = await self.core.access(ctx, req, "read")
        columns, rows = await self.run(store.query, self.keys, ns, req.sql, req.params, req.max_rows, timeout)
        self.core.meter.add(ctx.caller, ns, encoded_size(rows))
        return {"columns": columns, "rows": rows}

    async def tables(self, ctx: RequestContext, req: AnalyticsScope) -> dict[str, Any]:
        """The caller's tables, their columns and row counts."""
        self.core.require()
        tables = await self.run(self._opened().tables, self.keys, await self.core.access(ctx, req, "read"))
        return {"tables": tables}

    # -- the engine's life and whole-store work --------------------------------------------

    async def start(self) -> None:
        """Make the store once DuckDB's secure crypto module has proved itself; else refuse to start."""
        store = AnalyticsStore(self.core.layout.analytics)
        try:
            await self.run(store.check_crypto)
        except StartupError as exc:
            # StateError makes the runtime exit with this message (supervisord shows FATAL).
            raise StateError(exc.message) from None
        self.store = store

    async def stop(self) -> None:
        if self.store is not None:
            await self.run(self.store.close)

    async def open_store(self) -> None:
        """Nothing to open: namespace files open on first use, under the keys passed with each call."""

    async def close(self) -> None:
        if self.store is not None:
            await self.run(self.store.forget_keys)

    async def count(self, version: int, pool: str | None = None) -> int:
        return await self.core.run(pool or self.name, self._opened().count, version)

    async def rotate_step(self, version: int) -> int:
        return await self.run(self._opened().rotate_step, self.keys, version)

    async def verify(self) -> list[str]:
        return await self.run(self._opened().verify, self.keys)

    async def is_empty(self) -> bool:
        return await self.run(self._opened().is_empty)

    async def snapshot(self, work: Path) -> None:
        """Every namespace file, checkpointed and still encrypted, in ``work/analytics``."""
        dest = work / self.name
        dest.mkdir(mode=0o700, parents=True)
        await self.run(self._opened().snapshot, self.keys, dest)

    async def restore_from(self, work: Path, source_keys: KeySet) -> int:
        # An empty store leaves no file in the archive, so its directory is not extracted.
        source = work / self.name
        if not source.exists():
            return 0
        return await self.run(self._opened().import_from, source, source_keys, self.keys)

"""Analytics handlers (DuckDB, :mod:`.store`): ``storage.analytics.table|ingest|query|tables``.

Each namespace has its own encrypted DuckDB database; a query runs in an instance where only that
database is attached, external access is disabled and the configuration is locked, and it must be a
single ``SELECT``. See :mod:`.store` and :mod:`.sandbox` for what is refused and how.
"""

from __future__ import annotations

from typing import Any, Final

from shared import BadRequest, RequestContext, handler

from ..core.context import StorageCore
from ..core.metering import encoded_size
from .schema import AnalyticsIngest, AnalyticsQuery, AnalyticsScope, AnalyticsTable

MAX_QUERY_ROWS: Final = 10_000
MAX_QUERY_S: Final = 30.0


class AnalyticsApi(StorageCore):
    """Handlers over :class:`~.store.AnalyticsStore`."""

    @handler("analytics.table", request=AnalyticsTable, concurrent=True)
    async def analytics_table(self, ctx: RequestContext, req: AnalyticsTable) -> dict[str, Any]:
        """``storage.analytics.table {subject, category, table, columns: [[name, type]]}`` → ``{table}``:
        create one of the caller's tables (types: BIGINT, DOUBLE, VARCHAR, BOOLEAN, TIMESTAMP, BLOB, DATE)."""
        self.require()
        assert self.analytics is not None
        if any(len(column) != 2 for column in req.columns):
            raise BadRequest("each column is [name, type]")
        columns = [(name, kind) for name, kind in req.columns]
        await self.run("analytics", self.analytics.create_table, self.keys["duckdb"],
                       self.namespace(ctx, req.subject, req.category), req.table, columns)
        return {"table": req.table}

    @handler("analytics.ingest", request=AnalyticsIngest, concurrent=True)
    async def analytics_ingest(self, ctx: RequestContext, req: AnalyticsIngest) -> dict[str, Any]:
        """``storage.analytics.ingest {subject, category, table, rows}`` → ``{rows}`` once the batch is
        committed (one transaction: all rows or none)."""
        self.require()
        assert self.analytics is not None
        count = await self.run("analytics", self.analytics.ingest, self.keys["duckdb"],
                               self.namespace(ctx, req.subject, req.category), req.table, req.rows)
        return {"rows": count}

    @handler("analytics.query", request=AnalyticsQuery, concurrent=True)
    async def analytics_query(self, ctx: RequestContext, req: AnalyticsQuery) -> dict[str, Any]:
        """``storage.analytics.query {subject, category, sql, params?, max_rows?}`` → ``{columns, rows}``:
        one read-only SELECT over the caller's own tables, within the request's deadline."""
        self.require()
        assert self.analytics is not None
        if not 1 <= req.max_rows <= MAX_QUERY_ROWS:
            raise BadRequest(f"max_rows must be 1 to {MAX_QUERY_ROWS}")
        timeout = min(MAX_QUERY_S, max(0.1, ctx.remaining() - 0.2))
        ns = self.namespace(ctx, req.subject, req.category)
        columns, rows = await self.run("analytics", self.analytics.query, self.keys["duckdb"], ns, req.sql,
                                       req.params, req.max_rows, timeout)
        self.meter.add(ns, encoded_size(rows))
        return {"columns": columns, "rows": rows}

    @handler("analytics.tables", request=AnalyticsScope, concurrent=True)
    async def analytics_tables(self, ctx: RequestContext, req: AnalyticsScope) -> dict[str, Any]:
        """``storage.analytics.tables {subject, category}`` → ``{tables: [{name, columns, rows}]}``."""
        self.require()
        assert self.analytics is not None
        tables = await self.run("analytics", self.analytics.tables, self.keys["duckdb"],
                                self.namespace(ctx, req.subject, req.category))
        return {"tables": tables}

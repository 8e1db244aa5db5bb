"""Record handlers (SQLCipher, :mod:`.store`): ``storage.records.collection|insert|get|query|update|delete``.

Callers send parameters only, never SQL: collections and field names are validated identifiers, values
are bound parameters. Inserts are group-committed and answered once their transaction is durable.
"""

from __future__ import annotations

from typing import Any

from shared import RequestContext, handler

from ..core.batching import GroupCommit
from ..core.context import StorageCore
from ..core.metering import encoded_size
from ..core.namespace import Namespace
from .schema import Collection, RecordId, RecordInsert, RecordQuery, RecordUpdate


class RecordsApi(StorageCore):
    """Handlers over :class:`~.store.RecordStore`."""

    _inserts: GroupCommit[tuple[Namespace, str, dict[str, Any]], str] | None = None

    async def _commit_inserts(self, items: list[tuple[Namespace, str, dict[str, Any]]]) -> list[str]:
        self.require()
        assert self.records is not None
        ids: list[str] = await self.run("records", self.records.insert_many, items)
        return ids

    @handler("records.collection", request=Collection, concurrent=True)
    async def records_collection(self, ctx: RequestContext, req: Collection) -> dict[str, Any]:
        """``storage.records.collection {subject, category, collection, indexed}`` → ``{collection,
        indexed}``: declare a collection and its indexed fields (idempotent; ``CONFLICT`` if it exists
        with other fields)."""
        self.require()
        assert self.records is not None
        ns = self.namespace(ctx, req.subject, req.category)
        await self.run("records", self.records.create_collection, ns, req.collection, req.indexed)
        return {"collection": req.collection, "indexed": req.indexed}

    @handler("records.insert", request=RecordInsert, concurrent=True)
    async def records_insert(self, ctx: RequestContext, req: RecordInsert) -> dict[str, Any]:
        """``storage.records.insert {subject, category, collection, doc}`` → ``{id}`` once durable."""
        self.require()
        ns = self.namespace(ctx, req.subject, req.category)
        if self._inserts is None:
            self._inserts = GroupCommit(self._commit_inserts)
        return {"id": await self._inserts.submit((ns, req.collection, req.doc))}

    @handler("records.get", request=RecordId, concurrent=True)
    async def records_get(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """``storage.records.get {subject, category, collection, id}`` → ``{found, doc}``."""
        self.require()
        assert self.records is not None
        ns = self.namespace(ctx, req.subject, req.category)
        doc = await self.run("records", self.records.get, ns, req.collection, req.id)
        self.meter.add(ns, encoded_size(doc))
        return {"found": doc is not None, "doc": doc}

    @handler("records.query", request=RecordQuery, concurrent=True)
    async def records_query(self, ctx: RequestContext, req: RecordQuery) -> dict[str, Any]:
        """``storage.records.query {subject, category, collection, where?, after?, limit?}`` →
        ``{items: [{id, doc}], next}``: equality on indexed fields, ordered by id; pass ``next`` as
        ``after`` for the next page."""
        self.require()
        assert self.records is not None
        ns = self.namespace(ctx, req.subject, req.category)
        items, cursor = await self.run("records", self.records.query, ns, req.collection, req.where, req.after,
                                       req.limit)
        self.meter.add(ns, sum(encoded_size(doc) for _, doc in items))
        return {"items": [{"id": rid, "doc": doc} for rid, doc in items], "next": cursor}

    @handler("records.update", request=RecordUpdate, concurrent=True)
    async def records_update(self, ctx: RequestContext, req: RecordUpdate) -> dict[str, Any]:
        """``storage.records.update {subject, category, collection, id, doc}`` → ``{updated}``: replaces
        the document and its index entries in one durable transaction."""
        self.require()
        assert self.records is not None
        updated = await self.run("records", self.records.update, self.namespace(ctx, req.subject, req.category),
                                 req.collection, req.id, req.doc)
        return {"updated": updated}

    @handler("records.delete", request=RecordId, concurrent=True)
    async def records_delete(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """``storage.records.delete {subject, category, collection, id}`` → ``{deleted}`` once durable."""
        self.require()
        assert self.records is not None
        deleted = await self.run("records", self.records.delete, self.namespace(ctx, req.subject, req.category),
                                 req.collection, req.id)
        return {"deleted": deleted}

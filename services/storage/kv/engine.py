"""Key-value handlers (RocksDB, :mod:`.store`): ``storage.kv.put|get|delete|scan``.

Values and names are sealed by :mod:`.sealing` before they reach RocksDB; puts are group-committed
(:mod:`..core.batching`) and answered only once their synced write batch is on disk.
"""

from __future__ import annotations

from typing import Any

from shared import RequestContext, handler

from ..core.batching import GroupCommit
from ..core.context import StorageCore
from ..core.namespace import Namespace
from .schema import KvKey, KvPut, KvScan


class KvApi(StorageCore):
    """Handlers over :class:`~.store.KvStore`."""

    _kv_puts: GroupCommit[tuple[Namespace, bytes, bytes], None] | None = None

    async def _commit_puts(self, items: list[tuple[Namespace, bytes, bytes]]) -> list[None]:
        self.require()
        assert self.kv is not None
        await self.run("kv", self.kv.put_many, self.keys["rocksdb"], items)
        return [None] * len(items)

    @handler("kv.put", request=KvPut, concurrent=True)
    async def kv_put(self, ctx: RequestContext, req: KvPut) -> dict[str, Any]:
        """``storage.kv.put {subject, category, key, value}`` → ``{stored: true}`` once durable.
        ``meshctl call storage.kv.put '{...}'``."""
        self.require()
        ns = self.namespace(ctx, req.subject, req.category)
        if self._kv_puts is None:
            self._kv_puts = GroupCommit(self._commit_puts)
        await self._kv_puts.submit((ns, req.key, req.value))
        return {"stored": True}

    @handler("kv.get", request=KvKey, concurrent=True)
    async def kv_get(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """``storage.kv.get {subject, category, key}`` → ``{found, value}`` (value None when absent)."""
        self.require()
        assert self.kv is not None
        ns = self.namespace(ctx, req.subject, req.category)
        value = await self.run("kv", self.kv.get, self.keys["rocksdb"], ns, req.key)
        self.meter.add(ns, len(value or b""))
        return {"found": value is not None, "value": value}

    @handler("kv.delete", request=KvKey, concurrent=True)
    async def kv_delete(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """``storage.kv.delete {subject, category, key}`` → ``{deleted}`` once durable."""
        self.require()
        assert self.kv is not None
        deleted = await self.run("kv", self.kv.delete, self.keys["rocksdb"],
                                 self.namespace(ctx, req.subject, req.category), req.key)
        return {"deleted": deleted}

    @handler("kv.scan", request=KvScan, concurrent=True)
    async def kv_scan(self, ctx: RequestContext, req: KvScan) -> dict[str, Any]:
        """``storage.kv.scan {subject, category, prefix?, after?, limit?}`` → ``{items: [[key, value]],
        next}``: names in byte order; pass ``next`` as ``after`` for the next page (None at the end)."""
        self.require()
        assert self.kv is not None
        ns = self.namespace(ctx, req.subject, req.category)
        items, cursor = await self.run("kv", self.kv.scan, self.keys["rocksdb"], ns, req.prefix, req.after, req.limit)
        self.meter.add(ns, sum(len(name) + len(value) for name, value in items))
        return {"items": [[name, value] for name, value in items], "next": cursor}

"""The key-value engine under the service: ``storage.kv.put|get|delete|scan`` over the RocksDB store.

Values and names are sealed by :mod:`.sealing` before they reach RocksDB (:mod:`.store`); puts are
group-committed (:mod:`..core.batching`) and answered only once their synced write batch is on
disk. Gets run on worker threads of their own, so a get never queues behind a write's sync
(:mod:`.database`). Reads are metered (:mod:`..core.metering`). The handlers that answer these calls on the
wire are the service's (``Storage.kv_*``); they delegate here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from shared import RequestContext

from ..core.batching import GroupCommit
from ..core.context import StorageCore
from ..core.engine import StepwiseEngine
from ..core.errors import DurabilityLostError
from ..core.keys import KeySet
from ..core.namespace import Namespace
from .schema import KvKey, KvPut, KvScan
from .store import KvStore

T = TypeVar("T")

#: The pool of gets, beside the engine's own: KvStore.get takes no lock on its usual path and may run
#: beside a write, whose sync releases the GIL (.database), so reads of other names go on meanwhile.
READ_POOL: Final = "kv-read"
READ_THREADS: Final = 2


class KvEngine(StepwiseEngine):
    """The RocksDB store (``store``, None while sealed) and the requests over it."""

    name = "kv"
    purpose = "rocksdb"
    #: One thread: group commits must reach RocksDB one batch at a time, in order.
    threads = 1

    def __init__(self, core: StorageCore) -> None:
        super().__init__(core)
        core.add_pool(READ_POOL, READ_THREADS)
        self.store: KvStore | None = None
        self._puts: GroupCommit[tuple[Namespace, bytes, bytes], None] = GroupCommit(self._commit_puts)

    def _opened(self) -> KvStore:
        """The store, open: call it after :meth:`~..core.context.StorageCore.require`."""
        assert self.store is not None
        return self.store

    # -- requests ---------------------------------------------------------------------------

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a call that writes on the engine's thread. A failed sync stops storage: health says
        failed, and every data call answers it, until a restart (the store refuses them anyway)."""
        try:
            return await self.run(fn, *args)
        except DurabilityLostError as exc:
            self.core.fail(exc.message)
            raise

    async def _commit_puts(self, items: list[tuple[Namespace, bytes, bytes]]) -> list[None]:
        self.core.require()
        await self._write(self._opened().put_many, self.keys, items)
        return [None] * len(items)

    async def put(self, ctx: RequestContext, req: KvPut) -> dict[str, Any]:
        """Store the value in the next group commit; answer once it is durable."""
        self.core.require()
        ns = await self.core.access(ctx, req, "write")
        await self._puts.submit((ns, req.key, req.value))
        return {"stored": True}

    async def get(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """The value, or None when absent; the bytes read are metered."""
        self.core.require()
        ns = await self.core.access(ctx, req, "read")
        value = await self.core.run(READ_POOL, self._opened().get, self.keys, ns, req.key)
        self.core.meter.add(ctx.caller, ns, len(value or b""))
        return {"found": value is not None, "value": value}

    async def delete(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """Delete the name under every held key version, durably."""
        self.core.require()
        deleted = await self._write(self._opened().delete, self.keys,
                                    await self.core.access(ctx, req, "delete"), req.key)
        return {"deleted": deleted}

    async def scan(self, ctx: RequestContext, req: KvScan) -> dict[str, Any]:
        """One page of names and values in byte order; the bytes read are metered."""
        self.core.require()
        ns = await self.core.access(ctx, req, "read")
        items, cursor = await self.run(self._opened().scan, self.keys, ns, req.prefix, req.after, req.limit)
        self.core.meter.add(ctx.caller, ns, sum(len(name) + len(value) for name, value in items))
        return {"items": [[name, value] for name, value in items], "next": cursor}

    # -- the engine's life and whole-store work --------------------------------------------

    async def open_store(self) -> None:
        self.store = await self.run(KvStore.open, self.core.layout.kv)

    async def close(self) -> None:
        if self.store is not None:
            await self.run(self.store.close)
        self.store = None

    async def count(self, version: int, pool: str | None = None) -> int:
        return await self.core.run(pool or self.name, self._opened().count, version)

    async def rotate_step(self, version: int) -> int:
        return await self._write(self._opened().reseal_step, self.keys, version)

    async def forget_retired(self) -> None:
        """Wipe the store's sealing material of the versions just retired (on the engine's thread, so
        never while a write uses it; a get beside it finds the material wiped and redoes its read
        under the store's lock, store.py "Threads")."""
        if self.store is not None:
            await self.run(self.store.forget_versions, self.keys)

    async def verify(self) -> list[str]:
        return await self.run(self._opened().verify, self.keys)

    async def is_empty(self) -> bool:
        return await self.run(self._opened().is_empty)

    async def snapshot(self, work: Path) -> None:
        """A RocksDB checkpoint in ``work/kv``."""
        await self.run(self._opened().checkpoint, work / self.name)

    async def restore_from(self, work: Path, source_keys: KeySet) -> int:
        # An empty store leaves no file in the archive, so its directory is not extracted.
        source = work / self.name
        if not source.exists():
            return 0
        return await self._write(self._opened().import_from, source, source_keys, self.keys)

"""The records engine under the service: ``storage.records.collection|insert|get|query|update|delete``.

Callers send parameters only, never SQL: collections and field names are validated identifiers,
values are bound parameters (:mod:`.sql`). Inserts are group-committed (:mod:`..core.batching`)
and answered once their transaction is durable. Reads are metered (:mod:`..core.metering`). The
handlers that answer these calls on the wire are the service's (``Storage.records_*``); they
delegate here.

Unlike the other engines, ``records.db`` is under one key version at a time, whichever opens it
(:attr:`RecordsEngine.key_version`): a rotation re-encrypts it in one go (:meth:`RecordsEngine.rekey`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared import RequestContext

from ..core.batching import GroupCommit
from ..core.context import StorageCore
from ..core.engine import Engine
from ..core.errors import DamagedError
from ..core.keys import KeySet
from ..core.metering import encoded_size
from ..core.namespace import Namespace
from .schema import Collection, RecordId, RecordInsert, RecordQuery, RecordUpdate
from .store import RecordStore


class RecordsEngine(Engine):
    """The SQLCipher store (``store``, None while sealed) and the requests over it."""

    name = "records"
    purpose = "sqlcipher"
    #: One thread: the store's one connection serialises every call anyway.
    threads = 1

    def __init__(self, core: StorageCore) -> None:
        super().__init__(core)
        self.store: RecordStore | None = None
        #: The key version ``records.db`` is encrypted with now.
        self.key_version = 0
        self._inserts: GroupCommit[tuple[Namespace, str, dict[str, Any]], str] = GroupCommit(self._commit_inserts)

    def _opened(self) -> RecordStore:
        """The store, open: call it after :meth:`~..core.context.StorageCore.require`."""
        assert self.store is not None
        return self.store

    # -- requests ---------------------------------------------------------------------------

    async def _commit_inserts(self, items: list[tuple[Namespace, str, dict[str, Any]]]) -> list[str]:
        self.core.require()
        ids: list[str] = await self.run(self._opened().insert_many, items)
        return ids

    async def collection(self, ctx: RequestContext, req: Collection) -> dict[str, Any]:
        """Declare the collection and its indexed fields (idempotent)."""
        self.core.require()
        ns = await self.core.access(ctx, req, "write")
        await self.run(self._opened().create_collection, ns, req.collection, req.indexed)
        return {"collection": req.collection, "indexed": req.indexed}

    async def insert(self, ctx: RequestContext, req: RecordInsert) -> dict[str, Any]:
        """Insert the document in the next group commit; answer its id once it is durable."""
        self.core.require()
        ns = await self.core.access(ctx, req, "write")
        return {"id": await self._inserts.submit((ns, req.collection, req.doc))}

    async def get(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """The document, or None; the bytes read are metered."""
        self.core.require()
        ns = await self.core.access(ctx, req, "read")
        doc = await self.run(self._opened().get, ns, req.collection, req.id)
        self.core.meter.add(ctx.caller, ns, encoded_size(doc))
        return {"found": doc is not None, "doc": doc}

    async def query(self, ctx: RequestContext, req: RecordQuery) -> dict[str, Any]:
        """One page of documents matching ``where``, by id; the bytes read are metered."""
        self.core.require()
        ns = await self.core.access(ctx, req, "read")
        items, cursor = await self.run(self._opened().query, ns, req.collection, req.where, req.after, req.limit)
        self.core.meter.add(ctx.caller, ns, sum(encoded_size(doc) for _, doc in items))
        return {"items": [{"id": rid, "doc": doc} for rid, doc in items], "next": cursor}

    async def update(self, ctx: RequestContext, req: RecordUpdate) -> dict[str, Any]:
        """Replace the document and its index entries in one durable transaction."""
        self.core.require()
        updated = await self.run(self._opened().update, await self.core.access(ctx, req, "write"),
                                 req.collection, req.id, req.doc)
        return {"updated": updated}

    async def delete(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """Delete the document durably."""
        self.core.require()
        deleted = await self.run(self._opened().delete, await self.core.access(ctx, req, "delete"),
                                 req.collection, req.id)
        return {"deleted": deleted}

    # -- the engine's life ------------------------------------------------------------------

    async def open(self) -> None:
        """Open ``records.db`` with the key version that opens it: the current one, or (a rotation
        was interrupted, or has not started yet) an older one, fetched from keyvault. A database no
        version opens is :class:`DamagedError`."""
        keys, path = self.keys, self.core.layout.records
        if path.exists():
            candidates = {keys.current: keys.key()}
            found = await self.run(RecordStore.which_key, path, candidates)
            if found is None:
                for version in range(keys.current - 1, 0, -1):
                    await self.core.fetch_key(self.purpose, version)
                found = await self.run(RecordStore.which_key, path,
                                       {v: keys.key(v) for v in keys.versions() if v != keys.current})
            if found is None:
                raise DamagedError("records.db opens with no key version storage can fetch: it is damaged "
                                   "or not this mesh's")
            self.key_version = found
        else:
            self.key_version = keys.current
        self.store = await self.run(RecordStore.open, path, keys.key(self.key_version))

    async def close(self) -> None:
        if self.store is not None:
            await self.run(self.store.close)
        self.store = None

    async def rekey(self) -> None:
        """Re-encrypt ``records.db`` under the current key version (``PRAGMA rekey``), durably."""
        # The version is taken with the key, before the rekey runs: a rotation that lands while it
        # runs makes a newer version current, and recording that one would name a key the file is
        # not encrypted with (so the version it is encrypted with could be retired while in use).
        version = self.keys.current
        await self.run(self._opened().rekey, self.keys.key(version))
        self.key_version = version

    # -- whole store ------------------------------------------------------------------------

    async def verify(self) -> list[str]:
        return await self.run(self._opened().verify)

    async def is_empty(self) -> bool:
        return await self.run(self._opened().is_empty)

    def key_versions(self) -> list[int]:
        """Only the version ``records.db`` is encrypted with: the others open nothing."""
        return [self.key_version]

    def archive_meta(self) -> dict[str, Any]:
        return {"records_version": self.key_version}

    async def snapshot(self, work: Path) -> None:
        """A consistent copy (SQLite's backup API), still encrypted, at ``work/records.db``."""
        await self.run(self._opened().backup_to, work / "records.db")

    async def restore_from(self, work: Path, source_keys: KeySet) -> int:
        """Re-key the extracted ``records.db`` to this mesh's key and put it in place of the empty one."""
        source, keys = work / "records.db", self.keys
        copy = await self.run(RecordStore.open, source, source_keys.key())
        try:
            await self.run(copy.rekey, keys.key())
            count: int = await self.run(copy.count)
        finally:
            await self.run(copy.close)
        # The live database is empty (checked before the restore began): replace it by the copy.
        await self.run(self._opened().close)
        target = self.core.layout.records
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(source, target)
        self.store = await self.run(RecordStore.open, target, keys.key())
        self.key_version = keys.current
        return count

"""The storage service: the companion's memories, conversations and files, encrypted at rest.

:class:`Storage` composes the engines, each a package with its store, its requests and its wire
messages, over the core (:mod:`.core`):

- key-value in RocksDB (:mod:`.kv`): values and names sealed by the application;
- records in SQLCipher (:mod:`.records`): msgpack documents, indexed fields;
- analytics in DuckDB (:mod:`.analytics`): encrypted per namespace, sandboxed read-only SELECTs;
- files (:mod:`.files`): a STREAM format (:mod:`.core.stream`), uploaded and read in pieces;
- backups (:mod:`.archive`): every store in one encrypted archive, verified and restored as jobs.

Keys, worker threads and the sealed state are in :mod:`.core.context`; unsealing and sealing in
:mod:`.core.keeper`; re-encryption after a key rotation in :mod:`.core.rotation`. The handlers
below are the wire (names, message types, docstrings for operators); each delegates to an engine.
Every operator handler answers ``FORBIDDEN`` to a caller without the operator role (the mesh ACL
grants services the data calls only; this check holds even if an ACL is widened by mistake).
docs/storage.md describes the formats, the namespaces and what each call guarantees.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import structlog

from shared import MeshConfig, MeshError, MeshHome, NoFields, Readiness, RequestContext, Service, handler

from .analytics.engine import AnalyticsEngine
from .analytics.schema import AnalyticsIngest, AnalyticsQuery, AnalyticsScope, AnalyticsTable
from .archive.backup import Backups
from .archive.lineage import BackupLineage
from .archive.restore import Restores
from .archive.schema import BackupCreate, BackupOpen, JobId
from .core.context import StorageCore
from .core.jobs import JobBoard
from .core.keeper import Keeper
from .core.keys import KeySet
from .core.metering import ReadMeter
from .core.rotation import Rotation
from .core.stream import DEFAULT_CHUNK_SIZE
from .files.engine import FilesEngine, piece_bytes
from .files.schema import FileBegin, FileList, FileName, FilePiece, FileRead, FileUpload
from .kv import NATIVE as KV_NATIVE
from .kv.engine import KvEngine
from .kv.schema import KvKey, KvPut, KvScan
from .records.engine import RecordsEngine
from .records.schema import Collection, RecordId, RecordInsert, RecordQuery, RecordUpdate

log = structlog.get_logger("storage")


class Storage(Service):
    """Mesh name ``storage``; handlers: ``kv.*``, ``records.*``, ``analytics.*``, ``files.*``, ``status``,
    ``verify``, ``backup.*``, ``jobs``, ``health``. ``clock`` (monotonic seconds) times idle uploads."""

    name = "storage"
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None) -> None:
        super().__init__()
        self.core = StorageCore(home or MeshHome.from_env(), config)
        self.kv = KvEngine(self.core)
        self.records = RecordsEngine(self.core)
        self.analytics = AnalyticsEngine(self.core)
        self.files = FilesEngine(self.core, clock=lambda: self.clock())
        self.jobs = JobBoard()
        #: Every engine, in the order their keys are applied: opened at unseal, re-encrypted after a
        #: rotation, imported by a restore (whose counts list the stores in this order).
        self.engines = (self.kv, self.files, self.analytics, self.records)
        #: Every engine, records first: the order verify reports and a backup snapshots the stores in.
        self.listed = (self.records, self.kv, self.analytics, self.files)
        self.lineage = BackupLineage(self.core)
        self.rotation = Rotation(self.core, (self.kv, self.files, self.analytics), self.records)
        self.backups = Backups(self.core, self.listed, self.lineage, self.jobs)
        self.restores = Restores(self.core, self.engines, self.lineage, self.jobs)
        self.keeper = Keeper(self.core, self.engines, self._after_unseal)

    @property
    def keys(self) -> dict[str, KeySet]:
        """The data keys held now, by purpose (none while sealed)."""
        return self.core.keys

    @property
    def meter(self) -> ReadMeter:
        """Read metering: bytes read per caller, subject and category, flushed to audit."""
        return self.core.meter

    # -- life cycle -------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Check the message cap leaves room for file chunks, log whether the key-value formats run
        compiled, remove what an interrupted backup or restore left in the work directory, then
        start (:meth:`.core.keeper.Keeper.start`)."""
        piece_bytes(self.core.config.broker.max_message_bytes, DEFAULT_CHUNK_SIZE)  # refuse a cap no file chunk fits
        if KV_NATIVE.compiled:
            log.info("kv_formats_compiled")
        else:
            log.warning("kv_formats_interpreted", reason=KV_NATIVE.reason,
                        hint="make native compiles them (docs/storage.md); until then key-value calls are slower")
        if self.core.layout.work.exists():
            for leftover in self.core.layout.work.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        # The runtime hands the service its mesh client just before on_start; the engines reach the
        # mesh (keyvault, audit) through the core.
        self.core.mesh = self.mesh
        await self._follow_authz()
        await self.keeper.start()

    async def _follow_authz(self) -> None:
        """Follow ``authz.changed`` so authz's reusable allows can be kept (core/decisions.py);
        without the subscription every access to a person's data asks authz again."""
        if self.mesh is None:
            return
        try:
            self.core.gate.allows.follow(await self.mesh.subscribe("authz.changed", timeout=5.0))
        except MeshError as exc:
            log.warning("no_authz_events", reason=exc.code,
                        hint='add "authz." to subscribe in [services.storage]; until then authz is asked every time')

    async def on_stop(self) -> None:
        """End the jobs, then stop (:meth:`.core.keeper.Keeper.stop`): every key is wiped."""
        await self.jobs.close()
        await self.keeper.stop()

    async def _after_unseal(self) -> None:
        """Background work while unsealed: move the backup lineage off the home, then re-encrypt
        what is still under an older key version."""
        await self.lineage.move_off_home()
        await self.rotation.run()

    def readiness(self) -> Readiness:
        return self.core.readiness()

    # -- key-value (RocksDB, :mod:`.kv`) ---------------------------------------------------

    @handler("kv.put", request=KvPut, concurrent=True)
    async def kv_put(self, ctx: RequestContext, req: KvPut) -> dict[str, Any]:
        """``storage.kv.put {category, ...access, key, value}`` → ``{stored: true}`` once durable.
        ``meshctl call storage.kv.put '{...}'``."""
        return await self.kv.put(ctx, req)

    @handler("kv.get", request=KvKey, concurrent=True)
    async def kv_get(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """``storage.kv.get {category, ...access, key}`` → ``{found, value}`` (value None when absent)."""
        return await self.kv.get(ctx, req)

    @handler("kv.delete", request=KvKey, concurrent=True)
    async def kv_delete(self, ctx: RequestContext, req: KvKey) -> dict[str, Any]:
        """``storage.kv.delete {category, ...access, key}`` → ``{deleted}`` once durable."""
        return await self.kv.delete(ctx, req)

    @handler("kv.scan", request=KvScan, concurrent=True)
    async def kv_scan(self, ctx: RequestContext, req: KvScan) -> dict[str, Any]:
        """``storage.kv.scan {category, ...access, prefix?, after?, limit?}`` → ``{items: [[key, value]],
        next}``: names in byte order; pass ``next`` as ``after`` for the next page (None at the end)."""
        return await self.kv.scan(ctx, req)

    # -- records (SQLCipher, :mod:`.records`) ----------------------------------------------

    @handler("records.collection", request=Collection, concurrent=True)
    async def records_collection(self, ctx: RequestContext, req: Collection) -> dict[str, Any]:
        """``storage.records.collection {category, ...access, collection, indexed}`` → ``{collection,
        indexed}``: declare a collection and its indexed fields (idempotent; ``CONFLICT`` if it exists
        with other fields)."""
        return await self.records.collection(ctx, req)

    @handler("records.insert", request=RecordInsert, concurrent=True)
    async def records_insert(self, ctx: RequestContext, req: RecordInsert) -> dict[str, Any]:
        """``storage.records.insert {category, ...access, collection, doc}`` → ``{id}`` once durable."""
        return await self.records.insert(ctx, req)

    @handler("records.get", request=RecordId, concurrent=True)
    async def records_get(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """``storage.records.get {category, ...access, collection, id}`` → ``{found, doc}``."""
        return await self.records.get(ctx, req)

    @handler("records.query", request=RecordQuery, concurrent=True)
    async def records_query(self, ctx: RequestContext, req: RecordQuery) -> dict[str, Any]:
        """``storage.records.query {category, ...access, collection, where?, after?, limit?}`` →
        ``{items: [{id, doc}], next}``: equality on indexed fields, ordered by id; pass ``next`` as
        ``after`` for the next page."""
        return await self.records.query(ctx, req)

    @handler("records.update", request=RecordUpdate, concurrent=True)
    async def records_update(self, ctx: RequestContext, req: RecordUpdate) -> dict[str, Any]:
        """``storage.records.update {category, ...access, collection, id, doc}`` → ``{updated}``: replaces
        the document and its index entries in one durable transaction."""
        return await self.records.update(ctx, req)

    @handler("records.delete", request=RecordId, concurrent=True)
    async def records_delete(self, ctx: RequestContext, req: RecordId) -> dict[str, Any]:
        """``storage.records.delete {category, ...access, collection, id}`` → ``{deleted}`` once durable."""
        return await self.records.delete(ctx, req)

    # -- analytics (DuckDB, :mod:`.analytics`) ---------------------------------------------

    @handler("analytics.table", request=AnalyticsTable, concurrent=True)
    async def analytics_table(self, ctx: RequestContext, req: AnalyticsTable) -> dict[str, Any]:
        """``storage.analytics.table {category, ...access, table, columns: [[name, type]]}`` → ``{table}``:
        create one of the caller's tables (types: BIGINT, DOUBLE, VARCHAR, BOOLEAN, TIMESTAMP, BLOB, DATE)."""
        return await self.analytics.table(ctx, req)

    @handler("analytics.ingest", request=AnalyticsIngest, concurrent=True)
    async def analytics_ingest(self, ctx: RequestContext, req: AnalyticsIngest) -> dict[str, Any]:
        """``storage.analytics.ingest {category, ...access, table, rows}`` → ``{rows}`` once the batch is
        committed (one transaction: all rows or none)."""
        return await self.analytics.ingest(ctx, req)

    @handler("analytics.query", request=AnalyticsQuery, concurrent=True)
    async def analytics_query(self, ctx: RequestContext, req: AnalyticsQuery) -> dict[str, Any]:
        """``storage.analytics.query {category, ...access, sql, params?, max_rows?}`` → ``{columns, rows}``:
        one read-only SELECT over the caller's own tables, within the request's deadline."""
        return await self.analytics.query(ctx, req)

    @handler("analytics.tables", request=AnalyticsScope, concurrent=True)
    async def analytics_tables(self, ctx: RequestContext, req: AnalyticsScope) -> dict[str, Any]:
        """``storage.analytics.tables {category, ...access}`` → ``{tables: [{name, columns, rows}]}``."""
        return await self.analytics.tables(ctx, req)

    # -- files (:mod:`.files`) ---------------------------------------------------------------

    @handler("files.put.begin", request=FileBegin, concurrent=True)
    async def files_begin(self, ctx: RequestContext, req: FileBegin) -> dict[str, Any]:
        """``storage.files.put.begin {category, ...access, name, size?}`` → ``{upload, piece_bytes}``."""
        return await self.files.begin(ctx, req)

    @handler("files.put.chunk", request=FilePiece, concurrent=True)
    async def files_chunk(self, ctx: RequestContext, req: FilePiece) -> dict[str, Any]:
        """``storage.files.put.chunk {upload, data}`` → ``{received}`` (bytes so far)."""
        return await self.files.chunk(ctx, req)

    @handler("files.put.commit", request=FileUpload, concurrent=True)
    async def files_commit(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """``storage.files.put.commit {upload}`` → ``{name, size, chunks, version}`` once durable."""
        return await self.files.commit(ctx, req)

    @handler("files.put.abort", request=FileUpload, concurrent=True)
    async def files_abort(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """``storage.files.put.abort {upload}`` → ``{aborted: true}``: the partial file is deleted."""
        return await self.files.abort(ctx, req)

    @handler("files.get", request=FileRead, concurrent=True)
    async def files_get(self, ctx: RequestContext, req: FileRead) -> dict[str, Any]:
        """``storage.files.get {category, ...access, name, offset?}`` → ``{data, next}``: the plaintext of
        chunks from ``offset`` (at most 256 KiB); pass ``next`` as ``offset`` until it is None."""
        return await self.files.get(ctx, req)

    @handler("files.info", request=FileName, concurrent=True)
    async def files_info(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """``storage.files.info {category, ...access, name}`` → ``{name, size, chunks, version, created}``."""
        return await self.files.info(ctx, req)

    @handler("files.list", request=FileList, concurrent=True)
    async def files_list(self, ctx: RequestContext, req: FileList) -> dict[str, Any]:
        """``storage.files.list {category, ...access, prefix?, after?, limit?}`` → ``{files: [{name, size,
        created}], next}``, sorted by name."""
        return await self.files.list(ctx, req)

    @handler("files.delete", request=FileName, concurrent=True)
    async def files_delete(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """``storage.files.delete {category, ...access, name}`` → ``{deleted}`` once durable."""
        return await self.files.delete(ctx, req)

    # -- operators: state, verification, backups and their jobs (:mod:`.archive`) -----------

    @handler("status")
    async def status(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``storage.status`` → ``{state, problem, versions, rotation, backup, restoring}`` (operators).
        Shown by ``meshctl status`` and ``meshctl storage status``."""
        core = self.core
        core.require_operator(ctx)
        return {"state": core.state, "problem": core.problem,
                "versions": {p: k.current for p, k in core.keys.items()},
                "held_versions": {p: k.versions() for p, k in core.keys.items()},
                "records_version": self.records.key_version, "rotation": self.rotation.status(),
                "retired": core.stored.retired,
                "backup": {"sequence": core.stored.backup_seq, "time": core.stored.backup_time or None},
                "restoring": core.stored.restoring}

    @handler("verify", concurrent=True)
    async def verify(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``storage.verify`` → ``{ok, problems: [{store, problem}], checked}`` (operators): SQLCipher
        integrity checks, every RocksDB entry and DuckDB table read back, every file stream checked.
        ``meshctl storage verify`` exits non-zero when ``ok`` is false."""
        self.core.require_operator(ctx)
        self.core.require()
        started = time.monotonic()
        found = {engine.name: await engine.verify() for engine in self.listed}
        problems = [{"store": store, "problem": p} for store, items in found.items() for p in items]
        return {"ok": not problems, "problems": problems, "checked": sorted(found),
                "seconds": round(time.monotonic() - started, 3)}

    @handler("backup.create", request=BackupCreate, concurrent=True)
    async def backup_create(self, ctx: RequestContext, req: BackupCreate) -> dict[str, Any]:
        """``storage.backup.create {passphrase?}`` → ``{job}`` (operators); follow it with
        ``storage.jobs``. ``meshctl backup create [--passphrase-file F] [--output F]``."""
        return self.backups.start(ctx, req)

    @handler("backup.verify", request=BackupOpen, concurrent=True)
    async def backup_verify(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """``storage.backup.verify {archive, passphrase?}`` → ``{job}`` (operators): authenticates every
        chunk and entry hash. ``meshctl backup verify FILE [--passphrase-file F]``."""
        return self.restores.start_verify(ctx, req)

    @handler("backup.restore", request=BackupOpen, concurrent=True)
    async def backup_restore(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """``storage.backup.restore {archive, passphrase?, force?}`` → ``{job}`` (operators): into an empty
        storage only; an archive older than the newest this mesh made is a rollback and needs ``force``.
        ``meshctl backup restore FILE [--passphrase-file F] [--force]``."""
        return self.restores.start_restore(ctx, req)

    @handler("jobs", request=JobId)
    async def jobs_handler(self, ctx: RequestContext, req: JobId) -> dict[str, Any]:
        """``storage.jobs {job}`` → ``{job, kind, state, phase, done, total, result, error}`` (operators)."""
        self.core.require_operator(ctx)
        return self.jobs.get(req.job, ctx.caller).to_wire()

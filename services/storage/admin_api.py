"""Operator handlers: ``storage.status``, ``storage.verify``, ``storage.backup.create|verify|restore``,
``storage.jobs``. Every one answers ``FORBIDDEN`` to a caller without the operator role (the mesh ACL
grants services the data calls only; this check holds even if an ACL is widened by mistake).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared import NoFields, RequestContext, handler
from shared.crypto import wipe

from .archive.backup import BackupMixin
from .archive.schema import BackupCreate, BackupOpen, JobId
from .core.jobs import Job, JobBoard


def _secret(text: str | None) -> bytearray | None:
    return None if text is None else bytearray(text.encode())


class AdminApi(BackupMixin):
    """Operator handlers; long operations run as jobs (:mod:`.core.jobs`)."""

    _jobs: JobBoard | None = None

    @property
    def jobs(self) -> JobBoard:
        if self._jobs is None:
            self._jobs = JobBoard()
        return self._jobs

    def _start(self, kind: str, ctx: RequestContext, passphrase: bytearray | None,
               work: Callable[[Job], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Start a job that owns ``passphrase`` (it wipes it); wipe it here if the job is refused."""
        try:
            return {"job": self.jobs.start(kind, ctx.caller, work).id}
        except BaseException:
            if passphrase is not None:
                wipe(passphrase)
            raise

    @handler("status")
    async def status(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``storage.status`` → ``{state, problem, versions, rotation, backup, restoring}`` (operators).
        Shown by ``meshctl status`` and ``meshctl storage status``."""
        self.require_operator(ctx)
        return {"state": self.state, "problem": self.problem,
                "versions": {p: k.current for p, k in self.keys.items()},
                "held_versions": {p: k.versions() for p, k in self.keys.items()},
                "records_version": self.records_version, "rotation": self.rotation_status(),
                "retired": self.stored.retired,
                "backup": {"sequence": self.stored.backup_seq, "time": self.stored.backup_time or None},
                "restoring": self.stored.restoring}

    @handler("verify", concurrent=True)
    async def verify(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``storage.verify`` → ``{ok, problems: [{store, problem}], checked}`` (operators): SQLCipher
        integrity checks, every RocksDB entry and DuckDB table read back, every file stream checked.
        ``meshctl storage verify`` exits non-zero when ``ok`` is false."""
        self.require_operator(ctx)
        self.require()
        assert self.records is not None and self.kv is not None and self.analytics is not None
        assert self.files is not None
        started = time.monotonic()
        found = {
            "records": await self.run("records", self.records.verify),
            "kv": await self.run("kv", self.kv.verify, self.keys["rocksdb"]),
            "analytics": await self.run("analytics", self.analytics.verify, self.keys["duckdb"]),
            "files": await self.run("files", self.files.verify, self.keys["files"]),
        }
        problems = [{"store": store, "problem": p} for store, items in found.items() for p in items]
        return {"ok": not problems, "problems": problems, "checked": sorted(found),
                "seconds": round(time.monotonic() - started, 3)}

    @handler("backup.create", request=BackupCreate, concurrent=True)
    async def backup_create(self, ctx: RequestContext, req: BackupCreate) -> dict[str, Any]:
        """``storage.backup.create {passphrase?}`` → ``{job}`` (operators); follow it with
        ``storage.jobs``. ``meshctl backup create [--passphrase-file F] [--output F]``."""
        self.require_operator(ctx)
        self.require()
        passphrase = _secret(req.passphrase)
        return self._start("backup", ctx, passphrase, lambda j: self.backup_job(j, passphrase))

    @handler("backup.verify", request=BackupOpen, concurrent=True)
    async def backup_verify(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """``storage.backup.verify {archive, passphrase?}`` → ``{job}`` (operators): authenticates every
        chunk and entry hash. ``meshctl backup verify FILE [--passphrase-file F]``."""
        self.require_operator(ctx)
        passphrase = _secret(req.passphrase)
        return self._start("verify", ctx, passphrase, lambda j: self.verify_job(j, req.archive, passphrase))

    @handler("backup.restore", request=BackupOpen, concurrent=True)
    async def backup_restore(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """``storage.backup.restore {archive, passphrase?, force?}`` → ``{job}`` (operators): into an empty
        storage only; an archive older than the newest this mesh made is a rollback and needs ``force``.
        ``meshctl backup restore FILE [--passphrase-file F] [--force]``."""
        self.require_operator(ctx)
        passphrase = _secret(req.passphrase)
        return self._start("restore", ctx, passphrase,
                           lambda j: self.restore_job(j, req.archive, passphrase, req.force))

    @handler("jobs", request=JobId)
    async def jobs_handler(self, ctx: RequestContext, req: JobId) -> dict[str, Any]:
        """``storage.jobs {job}`` → ``{job, kind, state, phase, done, total, result, error}`` (operators)."""
        self.require_operator(ctx)
        return self.jobs.get(req.job, ctx.caller).to_wire()


"""Opening a backup archive: ``storage.backup.verify`` and ``storage.backup.restore``, as jobs.

An archive is named by its file name inside ``<home>/backups`` (meshctl copies the operator's file
there); no other directory is reachable. It opens with this mesh's ``backups`` key (the version
its header names, fetched from keyvault when not held) or with its passphrase.

Verify authenticates every chunk and entry hash and reports what the archive holds; it writes
nothing.

Restore goes into an empty storage (a fresh home): it refuses a non-empty one. It opens the archive
key, refuses an archive older than the newest this mesh has made or restored unless ``force`` (a
rollback), verifies the whole archive (every chunk, every entry's hash) *before anything is
written*, records the restore in audit, then extracts the snapshot to a scratch directory and
re-encrypts every store from the archive's keys into this mesh's current keys (each engine's
:meth:`~..core.engine.Engine.restore_from`). If it is interrupted, ``storage.status`` says so and
running the same restore again starts over (the half-restored stores hold nothing but restored data).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgpack

from shared import BadRequest, Conflict, MeshError, NotFound, RequestContext, Unauthenticated
from shared.crypto import wipe

from ..core.context import ADMIN_POOL, StorageCore
from ..core.engine import Engine
from ..core.jobs import Job, JobBoard
from ..core.keys import KeySet
from .backup import KEYS_ENTRY, audit_job, backups_dir, passphrase_of
from .format import ArchiveHeader, open_with_backup_key, open_with_passphrase, read_header
from .lineage import BackupLineage
from .reader import extract_archive, verify_archive
from .schema import BackupOpen

ARCHIVE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.cmbak")


class Restores:
    """Verifies archives, and restores them into ``engines`` (imported in this order; the restore's
    counts are listed in it too)."""

    def __init__(self, core: StorageCore, engines: Sequence[Engine], lineage: BackupLineage, jobs: JobBoard) -> None:
        self.core = core
        self.engines = tuple(engines)
        self.lineage = lineage
        self.jobs = jobs

    def start_verify(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """What ``storage.backup.verify`` does: check the caller is an operator, start the job; ``{job}``."""
        self.core.require_operator(ctx)
        passphrase = passphrase_of(req.passphrase)
        job = self.jobs.start("verify", ctx.caller, lambda j: self.verify(j, req.archive, passphrase),
                              secret=passphrase)
        return {"job": job.id}

    def start_restore(self, ctx: RequestContext, req: BackupOpen) -> dict[str, Any]:
        """What ``storage.backup.restore`` does: check the caller is an operator, start the job; ``{job}``."""
        self.core.require_operator(ctx)
        passphrase = passphrase_of(req.passphrase)
        job = self.jobs.start("restore", ctx.caller,
                              lambda j: self.restore(j, req.archive, passphrase, req.force), secret=passphrase)
        return {"job": job.id}

    # -- opening an archive -----------------------------------------------------------------

    def archive_path(self, name: str) -> Path:
        """The archive ``name`` inside ``<home>/backups`` (no other directory is reachable)."""
        if not ARCHIVE_NAME_RE.fullmatch(name):
            raise BadRequest("archive must be a file name in the mesh's backups directory, ending in .cmbak")
        path = backups_dir(self.core.home.root) / name
        if not path.is_file():
            raise NotFound(f"no archive {name} in the backups directory")
        return path

    async def _archive_key(self, header: ArchiveHeader, passphrase: bytearray | None) -> bytearray:
        core = self.core
        if passphrase is not None:
            return await core.run(ADMIN_POOL, open_with_passphrase, header, passphrase,
                                  core.config.argon2.test_profiles)
        version = header.backup_key_version
        if version is None:
            raise BadRequest("this archive can be opened with its passphrase only")
        keys = core.keys["backups"]
        if not keys.has(version):
            try:
                await core.fetch_key("backups", version)
            except MeshError:
                raise BadRequest("this archive was not made by this mesh (or its backup key version is gone): "
                                 "give its passphrase") from None
        try:
            return open_with_backup_key(header, keys.key(version))
        except Unauthenticated:
            raise BadRequest(f"version {version} of this mesh's backup key does not open the archive: it was made "
                             "by another mesh (or its header was changed); give its passphrase") from None

    async def verify(self, job: Job, name: str, passphrase: bytearray | None) -> dict[str, Any]:
        """Check every chunk and entry of an archive; returns what it holds. Wipes ``passphrase``."""
        try:
            self.core.require()
            path = self.archive_path(name)
            header = await self.core.run(ADMIN_POOL, read_header, path)
            key = await self._archive_key(header, passphrase)
            try:
                manifest = await self.core.run(ADMIN_POOL, verify_archive, path, key, job.progress("verify"))
            finally:
                wipe(key)
            return {"archive": name, "sequence": header.sequence, "mesh_id": header.mesh_id, "created": header.created,
                    "entries": len(manifest.entries), "bytes": manifest.total_bytes, "ok": True}
        finally:
            if passphrase is not None:
                wipe(passphrase)

    # -- restore ----------------------------------------------------------------------------

    async def restore(self, job: Job, name: str, passphrase: bytearray | None, force: bool) -> dict[str, Any]:
        """Restore an archive into this (empty) storage; see the module docstring. Wipes ``passphrase``."""
        core, stored = self.core, self.core.stored
        try:
            core.require()
            path = self.archive_path(name)
            header = await core.run(ADMIN_POOL, read_header, path)
            mesh_id, newest = await self.lineage.newest()
            rollback = header.mesh_id == mesh_id and header.sequence < newest
            if rollback and not force:
                raise Conflict(f"archive #{header.sequence} is older than #{newest}, the newest this mesh has "
                               "made or restored: restoring it is a rollback (pass --force)")
            if not await self._stores_empty() and stored.restoring is None:
                raise Conflict("storage is not empty: a restore goes into a fresh home (meshctl init, make up)")
            key = await self._archive_key(header, passphrase)
            work = core.layout.work / f"restore-{job.id}"
            try:
                await core.run(ADMIN_POOL, verify_archive, path, key, job.progress("verify"))
                await audit_job(core, "storage.restore", "started", job, archive=name, sequence=header.sequence,
                                rollback=rollback)
                stored.restoring = name
                stored.save(core.layout.state)
                manifest = await core.run(ADMIN_POOL, extract_archive, path, key, work, job.progress("extract"))
            finally:
                wipe(key)
            try:
                counts = await self._import(job, work, manifest[KEYS_ENTRY])
            finally:
                manifest.wipe()  # the archive's data keys, held in bytearrays only
                shutil.rmtree(work, ignore_errors=True)
            stored.restoring = None
            stored.mesh_id = header.mesh_id
            # The archive's lineage becomes this mesh's; its number never goes down (after a forced
            # rollback the next backup still gets a new, higher one).
            same = header.mesh_id == mesh_id
            stored.backup_seq = max(header.sequence, newest) if same else header.sequence
            stored.save(core.layout.state)
            await self.lineage.save()
            await audit_job(core, "storage.restore", "ok", job, archive=name, sequence=header.sequence,
                            rollback=rollback)
            return {"archive": name, "sequence": header.sequence, "rollback": rollback, **counts}
        finally:
            if passphrase is not None:
                wipe(passphrase)

    async def _stores_empty(self) -> bool:
        return all([await engine.is_empty() for engine in self.engines])

    async def _import(self, job: Job, work: Path, keys_blob: bytes | bytearray) -> dict[str, int]:
        """Re-encrypt the extracted snapshot from the archive's keys into this mesh's keys."""
        table = msgpack.unpackb(keys_blob, raw=False, strict_map_key=False)
        sources: dict[str, KeySet] = {}
        try:
            for engine in self.engines:
                sources[engine.purpose] = KeySet(engine.purpose)
                for version, key in sorted(table[engine.purpose].items()):
                    sources[engine.purpose].add(int(version), bytearray(key))
            job.phase = "import"
            return {engine.name: await engine.restore_from(work, sources[engine.purpose]) for engine in self.engines}
        finally:
            for keyset in sources.values():
                keyset.wipe()

"""Backup (``storage.backup.create``): every store snapshotted into a new archive, as a job.

Each store is snapshotted while the mesh runs, on its own worker thread so the copy is consistent
(SQLite backup API, RocksDB checkpoint, DuckDB checkpointed copy, the file blobs: each engine's
:meth:`~..core.engine.Engine.snapshot`). The snapshot files stay encrypted under storage's data
keys; those keys travel in the archive too (its ``KEYS`` entry, inside its encryption), so a new
machine with different keys can restore it. The archive (:mod:`.writer`) is encrypted with a random
archive key, wrapped by keyvault's ``backups`` key and, when the operator gives one, by a
passphrase (Argon2id ``file`` profile) for off-device restores. Archives are written to
``<home>/backups`` (0700) and numbered: the newest number this mesh made is kept in storage's state
and in the lineage's second copy (:mod:`.lineage`), for rollback detection. The snapshot is
consistent per store; writes that land between two stores' snapshots may be in one and not the other.

The backup is audited when it starts and when it is done, fail closed: an archive audit did not
record is removed, never reported done. Restoring one is :mod:`.restore`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgpack

from shared import MeshError, RequestContext, Unavailable
from shared.crypto import wipe

from ..core.context import ADMIN_POOL, StorageCore
from ..core.engine import Engine
from ..core.jobs import Job, JobBoard
from .lineage import BackupLineage
from .schema import BackupCreate
from .writer import write_archive

#: The archive entry that holds the data keys the snapshot is sealed under.
KEYS_ENTRY: Final = "KEYS"


def backups_dir(root: Path) -> Path:
    """``<home>/backups``, created 0700."""
    path = root / "backups"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def passphrase_of(text: str | None) -> bytearray | None:
    """The operator's passphrase as a bytearray the job can wipe (None when none was given)."""
    return None if text is None else bytearray(text.encode())


async def audit_job(core: StorageCore, event: str, outcome: str, job: Job, **details: Any) -> None:
    """Append one record (``subject``: the operator who started ``job``) and wait until audit says it
    is durable (fail closed: ``UNAVAILABLE`` otherwise)."""
    record = {"type": event, "outcome": outcome, "details": {"subject": job.owner, "role": "operator", **details}}
    try:
        await core.mesh.call("audit.append", {"records": [record]}, timeout=10)
    except MeshError as exc:
        raise Unavailable(f"audit did not record {event} ({exc.code}); refusing to go on") from None


class Backups:
    """Makes archives of ``engines`` (snapshotted, and their keys listed, in this order)."""

    def __init__(self, core: StorageCore, engines: Sequence[Engine], lineage: BackupLineage, jobs: JobBoard) -> None:
        self.core = core
        self.engines = tuple(engines)
        self.lineage = lineage
        self.jobs = jobs

    def start(self, ctx: RequestContext, req: BackupCreate) -> dict[str, Any]:
        """What ``storage.backup.create`` does: check the caller is an operator and the stores are
        open, then start the job; ``{job}``."""
        self.core.require_operator(ctx)
        self.core.require()
        passphrase = passphrase_of(req.passphrase)
        job = self.jobs.start("backup", ctx.caller, lambda j: self.run(j, passphrase), secret=passphrase)
        return {"job": job.id}

    async def run(self, job: Job, passphrase: bytearray | None) -> dict[str, Any]:
        """Snapshot every store and pack it into a new archive; returns ``{archive, path, sequence, bytes}``.
        Wipes ``passphrase`` when done."""
        try:
            self.core.require()
            work = self.core.layout.work / f"backup-{job.id}"
            work.mkdir(mode=0o700, parents=True)
            try:
                return await self._backup_into(job, work, passphrase)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            if passphrase is not None:
                wipe(passphrase)

    async def _backup_into(self, job: Job, work: Path, passphrase: bytearray | None) -> dict[str, Any]:
        core, stored = self.core, self.core.stored
        job.phase = "snapshot"
        for engine in self.engines:
            await engine.snapshot(work)
        entries = [(str(p.relative_to(work)), p) for p in sorted(work.rglob("*")) if p.is_file()]
        keys = self._keys_blob()
        mesh_id, newest = await self.lineage.newest()
        if mesh_id != stored.mesh_id:
            # The state file was lost or replaced; the slot remembers this mesh's lineage.
            stored.mesh_id = mesh_id
        sequence = max(stored.backup_seq, newest) + 1
        name = f"curvemesh-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sequence:06d}.cmbak"
        path = backups_dir(core.home.root) / name
        backup_keys = core.keys["backups"]
        meta: dict[str, Any] = {"mesh_id": stored.mesh_id, "sequence": sequence}
        for engine in self.engines:
            meta.update(engine.archive_meta())
        await audit_job(core, "storage.backup", "started", job, archive=name, sequence=sequence)
        info = await core.run(ADMIN_POOL, write_archive, path, entries, {KEYS_ENTRY: keys}, meta,
                              (backup_keys.current, backup_keys.key()), passphrase, core.config.argon2.file,
                              job.progress("pack"))
        try:
            await audit_job(core, "storage.backup", "ok", job, archive=name, sequence=sequence, bytes=info.size,
                            portable=passphrase is not None)
        except MeshError:
            path.unlink(missing_ok=True)  # an archive audit never heard of must not be left behind
            raise
        stored.backup_seq, stored.backup_time = sequence, time.time()
        stored.save(core.layout.state)
        await self.lineage.save()
        return {"archive": name, "path": str(path), "sequence": sequence, "bytes": info.size}

    def _keys_blob(self) -> bytes:
        # The keys leave memory only inside the archive's encryption. msgpack makes an immutable
        # copy we cannot wipe (shared/_crypto.py lists this limit); it lives for this call only.
        table: dict[str, dict[int, bytes]] = {}
        for engine in self.engines:
            table[engine.purpose] = {v: bytes(engine.keys.key(v)) for v in engine.key_versions()}
        packed: bytes = msgpack.packb(table, use_bin_type=True)
        return packed

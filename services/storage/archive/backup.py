"""Backup and restore of every store, as jobs (:mod:`..core.jobs`) run by the storage service.

Backup (``storage.backup.create``): each store is snapshotted while the mesh runs, on its own worker
thread so the copy is consistent (SQLite backup API, RocksDB checkpoint, DuckDB checkpointed copy,
the file blobs). The snapshot files stay encrypted under storage's data keys; those keys travel in
the archive too (inside its encryption), so a new machine with different keys can restore it. The
archive (:mod:`.writer`) is encrypted with a random archive key, wrapped by keyvault's ``backups``
key and, when the operator gives one, by a passphrase (Argon2id ``file`` profile) for off-device
restores. Archives are written to ``<home>/backups`` (0700) and numbered: the newest number this mesh
made is kept in storage's state, for rollback detection. The snapshot is consistent per store; writes
that land between two stores' snapshots may be in one and not the other.

Restore (``storage.backup.restore``) goes into an empty storage (a fresh home): it refuses a
non-empty one. It opens the archive key (backup key, or passphrase), refuses an archive older than
the newest this mesh has made or restored unless ``force`` (a rollback), verifies the whole archive
(every chunk, every entry's hash) *before anything is written*, records the restore in audit, then
extracts the snapshot to a scratch directory and re-encrypts every store from the archive's keys into
this mesh's current keys. If it is interrupted, ``storage.status`` says so and running the same
restore again starts over (the half-restored stores hold nothing but restored data).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Final

import msgpack
import structlog

from shared import BadRequest, Conflict, MeshError, NotFound, Unauthenticated, Unavailable
from shared.crypto import wipe

from ..core.jobs import Job
from ..core.keys import KeySet
from ..core.rotation import RotationMixin
from ..records.store import RecordStore
from .format import ArchiveHeader, open_with_backup_key, open_with_passphrase, read_header
from .lineage import Lineage
from .reader import extract_archive, verify_archive
from .writer import write_archive

log = structlog.get_logger("storage")

ARCHIVE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.cmbak")
KEYS_ENTRY: Final = "KEYS"
#: Purposes whose keys a backup carries, and the snapshot directory each store goes to.
_STORE_PURPOSES: Final = ("sqlcipher", "rocksdb", "duckdb", "files")


def backups_dir(root: Path) -> Path:
    """``<home>/backups``, created 0700."""
    path = root / "backups"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    return path


class BackupMixin(RotationMixin):
    """The backup and restore jobs (the handlers are in :mod:`..admin_api`)."""

    _lineage: Lineage | None = None

    @property
    def lineage(self) -> Lineage:
        """The second copy of the backup lineage (:class:`.lineage.Lineage`), made on first use."""
        if self._lineage is None:
            self._lineage = Lineage(self.home, self.config.keyvault)
        return self._lineage

    async def settled_lineage(self) -> Lineage:
        """The lineage, once a copy an older version left in the home has moved into its slot, the
        move recorded by audit before the old copy goes (``UNAVAILABLE`` if audit does not record
        it: retried next time; :class:`~shared.StateError` when the two copies differ)."""
        move = await self.run("admin", self.lineage.begin_move)
        if move is not None:
            try:
                await self._append_audit([{"type": "storage.anchor_moved", "outcome": "ok", "details": {
                    "anchor": "backup lineage", "source": str(move.old), "destination": move.new}}])
            except MeshError as exc:
                raise Unavailable(f"audit did not record the move of the backup lineage off the home ({exc.code})"
                                  ) from None
            await self.run("admin", move.finish)
            log.warning("anchor_moved", anchor="backup lineage", destination=move.new)
        return self.lineage

    async def after_unseal(self) -> None:
        """Move the backup lineage off the home (see :meth:`settled_lineage`), then rotate."""
        try:
            await self.settled_lineage()
        except MeshError as exc:  # backups and restores refuse with the same message meanwhile
            log.error("backup_lineage_not_moved", reason=exc.message)
        await super().after_unseal()

    async def _audit(self, event: str, outcome: str, job: Job, **details: Any) -> None:
        """Append one record (``subject``: the operator who started ``job``) and wait until audit says it
        is durable (fail closed)."""
        record = {"type": event, "outcome": outcome, "details": {"subject": job.owner, "role": "operator", **details}}
        try:
            await self.mesh.call("audit.append", {"records": [record]}, timeout=10)
        except MeshError as exc:
            raise Unavailable(f"audit did not record {event} ({exc.code}); refusing to go on") from None

    # -- backup ---------------------------------------------------------------------------

    async def backup_job(self, job: Job, passphrase: bytearray | None) -> dict[str, Any]:
        """Snapshot every store and pack it into a new archive; returns ``{archive, path, sequence, bytes}``."""
        try:
            self.require()
            work = _private_dir(self.layout.work / f"backup-{job.id}")
            try:
                return await self._backup_into(job, work, passphrase)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            if passphrase is not None:
                wipe(passphrase)

    async def _backup_into(self, job: Job, work: Path, passphrase: bytearray | None) -> dict[str, Any]:
        assert self.records is not None and self.kv is not None and self.analytics is not None
        assert self.files is not None
        job.phase = "snapshot"
        await self.run("records", self.records.backup_to, work / "records.db")
        await self.run("kv", self.kv.checkpoint, work / "kv")
        await self.run("analytics", self.analytics.snapshot, self.keys["duckdb"], _private_dir(work / "analytics"))
        await self.run("files", self.files.snapshot, work / "files")
        entries = [(str(p.relative_to(work)), p) for p in sorted(work.rglob("*")) if p.is_file()]
        keys = self._keys_blob()
        mesh_id, newest = await self.run("admin", (await self.settled_lineage()).newest, self.stored)
        if mesh_id != self.stored.mesh_id:
            # The state file was lost or replaced; the slot remembers this mesh's lineage.
            self.stored.mesh_id = mesh_id
        sequence = max(self.stored.backup_seq, newest) + 1
        name = f"curvemesh-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{sequence:06d}.cmbak"
        path = backups_dir(self.home.root) / name
        backup_keys = self.keys["backups"]
        meta = {"mesh_id": self.stored.mesh_id, "sequence": sequence, "records_version": self.records_version}
        await self._audit("storage.backup", "started", job, archive=name, sequence=sequence)
        info = await self.run("admin", write_archive, path, entries, {KEYS_ENTRY: keys}, meta,
                              (backup_keys.current, backup_keys.key()), passphrase, self.config.argon2.file,
                              job.progress("pack"))
        try:
            await self._audit("storage.backup", "ok", job, archive=name, sequence=sequence, bytes=info.size,
                              portable=passphrase is not None)
        except MeshError:
            path.unlink(missing_ok=True)  # an archive audit never heard of must not be left behind
            raise
        self.stored.backup_seq, self.stored.backup_time = sequence, time.time()
        self.stored.save(self.layout.state)
        await self._save_lineage()
        return {"archive": name, "path": str(path), "sequence": sequence, "bytes": info.size}

    def _keys_blob(self) -> bytes:
        # The keys leave memory only inside the archive's encryption. msgpack makes an immutable
        # copy we cannot wipe (shared/_crypto.py lists this limit); it lives for this call only.
        table: dict[str, dict[int, bytes]] = {}
        for purpose in _STORE_PURPOSES:
            keys = self.keys[purpose]
            versions = [self.records_version] if purpose == "sqlcipher" else keys.versions()
            table[purpose] = {v: bytes(keys.key(v)) for v in versions}
        return msgpack.packb(table, use_bin_type=True)

    async def _save_lineage(self) -> None:
        try:
            await self.run("admin", self.lineage.save, self.stored.mesh_id, self.stored.backup_seq)
        except Exception as exc:  # noqa: BLE001 - the state file has it; say loudly that the second copy lags
            log.error("backup_lineage_not_saved", error_type=type(exc).__name__)

    # -- opening an archive -----------------------------------------------------------------

    def archive_path(self, name: str) -> Path:
        """The archive ``name`` inside ``<home>/backups`` (no other directory is reachable)."""
        if not ARCHIVE_NAME_RE.fullmatch(name):
            raise BadRequest("archive must be a file name in the mesh's backups directory, ending in .cmbak")
        path = backups_dir(self.home.root) / name
        if not path.is_file():
            raise NotFound(f"no archive {name} in the backups directory")
        return path

    async def _archive_key(self, header: ArchiveHeader, passphrase: bytearray | None) -> bytearray:
        if passphrase is not None:
            return await self.run("admin", open_with_passphrase, header, passphrase,
                                  self.config.argon2.test_profiles)
        version = header.backup_key_version
        if version is None:
            raise BadRequest("this archive can be opened with its passphrase only")
        keys = self.keys["backups"]
        if not keys.has(version):
            try:
                await self.fetch_key("backups", version)
            except MeshError:
                raise BadRequest("this archive was not made by this mesh (or its backup key version is gone): "
                                 "give its passphrase") from None
        try:
            return open_with_backup_key(header, keys.key(version))
        except Unauthenticated:
            raise BadRequest(f"version {version} of this mesh's backup key does not open the archive: it was made "
                             "by another mesh (or its header was changed); give its passphrase") from None

    async def verify_job(self, job: Job, name: str, passphrase: bytearray | None) -> dict[str, Any]:
        """Check every chunk and entry of an archive; returns what it holds."""
        try:
            self.require()
            path = self.archive_path(name)
            header = await self.run("admin", read_header, path)
            key = await self._archive_key(header, passphrase)
            try:
                manifest = await self.run("admin", verify_archive, path, key, job.progress("verify"))
            finally:
                wipe(key)
            return {"archive": name, "sequence": header.sequence, "mesh_id": header.mesh_id, "created": header.created,
                    "entries": len(manifest.entries), "bytes": manifest.total_bytes, "ok": True}
        finally:
            if passphrase is not None:
                wipe(passphrase)

    # -- restore ----------------------------------------------------------------------------

    async def restore_job(self, job: Job, name: str, passphrase: bytearray | None, force: bool) -> dict[str, Any]:
        """Restore an archive into this (empty) storage; see the module docstring."""
        try:
            self.require()
            path = self.archive_path(name)
            header = await self.run("admin", read_header, path)
            mesh_id, newest = await self.run("admin", (await self.settled_lineage()).newest, self.stored)
            rollback = header.mesh_id == mesh_id and header.sequence < newest
            if rollback and not force:
                raise Conflict(f"archive #{header.sequence} is older than #{newest}, the newest this mesh has "
                               "made or restored: restoring it is a rollback (pass --force)")
            if not await self._stores_empty() and self.stored.restoring is None:
                raise Conflict("storage is not empty: a restore goes into a fresh home (meshctl init, make up)")
            key = await self._archive_key(header, passphrase)
            work = self.layout.work / f"restore-{job.id}"
            try:
                await self.run("admin", verify_archive, path, key, job.progress("verify"))
                await self._audit("storage.restore", "started", job, archive=name, sequence=header.sequence,
                                  rollback=rollback)
                self.stored.restoring = name
                self.stored.save(self.layout.state)
                manifest = await self.run("admin", extract_archive, path, key, work,
                                          job.progress("extract"))
            finally:
                wipe(key)
            try:
                counts = await self._import(job, work, manifest[KEYS_ENTRY])
            finally:
                manifest.wipe()  # the archive's data keys, held in bytearrays only
                shutil.rmtree(work, ignore_errors=True)
            self.stored.restoring = None
            self.stored.mesh_id = header.mesh_id
            # The archive's lineage becomes this mesh's; its number never goes down (after a forced
            # rollback the next backup still gets a new, higher one).
            same = header.mesh_id == mesh_id
            self.stored.backup_seq = max(header.sequence, newest) if same else header.sequence
            self.stored.save(self.layout.state)
            await self._save_lineage()
            await self._audit("storage.restore", "ok", job, archive=name, sequence=header.sequence,
                              rollback=rollback)
            return {"archive": name, "sequence": header.sequence, "rollback": rollback, **counts}
        finally:
            if passphrase is not None:
                wipe(passphrase)

    async def _stores_empty(self) -> bool:
        assert self.records is not None and self.kv is not None and self.analytics is not None
        assert self.files is not None
        checks = (("records", self.records.is_empty), ("kv", self.kv.is_empty),
                  ("analytics", self.analytics.is_empty), ("files", self.files.is_empty))
        return all([await self.run(engine, check) for engine, check in checks])

    async def _import(self, job: Job, work: Path, keys_blob: bytes | bytearray) -> dict[str, int]:
        """Re-encrypt the extracted snapshot from the archive's keys into this mesh's keys."""
        table = msgpack.unpackb(keys_blob, raw=False, strict_map_key=False)
        sources: dict[str, KeySet] = {}
        try:
            for purpose in _STORE_PURPOSES:
                sources[purpose] = KeySet(purpose)
                for version, key in sorted(table[purpose].items()):
                    sources[purpose].add(int(version), bytearray(key))
            job.phase = "import"
            assert self.kv is not None and self.files is not None and self.analytics is not None
            counts: dict[str, int] = {}
            for name, engine, purpose in (("kv", self.kv, "rocksdb"), ("files", self.files, "files"),
                                          ("analytics", self.analytics, "duckdb")):
                # An empty store leaves no file in the archive, so its directory is not extracted.
                source = work / name
                counts[name] = await self.run(name, engine.import_from, source, sources[purpose],
                                              self.keys[purpose]) if source.exists() else 0
            counts["records"] = await self._import_records(work / "records.db", sources["sqlcipher"])
            return counts
        finally:
            for keyset in sources.values():
                keyset.wipe()

    async def _import_records(self, source: Path, source_keys: KeySet) -> int:
        """Re-key the extracted ``records.db`` to this mesh's key and put it in place of the empty one."""
        assert self.records is not None
        keys = self.keys["sqlcipher"]
        copy = await self.run("records", RecordStore.open, source, source_keys.key())
        try:
            await self.run("records", copy.rekey, keys.key())
            count: int = await self.run("records", copy.count)
        finally:
            await self.run("records", copy.close)
        # The live database is empty (checked before the restore began): replace it by the copy.
        await self.run("records", self.records.close)
        target = self.layout.records
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(source, target)
        self.records = await self.run("records", RecordStore.open, target, keys.key())
        self.records_version = keys.current
        return count

"""Re-encryption after keyvault rotates a storage key, in the background, resumable.

When keyvault rotates ``rocksdb``, ``files``, ``duckdb`` or ``sqlcipher`` it announces
``security.key_rotated``; storage fetches the new current version and new writes use it at once.
Then :class:`RotationMixin` moves what is still sealed under older versions, a small step at a
time on the engine's own worker thread, so requests keep being served between steps:

- RocksDB: :meth:`KvStore.reseal_step` re-seals a batch of entries in one synced write batch;
- files: :meth:`FileStore.rotate_step` re-encrypts one blob into a new file and renames it;
- DuckDB: :meth:`AnalyticsStore.rotate_step` copies one namespace's database into a new encrypted
  file and swaps it in atomically;
- SQLCipher: :meth:`RecordStore.rekey` (``PRAGMA rekey``) re-encrypts ``records.db`` in one go.

Each step is atomic on disk, so a crash mid-rotation loses nothing: at the next start storage
finds data still under an older version (the version is in every entry, file name or header; for
``records.db`` it is whichever key opens it), fetches that version, and carries on. When no data
is left under a version it is *retired*: its key is wiped from memory, never fetched again, and the
retirement is recorded in storage's state file. Progress is in ``storage.status`` (``meshctl status``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from shared import MeshError

from .context import StorageCore

log = structlog.get_logger("storage")

#: Which engine holds data under which purpose's key.
ENGINES: Final = {"rocksdb": "kv", "files": "files", "duckdb": "analytics"}


@dataclass
class Progress:
    """One purpose's rotation, as ``storage.status`` shows it."""

    purpose: str
    to_version: int
    from_versions: list[int]
    total: int
    done: int = 0
    state: str = "running"   # running | done | failed
    started: float = 0.0
    finished: float | None = None
    problem: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"purpose": self.purpose, "to_version": self.to_version, "from_versions": self.from_versions,
                "total": self.total, "done": self.done, "state": self.state, "started": self.started,
                "finished": self.finished, "problem": self.problem}


class RotationMixin(StorageCore):
    """Drives re-encryption from :meth:`after_unseal` (the keeper calls it while unsealed)."""

    _progress: dict[str, Progress] | None = None

    def rotation_status(self) -> dict[str, Any]:
        return {p: prog.to_wire() for p, prog in (self._progress or {}).items()}

    async def after_unseal(self) -> None:
        """Re-encrypt whatever is under an older key version, then retire those versions."""
        if self._progress is None:
            self._progress = {}
        for purpose in ("rocksdb", "files", "duckdb", "sqlcipher"):
            if self.state != "ok":
                return
            try:
                await self._rotate(purpose)
            except MeshError as exc:
                progress = self._progress.get(purpose)
                if progress is not None:
                    progress.state, progress.problem = "failed", exc.message
                log.error("rotation_failed", purpose=purpose, reason=exc.message)

    def _engine(self, purpose: str) -> Any:
        return {"kv": self.kv, "files": self.files, "analytics": self.analytics}[ENGINES[purpose]]

    async def _rotate(self, purpose: str) -> None:
        keys = self.keys[purpose]
        old = [v for v in keys.versions() if v != keys.current]
        if purpose == "sqlcipher":
            if self.records_version != keys.current:
                await self._rekey_records()
        elif old:
            engine, pool = self._engine(purpose), ENGINES[purpose]
            counts = {v: await self.run(pool, engine.count, v) for v in old}
            assert self._progress is not None
            progress = Progress(purpose, keys.current, old, sum(counts.values()), started=time.time())
            self._progress[purpose] = progress
            step = engine.reseal_step if purpose == "rocksdb" else engine.rotate_step
            for version in old:
                while self.state == "ok" and (moved := await self.run(pool, step, keys, version)) > 0:
                    progress.done += moved
                if self.state != "ok":
                    return
            progress.state, progress.finished = "done", time.time()
        await self._retire(purpose, old)

    async def _rekey_records(self) -> None:
        assert self.records is not None and self._progress is not None
        keys = self.keys["sqlcipher"]
        progress = Progress("sqlcipher", keys.current, [self.records_version], 1, started=time.time())
        self._progress["sqlcipher"] = progress
        await self.run("records", self.records.rekey, keys.key())
        self.records_version = keys.current
        progress.done, progress.state, progress.finished = 1, "done", time.time()

    async def _retire(self, purpose: str, versions: list[int]) -> None:
        keys = self.keys[purpose]
        if purpose == "sqlcipher":
            versions = [v for v in keys.versions() if v != keys.current]
        if not versions:
            return
        retired = self.stored.retired.setdefault(purpose, [])
        for version in versions:
            keys.retire(version)
            if version not in retired:
                retired.append(version)
        self.stored.save(self.layout.state)
        log.info("key_versions_retired", purpose=purpose, versions=versions)
        try:
            await self._append_audit([{"type": "storage.key_retired", "outcome": "ok", "target": purpose,
                                       "details": {"purpose": purpose, "versions": ",".join(map(str, versions))}}])
        except MeshError as exc:
            # The retirement already happened (nothing is sealed under those versions any more);
            # the missing record is reported here rather than undoing it.
            log.warning("retirement_not_audited", purpose=purpose, reason=exc.code)

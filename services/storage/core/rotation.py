"""Re-encryption after keyvault rotates a storage key, in the background, resumable.

When keyvault rotates ``rocksdb``, ``files``, ``duckdb`` or ``sqlcipher`` it announces
``security.key_rotated``; storage fetches the new current version and new writes use it at once.
Then :class:`Rotation` moves what is still sealed under older versions, a small step at a
time on the engine's own worker thread, so requests keep being served between steps:

- RocksDB: ``KvStore.reseal_step`` re-seals a batch of entries in one synced write batch;
- files: ``FileStore.rotate_step`` re-encrypts one blob into a new file and renames it;
- DuckDB: ``AnalyticsStore.rotate_step`` copies one namespace's database into a new encrypted
  file and swaps it in atomically;
- SQLCipher: ``RecordStore.rekey`` (``PRAGMA rekey``) re-encrypts ``records.db`` in one go.

The first three are :class:`~.engine.StepwiseEngine` objects (``count`` and ``rotate_step``); the
records engine is :class:`Rekeyable`: one database under one key version at a time.

Each step is atomic on disk, so a crash mid-rotation loses nothing: at the next start storage
finds data still under an older version (the version is in every entry, file name or header; for
``records.db`` it is whichever key opens it), fetches that version, and carries on. When no data
is left under a version it is *retired*: its key is wiped from memory, never fetched again, and the
retirement is recorded in storage's state file. Progress is in ``storage.status`` (``meshctl status``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from shared import MeshError

from .context import StorageCore
from .engine import StepwiseEngine
from .keys import KeySet

log = structlog.get_logger("storage")


class Rekeyable(Protocol):
    """An engine whose one database is under one key version, re-encrypted as a whole."""

    @property
    def purpose(self) -> str:
        """The keyvault purpose of its key."""

    @property
    def key_version(self) -> int:
        """The key version the database is encrypted with now."""

    @property
    def keys(self) -> KeySet:
        """The versions of its key held now."""

    async def rekey(self) -> None:
        """Re-encrypt the database under the current key version (durable on return)."""


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


class Rotation:
    """Drives re-encryption (the keeper calls :meth:`run` while unsealed): the ``stepwise`` engines
    one after another, then the ``rekeyed`` one."""

    def __init__(self, core: StorageCore, stepwise: Sequence[StepwiseEngine], rekeyed: Rekeyable) -> None:
        self.core = core
        self.stepwise = tuple(stepwise)
        self.rekeyed = rekeyed
        self._progress: dict[str, Progress] = {}

    def status(self) -> dict[str, Any]:
        """Each purpose's latest rotation, as ``storage.status`` shows it."""
        return {p: prog.to_wire() for p, prog in self._progress.items()}

    async def run(self) -> None:
        """Re-encrypt whatever is under an older key version, then retire those versions."""
        engines: tuple[StepwiseEngine | Rekeyable, ...] = (*self.stepwise, self.rekeyed)
        for engine in engines:
            if self.core.state != "ok":
                return
            try:
                if isinstance(engine, StepwiseEngine):
                    await self._rotate_stepwise(engine)
                else:
                    await self._rekey(engine)
            except MeshError as exc:
                progress = self._progress.get(engine.purpose)
                if progress is not None:
                    progress.state, progress.problem = "failed", exc.message
                log.error("rotation_failed", purpose=engine.purpose, reason=exc.message)

    async def _rotate_stepwise(self, engine: StepwiseEngine) -> None:
        keys = engine.keys
        old = [v for v in keys.versions() if v != keys.current]
        if old:
            counts = {v: await engine.count(v) for v in old}
            progress = Progress(engine.purpose, keys.current, old, sum(counts.values()), started=time.time())
            self._progress[engine.purpose] = progress
            for version in old:
                while self.core.state == "ok" and (moved := await engine.rotate_step(version)) > 0:
                    progress.done += moved
                if self.core.state != "ok":
                    return
            progress.state, progress.finished = "done", time.time()
        await self._retire(engine.purpose, old)
        if old:
            await engine.forget_retired()

    async def _rekey(self, engine: Rekeyable) -> None:
        keys = engine.keys
        if engine.key_version != keys.current:
            progress = Progress(engine.purpose, keys.current, [engine.key_version], 1, started=time.time())
            self._progress[engine.purpose] = progress
            await engine.rekey()
            progress.done, progress.state, progress.finished = 1, "done", time.time()
        # Every version but the one the database is under now and the current one: a rotation that
        # landed while the rekey ran made a newer version current, and the next run re-keys to it.
        in_use = {engine.key_version, keys.current}
        await self._retire(engine.purpose, [v for v in keys.versions() if v not in in_use])

    async def _retire(self, purpose: str, versions: list[int]) -> None:
        if not versions:
            return
        keys, stored = self.core.keys[purpose], self.core.stored
        retired = stored.retired.setdefault(purpose, [])
        for version in versions:
            keys.retire(version)
            if version not in retired:
                retired.append(version)
        stored.save(self.core.layout.state)
        log.info("key_versions_retired", purpose=purpose, versions=versions)
        try:
            await self.core.append_audit([{"type": "storage.key_retired", "outcome": "ok", "target": purpose,
                                           "details": {"purpose": purpose, "versions": ",".join(map(str, versions))}}])
        except MeshError as exc:
            # The retirement already happened (nothing is sealed under those versions any more);
            # the missing record is reported here rather than undoing it.
            log.warning("retirement_not_audited", purpose=purpose, reason=exc.code)

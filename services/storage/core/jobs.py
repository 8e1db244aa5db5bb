"""Long operations (backup, restore, verify of an archive) as jobs an operator can follow.

A job runs as an asyncio task; ``storage.jobs {job}`` shows its phase and progress, which
``meshctl backup ...`` polls to draw a progress line. Jobs live in memory: a restart forgets them,
and the half-made files of an interrupted job are removed from storage's work directory at start.
A job's error is the :class:`~shared.MeshError` message it failed with, never a traceback.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from shared import Conflict, MeshError, NotFound
from shared.crypto import wipe

log = structlog.get_logger("storage")

#: Finished jobs kept for ``storage.jobs`` (the oldest are forgotten first).
KEEP_FINISHED: Final = 32


@dataclass
class Job:
    """One operation's progress: ``state`` is running, done or failed."""

    id: str
    kind: str
    owner: str
    state: str = "running"
    phase: str = "starting"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def progress(self, phase: str) -> Callable[[int, int], None]:
        """A callback ``(done, total)`` for ``phase``, safe to call from a worker thread (it only
        assigns attributes, which the event loop reads)."""
        self.phase, self.done, self.total = phase, 0, 0

        def report(done: int, total: int) -> None:
            self.done, self.total = done, total
        return report

    def to_wire(self) -> dict[str, Any]:
        return {"job": self.id, "kind": self.kind, "state": self.state, "phase": self.phase, "done": self.done,
                "total": self.total, "started": self.started, "finished": self.finished, "result": self.result,
                "error": self.error}


class JobBoard:
    """Starts jobs (one at a time: backups and restores must not interleave) and keeps their state."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, kind: str, owner: str, work: Callable[[Job], Awaitable[dict[str, Any]]], *,
              secret: bytearray | None = None) -> Job:
        """Run ``work(job)`` in the background; ``CONFLICT`` while another job runs. ``secret`` is a
        passphrase ``work`` owns (it wipes it when it ends): when the job is refused it is wiped here."""
        try:
            return self._start(kind, owner, work)
        except BaseException:
            if secret is not None:
                wipe(secret)
            raise

    def _start(self, kind: str, owner: str, work: Callable[[Job], Awaitable[dict[str, Any]]]) -> Job:
        if any(job.state == "running" for job in self._jobs.values()):
            raise Conflict("another backup, verify or restore job is running; wait for it (storage.jobs)")
        job = Job(secrets.token_hex(8), kind, owner)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, work), name=f"storage-job-{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for old in finished[:-KEEP_FINISHED]:
            del self._jobs[old.id]
        return job

    async def _run(self, job: Job, work: Callable[[Job], Awaitable[dict[str, Any]]]) -> None:
        try:
            job.result = await work(job)
            job.state = "done"
        except MeshError as exc:
            job.state, job.error = "failed", exc.message
            log.warning("job_failed", job=job.id, kind=job.kind, reason=exc.message)
        except Exception as exc:
            job.state, job.error = "failed", f"internal error ({type(exc).__name__}); see storage's log"
            log.exception("job_crashed", job=job.id, kind=job.kind)
        finally:
            job.finished = time.time()

    def get(self, job_id: str, owner: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise NotFound("no such job")
        return job

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

"""The thread that makes the broker's audit spool durable, so that its routing loop never waits on
the disk.

The loop routes every message of the mesh and sends every heartbeat. It used to fsync the spool on
its own timer, and an fsync waits for the disk: a few milliseconds on a quiet one, seconds on a busy
one (a backup, a compaction, another program flushing gigabytes). For those seconds nothing was
routed and no heartbeat went out, and when the loop came back it found every peer silent for longer
than ``liveness_ms`` and dropped them all, while their heartbeats sat unread in its socket.

Now the loop takes the fsyncs off the spool as a :class:`shared.SyncJob` and hands it to
:class:`Flusher`, whose thread runs it. Jobs handed in while one runs are merged into one waiting
job (the newest covers the older ones), so a slow disk costs one fsync in flight and one queued,
never a backlog. A failed fsync is logged here and raised again in the loop by
:meth:`Flusher.raise_failure`: the broker stops, as it did when its own fsync failed, and the
supervisor restarts it. What must be durable before an answer (an operator's change, a device let
in) still waits, through :meth:`Flusher.drain`.
"""

from __future__ import annotations

import threading
import time
from typing import Final

import structlog

from shared import SyncJob

__all__ = ["SLOW_SYNC_S", "Flusher"]

log = structlog.get_logger("broker")

#: An fsync slower than this is logged (and counted in ``mesh.stats``): the disk is struggling.
SLOW_SYNC_S: Final = 1.0


class Flusher:
    """One thread running the spool's :class:`~shared.SyncJob` s, one at a time. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: SyncJob | None = None
        self._running = False
        self._closed = False
        self._failure: Exception | None = None
        #: fsyncs that took longer than :data:`SLOW_SYNC_S`, and the longest one (seconds).
        self.slow = 0
        self.longest_s = 0.0
        self._thread = threading.Thread(target=self._run, name="broker-fsync", daemon=True)
        self._thread.start()

    def submit(self, job: SyncJob) -> None:
        """Run ``job`` soon, merged with the one waiting if there is one; never blocks on the disk."""
        with self._cond:
            if self._closed:
                job.discard()
                raise RuntimeError("the spool flusher is closed")
            if self._waiting is not None:
                job.absorb(self._waiting)
            self._waiting = job
            self._cond.notify_all()

    def drain(self) -> None:
        """Return once every job submitted so far has run (however long the disk takes)."""
        with self._cond:
            while self._waiting is not None or self._running:
                self._cond.wait()

    def raise_failure(self) -> None:
        """Raise what a job failed with (``OSError`` from the disk), if one did, in the thread that
        owns the spool."""
        with self._cond:
            failure = self._failure
        if failure is not None:
            raise failure

    def close(self) -> None:
        """Run what is waiting, then stop the thread (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._closed:
                    self._cond.wait()
                job, self._waiting = self._waiting, None
                if job is None:  # closed, and nothing left to run
                    return
                self._running = True
            started = time.monotonic()
            try:
                job.run()
            except Exception as exc:  # noqa: BLE001 - any failure is the loop's to raise, and this thread must live on
                # The records it covered may not be durable: the loop stops the broker (module notes).
                # strerror, not str(exc): an OSError's str names the file, which is the home's path.
                log.error("audit_spool_sync_failed", error_type=type(exc).__name__,
                          reason=getattr(exc, "strerror", None))
                with self._cond:
                    self._failure = self._failure or exc
            finally:
                took = time.monotonic() - started
                with self._cond:
                    self._running = False
                    self.longest_s = max(self.longest_s, took)
                    if took > SLOW_SYNC_S:
                        self.slow += 1
                    self._cond.notify_all()
            if took > SLOW_SYNC_S:
                log.warning("audit_spool_sync_slow", seconds=round(took, 3),
                            hint="the disk under the mesh home is slow; routing goes on meanwhile")

"""A service's audit trail: a durable spool of its own, shipped to the audit service.

Services that decide on people's access (authn, authz) record every decision before they answer:
the record is fsynced into ``<home>/spool/<name>-audit.spool`` (a full spool refuses the operation:
fail closed), and an :class:`~shared.AuditShipper` delivers the spool to ``audit.append``, so nothing
is lost while audit is down. Records carry who (the peer identity the broker authenticated, and its
key fingerprint), the outcome and reason codes; callers never put a secret in them.

Two ways to record, both durable before they return:

* :meth:`AuditRecorder.record` fsyncs on the calling thread, the event loop: nothing else runs
  between the record and what the caller does next, which is what a handler that checks state,
  records and then changes it needs.
* :meth:`AuditRecorder.record_durably` appends at once and then waits while a worker thread
  fsyncs (group commit): the loop goes on serving, heartbeats included, and every record appended
  while one fsync runs is covered by the next, one fsync for all of them. For a hot path whose
  record is the last thing it does before answering (authz's audited decisions).

A failed fsync may have lost the records it was to cover, and a retried fsync can succeed without
writing them (the kernel reports a writeback error once), so the first failure is final: every
later record is refused with ``UNAVAILABLE`` and :attr:`AuditRecorder.readiness` reports the
service ``failed`` until it is restarted, which reloads the spool from what the disk holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from ._errors import Unavailable
from ._logging import get_logger
from ._service import FAILED, Readiness, RequestContext
from ._shipper import AuditShipper
from ._spool import Spool

log = get_logger("audit-recorder")

SHIP_PERIOD_S: Final = 1.0
SPOOL_MAX_RECORDS: Final = 1_000_000
#: At most this long between the shipper's ack and its fsync, when no record's fsync covers it first.
ACK_SYNC_S: Final = 1.0


def _no_step(step: str) -> None:
    """The default spool checkpoint: no test is watching."""


class _GroupSync:
    """The fsyncs of one spool for its owner on an event loop, run by a worker thread one at a
    time. Appends are counted (:meth:`appended`); :meth:`wait` for the count an append returned
    ends once a :class:`~shared.SyncJob` taken after that append has run. A waiter that arrives
    while a job runs is covered by the next job, which covers every waiter by then: one fsync in
    flight and one to come, however many wait. A failed job fails every waiter with its
    ``OSError`` and leaves the count where it was, and tells ``failed`` even when nobody waits any
    more: the owner must not trust the spool again."""

    def __init__(self, spool: Spool, name: str, failed: Callable[[OSError], object]) -> None:
        self._spool = spool
        self._name = name
        # A thread of its own: an fsync never queues behind other blocking work of the service
        # (a password hash, a policy load) in the loop's default executor.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-audit-fsync")
        self._failed = failed
        self._appended = 0
        self._durable = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wanted = False  # a job is due that nobody waits for (an ack to make durable)
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False  # failed or closed: no job is armed again
        self._task: asyncio.Task[None] | None = None

    def appended(self) -> int:
        """Count one append; its number, for :meth:`wait`."""
        self._appended += 1
        return self._appended

    def synced(self) -> None:
        """The owner fsynced the spool itself: everything appended so far is durable."""
        self._durable = self._appended
        self._release()

    async def wait(self, number: int) -> None:
        if self._durable >= number:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((number, future))
        self._start()
        await future

    def soon(self) -> None:
        """Fsync the spool within :data:`ACK_SYNC_S`, with nobody waiting (the shipper wrote an
        ack). A job run for a record before then covers it: an ack never makes a record wait for
        an fsync of its own, and a lost ack only delivers its records again."""
        self._wanted = True
        if self._task is None:
            self._arm()

    def _arm(self) -> None:
        if self._timer is None and not self._ended:
            self._timer = asyncio.get_running_loop().call_later(ACK_SYNC_S, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._wanted and self._task is None:  # a running task arms the timer again as it ends
            self._task = asyncio.create_task(self._run(force=True), name=f"{self._name}-audit-fsync")

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-audit-fsync")

    async def _run(self, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters or force:
                force = self._wanted = False
                target = self._appended
                # None: nothing is left unsynced, the owner's own fsync (``record``) covered these appends.
                job = self._spool.sync_job()
                if job is not None:
                    await loop.run_in_executor(self._thread, job.run)
                self._durable = max(self._durable, target)
                self._release()
        except OSError as exc:
            self._ended = True
            self._failed(exc)
            waiters, self._waiters = self._waiters, []
            for _, future in waiters:
                if not future.done():
                    future.set_exception(exc)
        finally:
            self._task = None
            if self._wanted:
                self._arm()

    def _release(self) -> None:
        kept = []
        for number, future in self._waiters:
            if number <= self._durable:
                if not future.done():  # a waiter cancelled by its caller's deadline is simply dropped
                    future.set_result(None)
            else:
                kept.append((number, future))
        self._waiters = kept

    async def close(self) -> None:
        """Until no job is running, and none is due (the spool's close fsyncs what is left)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ended = True
        while (task := self._task) is not None:
            await asyncio.wait([task])
        self._thread.shutdown(wait=False)


class AuditRecorder:
    """Open with :meth:`open` (the mesh client, once connected), :meth:`record` or
    :meth:`record_durably`, :meth:`close`. ``name`` is the service's (it names the shipper task and
    the refusal messages). ``checkpoint`` is the spool's (tests stall or fail its ``"fsync"`` step)."""

    def __init__(self, name: str, path: Path, max_records: int = SPOOL_MAX_RECORDS, *,
                 checkpoint: Callable[[str], None] = _no_step) -> None:
        self.name = name
        self.path = path
        self.max_records = max_records
        self.checkpoint = checkpoint
        self.spool: Spool | None = None
        self.shipper: AuditShipper | None = None
        self._sync: _GroupSync | None = None
        self._failure: str | None = None

    def open(self, mesh: Any) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool = Spool(self.path, self.max_records, checkpoint=self.checkpoint)
        self._sync = _GroupSync(self.spool, self.name, self._failed)
        if mesh is not None:  # None only when handlers are called directly (tests)
            self.shipper = AuditShipper(self.spool, mesh, name=f"{self.name}-audit-shipper", period=SHIP_PERIOD_S,
                                        acked=self._sync.soon)
            self.shipper.start()

    async def close(self) -> None:
        # The shipper reads from the spool until it stops: it goes first. A running fsync job
        # finishes before the spool closes, so its waiters hear how it ended.
        if self.shipper is not None:
            await self.shipper.stop()
            self.shipper = None
        if self._sync is not None:
            await self._sync.close()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    @property
    def readiness(self) -> Readiness | None:
        """``failed`` once an fsync of the spool failed (module notes); None while it records."""
        if self._failure is None:
            return None
        return Readiness(FAILED, f"its audit spool could not be made durable ({self._failure}); "
                                 f"restart {self.name} (the disk may be failing)")

    def record(self, event: str, ctx: RequestContext | None, outcome: str, *, target: str | None = None,
               on_behalf_of: str | None = None, **details: Any) -> None:
        """Append one record and fsync it before returning, on this thread (module notes);
        :class:`Unavailable` when the spool is full, closed or failed (the operation is then
        refused). ``ctx`` None: the service acting on its own."""
        spool, sync = self._append(event, ctx, outcome, target, on_behalf_of, details)
        try:
            spool.sync()
        except OSError as exc:
            raise self._failed(exc) from None
        sync.synced()
        self._shipped()

    async def record_durably(self, event: str, ctx: RequestContext | None, outcome: str, *,
                             target: str | None = None, on_behalf_of: str | None = None, **details: Any) -> None:
        """:meth:`record`, with the fsync on a worker thread and shared with every record appended
        meanwhile (module notes): the record is appended before the first suspension, durable when
        this returns. Other handlers run while it waits: use it only where nothing the caller
        checked before the record can change in the meantime and matter after it, or where the
        caller checks again once it returns (authz's ``check`` decides again)."""
        _, sync = self._append(event, ctx, outcome, target, on_behalf_of, details)
        number = sync.appended()
        try:
            await sync.wait(number)
        except OSError as exc:
            raise self._failed(exc) from None
        self._shipped()

    def _append(self, event: str, ctx: RequestContext | None, outcome: str, target: str | None,
                on_behalf_of: str | None, details: dict[str, Any]) -> tuple[Spool, _GroupSync]:
        if self._failure is not None:
            raise Unavailable(f"{self.name} cannot make its audit records durable; restart {self.name}")
        spool, sync = self.spool, self._sync
        if spool is None or sync is None:
            raise Unavailable(f"{self.name} cannot record to its audit spool now; try again shortly")
        record: dict[str, Any] = {"type": event, "time": time.time(), "outcome": outcome,
                                  **{k: v for k, v in details.items() if v is not None}}
        if ctx is not None:
            # The peer as the broker authenticated it: its name and the fingerprint of its key.
            record.update(actor=ctx.caller, source=ctx.caller, source_role=ctx.role,
                          source_fp=ctx.fingerprint[:16] or None)
        if target is not None:
            record["target"] = target
        if on_behalf_of is not None:
            record["on_behalf_of"] = on_behalf_of
        if not spool.append(record):
            raise Unavailable(f"the {self.name} audit spool is full; refusing until audit catches up")
        return spool, sync

    def _failed(self, exc: OSError) -> Unavailable:
        """Remember the first failed fsync for good (module notes) and log it once: the error's
        type and text, never the path."""
        if self._failure is None:
            self._failure = f"{type(exc).__name__}: {exc.strerror or 'fsync failed'}"
            log.error("audit_spool_sync_failed", service=self.name, error_type=type(exc).__name__,
                      reason=exc.strerror)
        return Unavailable(f"{self.name} cannot make its audit records durable; restart {self.name}")

    def _shipped(self) -> None:
        if self.shipper is not None:
            self.shipper.notify()

"""The audit service's write path: group commit, checkpoints and the trusted checkpoint copy.

:class:`WriterMixin` is mixed into :class:`~.service.Audit`, which owns and initialises the state
declared here. Contract:

- :meth:`WriterMixin._enqueue` queues records; requests that arrive while a commit is running are
  written together in the next transaction, and each future resolves (to ``(first_seq, last_seq)``)
  only once its transaction is on disk. If the transaction fails nothing of the batch was written,
  the in-memory head rolls back, and every future fails with ``UNAVAILABLE``; while the service is
  not ``ok`` every future fails with :meth:`WriterMixin._refusal`.
- A checkpoint is signed in the commit's own transaction once :data:`CHECKPOINT_EVERY_RECORDS`
  records arrived since the last one, and on demand by :meth:`WriterMixin._checkpoint` (the keeper
  every :data:`CHECKPOINT_EVERY_S` seconds, before an export, at a clean stop).
- ``_write_lock`` serialises transactions and guards ``head`` and ``latest``.
- The trusted copy in the secret slot moves only forward, and only after a newer checkpoint is
  durable in the database; failing to update it is logged, never raised (a lagging copy is safe).
- Every committed batch is shown to the alert desk, which may queue alert records through
  :meth:`WriterMixin._enqueue` in turn.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import structlog

from shared import MeshError, Sealed, Unavailable
from shared.keystore import Keystore

from .alert_desk import AlertDesk
from .chain import Checkpoint, LogHead, Record
from .proofs import encode_checkpoint
from .store import AuditStore, StoreError
from .witness_tree import WitnessTree

log = structlog.get_logger("audit")  # one logger name for the whole service, as before the split

CHECKPOINT_EVERY_RECORDS: Final = 100   #: sign a checkpoint at least every N records
CHECKPOINT_EVERY_S: Final = 10.0        #: ... and every T seconds when records arrived since

#: One queued append: its records and the future answered once they are durable.
Pending = tuple[list[Record], "asyncio.Future[tuple[int, int]]"]


class WriterMixin:
    """Group-committed appends and checkpoints over the service's open :class:`AuditStore`."""

    # Owned and initialised by the service (Audit.__init__); declared here so this code type-checks.
    state: str                          # sealed | ok | tampered | failed
    problem: str | None
    store: AuditStore | None
    head: LogHead | None
    latest: Checkpoint | None           # the latest checkpoint durable in the database
    slot: Keystore | None               # where the trusted latest checkpoint is kept
    witness_tree: WitnessTree | None    # the verified log's tree, for audit.checkpoint's proofs
    alerts: AlertDesk
    _sign_key: bytearray | None
    _pending: list[Pending]
    _committer: asyncio.Task[None] | None
    _write_lock: asyncio.Lock
    #: Why the last commit failed, until one succeeds: audit cannot record meanwhile (health says so).
    write_failure: str | None = None

    def _refusal(self) -> MeshError:
        if self.state == "sealed":
            return Sealed("audit is sealed: the mesh is locked or keyvault is not reachable")
        return Unavailable(f"audit refuses to append: the stored log is {self.state} ({self.problem}); "
                           "an operator must investigate (audit.verify)")

    def _enqueue(self, records: list[Record]) -> asyncio.Future[tuple[int, int]]:
        """Queue records for the next group commit; the future resolves once they are durable."""
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="audit-commit")
        return future

    async def _commit_pending(self) -> None:
        async with self._write_lock:
            # Whatever queued up while a transaction ran goes into the next one: that is the grouping.
            while self._pending:
                batch, self._pending = self._pending, []
                await self._commit(batch)

    async def _commit(self, batch: list[Pending]) -> None:
        """One transaction for every request in ``batch``; each future resolves after the commit."""
        if self.state != "ok" or self.head is None or self.store is None or self._sign_key is None:
            for _, future in batch:
                if not future.done():
                    future.set_exception(self._refusal())
            return
        backup, entries, ranges = self.head.copy(), [], []
        for records, future in batch:
            first = self.head.size
            for r in records:
                entries.append(self.head.append(time=r.time, actor=r.actor, event=r.event, outcome=r.outcome,
                                                on_behalf_of=r.on_behalf_of, target=r.target, details=r.details))
            ranges.append((future, first, self.head.size - 1))
        checkpoint = None
        if self.head.size - (self.latest.tree_size if self.latest else 0) >= CHECKPOINT_EVERY_RECORDS:
            checkpoint = self.head.checkpoint(self._sign_key, self._now_for_checkpoint())
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.append, entries, checkpoint)
        except StoreError as exc:
            self.head = backup  # nothing of the batch was written: the log continues from before it
            self.write_failure = exc.message
            log.error("append_failed", reason=exc.message, records=len(entries))
            for future, _, _ in ranges:
                if not future.done():
                    future.set_exception(Unavailable("the audit log could not be written; nothing was recorded"))
            return
        self.write_failure = None
        for future, first, last in ranges:
            if not future.done():
                future.set_result((first, last))
        self.alerts.after_commit([entry.record for entry in entries])  # may queue alert records
        if checkpoint is not None:
            self.latest = checkpoint
            await self._save_trusted(checkpoint)

    async def _checkpoint(self) -> None:
        async with self._write_lock:
            await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> None:
        """Sign and store a checkpoint of the head if records arrived since the last; caller holds the lock."""
        if self.state != "ok" or self.head is None or self.store is None or self._sign_key is None:
            return
        if self.head.size == (self.latest.tree_size if self.latest else 0):
            return
        checkpoint = self.head.checkpoint(self._sign_key, self._now_for_checkpoint())
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.store.append, [], checkpoint)
        except StoreError as exc:
            log.error("checkpoint_failed", reason=exc.message)
            return
        self.latest = checkpoint
        await self._save_trusted(checkpoint)

    def _now_for_checkpoint(self) -> float:
        # Verification refuses checkpoint times that go backwards; the wall clock may.
        return max(time.time(), self.latest.time if self.latest else 0.0)

    async def _save_trusted(self, checkpoint: Checkpoint) -> None:
        assert self.slot is not None
        try:
            blob = bytearray(encode_checkpoint(checkpoint))
            await asyncio.get_running_loop().run_in_executor(None, self.slot.put, blob)
        except Exception as exc:  # noqa: BLE001 - a lagging trusted copy is safe; say so loudly.
            log.error("trusted_checkpoint_not_saved", error_type=type(exc).__name__, tree_size=checkpoint.tree_size)

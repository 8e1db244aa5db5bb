"""What the audit service verifies of its log: at start, in the background, and what a failure does.

:class:`VettingMixin` is mixed into :class:`~.service.Audit` (through :class:`~.seal.SealMixin`,
whose unsealing calls :meth:`VettingMixin._verify_start` and then
:meth:`VettingMixin._start_background`). Contract (docs/security.md, "What a start checks"):

- A start verifies the records after the saved verified anchor and their consistency with the
  trusted checkpoint (:func:`.anchor.resume`); without a usable anchor, or when the last whole
  verification failed and none passed since (an ``audit.verify_failed`` record after the anchor,
  or a value in :attr:`VettingMixin.failure_slot`, off the home), it verifies the whole log in one
  streamed pass (:meth:`VettingMixin._verify`) that also rebuilds the open alerts, pages first in
  the second case, and a pass that succeeds clears the slot.
- Then the whole log is verified in the background (:func:`.scan.verify_report`, on its own
  connection, against the trusted checkpoint the start used). A failure there or on
  ``audit.verify`` (:meth:`VettingMixin._verification_failed`) refuses appends from then on
  (``tampered``, or ``failed`` for a damaged database), sets the slot, and writes
  ``audit.verify_failed`` and the ``verify_failed`` alert as the log's last records, with a
  checkpoint of them that the trusted copy moves to (so they cannot be cut off unnoticed),
  published on ``alerts.verify_failed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from shared import MeshConfig, MeshError, MeshHome
from shared.keystore import Keystore

from .alerts import ALERT_ACTOR, VERIFY_FAILED_EVENT, Alert
from .anchor import AnchorUnusable, Resumed, StartReport, resume
from .chain import Checkpoint, LogHead
from .sanitize import sanitize_details
from .scan import Cancelled, PinnedSlot, scan, verify_report
from .store import AuditStore, StoreError, db_path
from .witness_tree import WitnessTree
from .writer import WriterMixin

log = structlog.get_logger("audit")  # one logger name for the whole service, as before the split

MIB = 1 << 20


class VettingMixin(WriterMixin):
    """The start's verification, the background pass, and what a failed whole verification does."""

    # Owned and initialised by the service (Audit.__init__, Service.__init__ for ``mesh``).
    home: MeshHome
    config: MeshConfig
    public_key: bytes | None
    _db_key: bytearray | None
    _hash_key: bytearray | None
    _publish: Callable[[str, Any], Awaitable[None]]
    #: What the last start verified (records read, from which sequence number), for health and tests.
    start_report: StartReport | None = None
    #: The background pass of the whole log after the last start: ``{state: running|ok|failed, ...}``.
    background: dict[str, Any] | None = None
    _background_cancel: threading.Event | None = None
    _background_task: asyncio.Task[None] | None = None
    _start_trusted: Checkpoint | None = None  #: the trusted checkpoint the last start verified against
    #: Where a failed whole verification is remembered off the home, beside the trusted checkpoint
    #: (chosen at unseal): holds a value from the failure until a start's whole verification passes.
    failure_slot: Keystore | None = None

    def _verify_start(self, store: AuditStore) -> tuple[LogHead, Checkpoint | None, Checkpoint | None, WitnessTree,
                                                         StartReport]:
        """The start's verification (blocking): the records after the saved anchor and their consistency
        with the trusted checkpoint (:func:`.anchor.resume`), or the whole log when there is no usable
        anchor (:meth:`_verify`). Raises :class:`TamperError` / :class:`StoreError` as :meth:`_verify`."""
        assert self.public_key is not None and self.slot is not None
        # A byte changed on disk in the old part is found here when the file is small enough to read
        # within the start's budget; a larger file has its pages checked first by the background pass.
        limit = self.config.audit.start_page_check_mib * MIB
        pages = limit > 0 and store.file_bytes() <= limit
        if pages:
            store.check_pages()  # DamagedError (a StoreError) names the pages: the start fails
        resumed: Resumed | None = None
        try:
            resumed = resume(store, self.public_key, self.slot, self.alerts.engine.rules)
        except AnchorUnusable as exc:
            if str(exc) != "no saved anchor":
                log.warning("anchor_unusable", reason=str(exc), hint="verifying the whole log at start instead")
        failed_at = resumed.failed_at if resumed is not None else None
        remembered = self.failure_slot is not None and self.failure_slot.get() is not None
        if failed_at is not None or remembered:
            # The log (or, when the database could not take the record, the slot off the home) says
            # its last whole verification failed (the background pass, audit.verify) and none passed
            # since: the old part the anchor vouches for is what failed, so it is verified again
            # before audit is ready, pages first as the background pass does. Otherwise every
            # restart would be ready, and keyvault release keys, until the pass found it again.
            log.warning("verifying_whole_log_at_start", failed_at=failed_at, remembered=remembered,
                        reason="the last whole verification failed")
            if not pages:
                store.check_pages()
            return self._verify_whole_at_start(store, True, clear=remembered)
        if resumed is None:
            return self._verify_whole_at_start(store, pages, clear=False)
        reopened = self.alerts.engine.adopt(resumed.replay)
        if reopened:
            log.warning("alerts_reopened", open=reopened)
        report = dataclasses.replace(resumed.report, pages_checked=pages)
        return resumed.head, resumed.latest, resumed.trusted, resumed.tree, report

    def _verify_whole_at_start(self, store: AuditStore, pages: bool, *, clear: bool) -> tuple[
            LogHead, Checkpoint | None, Checkpoint | None, WitnessTree, StartReport]:
        """The whole log verified at start; then, with ``clear``, :attr:`failure_slot` emptied."""
        tree = WitnessTree()
        head, latest, trusted = self._verify(store, tree)
        if clear and self.failure_slot is not None:
            # A whole verification passed: the failure is no longer current. Failing to clear the
            # slot only makes the next start verify the whole log again.
            try:
                self.failure_slot.delete()
            except Exception as exc:  # noqa: BLE001 - keyring backends raise their own errors
                log.error("verify_failure_not_cleared", error_type=type(exc).__name__)
            else:
                log.warning("verify_failure_cleared", size=head.size)
        return head, latest, trusted, tree, StartReport(0, head.size, head.size, True, pages)

    def _start_background(self) -> None:
        """Verify the whole log in the background (:func:`.scan.verify_report`, its own connection),
        now that the service is ready; a failure stops appends and raises an alert."""
        if self._background_cancel is not None:
            self._background_cancel.set()
        cancel = self._background_cancel = threading.Event()
        self.background = {"state": "running"}
        self._background_task = asyncio.create_task(self._background_verify(cancel), name="audit-background-verify")

    async def _background_verify(self, cancel: threading.Event) -> None:
        assert self._db_key is not None and self.public_key is not None and self.slot is not None
        # Against the trusted checkpoint this start verified (see PinnedSlot), not the live slot.
        args = (db_path(self.home), bytes(self._db_key), self.public_key, PinnedSlot(self._start_trusted), cancel)
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, verify_report, *args)
        except Cancelled:
            return
        except StoreError as exc:
            result = {"ok": False, "size": None, "first_bad": None, "error": exc.message, "damaged": {"error": True}}
        if cancel.is_set() or cancel is not self._background_cancel:
            return
        self.background = {"state": "ok" if result["ok"] else "failed", "size": result.get("size"),
                           "first_bad": result.get("first_bad")}
        if result["ok"]:
            log.info("audit_verified_in_background", size=result["size"])
            return
        await self._verification_failed(result, "background")

    async def _verification_failed(self, result: dict[str, Any], source: str) -> None:
        """A whole-log verification failed (the background pass, ``audit.verify``): refuse appends
        from now on (``tampered``, or ``failed`` when the database is damaged), and record why with its
        ``verify_failed`` alert, the last records audit writes, published on ``alerts.verify_failed``.

        Shielded from cancellation: a stop that cancels the caller (the background task, a handler)
        waits for the write lock this holds, so a failure found just before a stop is still
        remembered and recorded before the database closes, never cut off halfway."""
        await asyncio.shield(self._fail_and_record(result, source))

    async def _fail_and_record(self, result: dict[str, Any], source: str) -> None:
        fired: list[Alert] = []
        async with self._write_lock:
            if self.state != "ok":
                return
            damaged = bool(result.get("damaged"))
            self.state, self.problem = ("failed" if damaged else "tampered"), str(result["error"])
            if damaged:
                log.error("audit_db_unusable", reason=self.problem, found_by=source)
            else:
                log.error("audit_log_tampered", first_bad=result.get("first_bad"), reason=self.problem, found_by=source)
            await self._remember_failure(source)
            fired = await self._record_failure_locked(result, source, damaged)
        for alert in fired:
            try:
                await self._publish(f"alerts.{alert.rule}", alert.to_wire())
            except MeshError as exc:
                log.warning("alert_not_published", id=alert.id, rule=alert.rule, reason=exc.code)

    async def _remember_failure(self, source: str) -> None:
        """Mark the failure in :attr:`failure_slot` before the database is asked to record it: a
        database too damaged to take the record must not let the next start trust the anchor. The
        value says nothing secret (where the failure was found); what counts is that it is there."""
        if self.failure_slot is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, self.failure_slot.put, bytearray(f"found by {source} at {time.time():.0f}".encode()))
        except Exception as exc:  # noqa: BLE001 - the record in the log is the other copy; say so loudly
            log.error("verify_failure_not_remembered", error_type=type(exc).__name__)

    async def _record_failure_locked(self, result: dict[str, Any], source: str, damaged: bool) -> list[Alert]:
        # Written past the refusal (the state is no longer ok): only these records, in one transaction,
        # with a checkpoint of them that the trusted copy then moves to. The checkpoint's root is the
        # head's, built from what audit verified and wrote, not from the damaged records. Without it
        # the failure records would be the unsigned end of the log, which can be cut off unnoticed,
        # and the next start would trust the anchor again (docs/security.md, step 6).
        if self.head is None or self.store is None or self._hash_key is None or self._sign_key is None:
            return []
        raw: dict[str, Any] = {"source": source, "problem": str(result["error"])[:512], "damaged": damaged}
        for name in ("first_bad", "size"):
            if isinstance(result.get(name), int):
                raw[name] = result[name]
        now = time.time()
        details = sanitize_details(raw, self._hash_key, VERIFY_FAILED_EVENT)
        backup = self.head.copy()
        entries = [self.head.append(time=now, actor=ALERT_ACTOR, event=VERIFY_FAILED_EVENT, outcome="failure",
                                    target="audit.db", details=details)]
        try:
            fired = self.alerts.engine.observe([entries[0].record])
        except Exception as exc:  # noqa: BLE001 - the failure record is written regardless
            log.error("alert_rules_failed", error_type=type(exc).__name__)
            fired = []
        for alert in fired:
            r = alert.record(now)
            entries.append(self.head.append(time=r.time, actor=r.actor, event=r.event, outcome=r.outcome,
                                            target=r.target, details=r.details))
        checkpoint = self.head.checkpoint(self._sign_key, self._now_for_checkpoint())
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.append, entries, checkpoint)
        except StoreError as exc:
            self.head = backup
            for alert in fired:
                self.alerts.engine.discard(alert)
            log.error("verify_failure_not_recorded", reason=exc.message)
            return []
        self.latest = checkpoint
        await self._save_trusted(checkpoint)
        self.alerts.engine.replay.feed([entry.record for entry in entries])
        for alert, entry in zip(fired, entries[1:], strict=True):
            self.alerts.engine.opened(alert, entry.record.seq)
            log.warning("alert", id=alert.id, rule=alert.rule, count=alert.count, threshold=alert.threshold)
        return fired

    def _verify(self, store: AuditStore,
                tree: WitnessTree | None = None) -> tuple[LogHead, Checkpoint | None, Checkpoint | None]:
        """Verify the whole log in one streamed read that also rebuilds the open alerts and, when
        ``tree`` is given, feeds it every verified leaf (the witness tree audit.checkpoint proves from).

        Only a verified log is evidence: the open alerts come back from it (a restart forgets
        nothing). The rebuild reads the verification stream itself, so the log is read once and
        never held; it replaces the open alerts only after its loop, and the stream raises before
        ending when anything is wrong, so a log that fails verification rebuilds nothing."""
        assert self.public_key is not None and self.slot is not None
        with scan(store, self.public_key, self.slot) as verified:
            if tree is not None:
                verified.feed(tree.append)
            try:
                reopened = self.alerts.engine.rebuild(verified.records())
            except Exception as exc:
                if verified.failed:  # the log (or reading it) failed, not the rebuild
                    raise
                # The log may well be fine: losing the open alerts must not seal audit.
                log.error("alerts_not_rebuilt", error_type=type(exc).__name__)
            else:
                if reopened:
                    log.warning("alerts_reopened", open=reopened)
            head = verified.finish()  # whatever a failed rebuild left unread is verified all the same
            return head, verified.latest, verified.trusted

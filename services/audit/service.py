"""The audit service: the tamper-evident audit log (DESIGN.md invariants 7 and 9).

Keys come from keyvault over the mesh (``audit-hmac``: the database key and the details-hash key
are derived from it; ``audit-signing``: the 32-byte Ed25519 checkpoint key); they live in
bytearrays here only and are wiped on ``security.sealed`` and at stop. Until both keys are
fetched the service is *sealed*: every append answers ``SEALED`` and it retries with a growing
delay, and at once on ``security.unsealed`` (when the ACL lets it subscribe to ``security.``).

At start (once keys are there) the whole log is verified against the trusted latest checkpoint,
kept outside the log in a secret slot (platform keyring, or a 0600 file). If that fails the
service is *tampered*: it logs the first bad record and refuses appends; it never rewrites the
trusted copy to make a bad log pass. The trusted copy only moves forward, after a newer checkpoint
is durable in the database.

Appends are group-committed: requests that arrive while a commit is running are written together
in the next transaction, and each is answered only after its transaction is on disk. A checkpoint
is signed every :data:`CHECKPOINT_EVERY_RECORDS` records (in the same transaction), every
:data:`CHECKPOINT_EVERY_S` seconds when records arrived since the last, before an export, and at
a clean stop. These are module constants; ``[audit]`` in mesh.toml configures the alerts only.

Anomaly alerts (:mod:`.alerts`) are evaluated on every committed batch; an alert is appended as a
record through the same commit path and published on ``alerts.<rule>``. Process crashes reported
by supervisord arrive as ``process.crash`` records appended by the ``supervisor-events`` listener
(from its own audit spool, so none is lost while audit is down); the ``crash_loop`` rule watches
them. Only that listener may append ``process.*`` records.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog

from shared import (
    BadRequest,
    Forbidden,
    MeshConfig,
    MeshError,
    MeshHome,
    NoFields,
    RequestContext,
    Sealed,
    Service,
    Timeout,
    Unavailable,
    config_path,
    handler,
    load_config,
    message,
)
from shared._crypto import derive_subkey, wipe
from shared._keystore import Keystore, choose_keystore

from .alerts import SUPERVISOR_SENDER, AlertDesk
from .chain import Checkpoint, LogHead, Record, encode_record, public_key_of
from .errors import TamperError
from .proofs import encode_checkpoint, export_bundle
from .sanitize import sanitize_details
from .schema import MAX_TAIL, AckRequest, AppendRequest, TailRequest, record_to_wire
from .store import AuditStore, StoreError, db_path, verify_report, verify_store

log = structlog.get_logger("audit")

CHECKPOINT_EVERY_RECORDS: Final = 100   #: sign a checkpoint at least every N records
CHECKPOINT_EVERY_S: Final = 10.0        #: ... and every T seconds when records arrived since
KEY_RETRY_MIN_S: Final = 1.0            #: first retry of the key fetch while sealed
KEY_RETRY_MAX_S: Final = 60.0           #: keyvault rate-limits and audits each fetch: back off
KEY_CALL_TIMEOUT_S: Final = 5.0
ALERT_PREFIX: Final = "alert."         #: events only audit writes (alerts and their acknowledgements)
PROCESS_PREFIX: Final = "process."     #: events only the supervisor-events listener appends
_EXPORT_MARGIN: Final = 4096            #: envelope and reply framing around an exported bundle
EXPORT_PAGE_RECORDS: Final = 2000       #: records per ``audit.export`` page unless the caller asks fewer
MAX_EXPORT_PAGE_RECORDS: Final = 10_000


@message
class ExportRequest:
    """``audit.export {from_seq?, limit?, tree_size?}``: ``tree_size`` pins the checkpoint a
    multi-page export is proven against (the one the first page named)."""

    from_seq: int = 0
    limit: int = EXPORT_PAGE_RECORDS
    tree_size: int | None = None


def export_page(path: Path, key: bytes | bytearray, public_key: bytes, slot: Keystore, from_seq: int, limit: int,
                tree_size: int | None, max_bytes: int) -> tuple[bytes, Checkpoint, int]:
    """A verified bundle of records ``[from_seq, from_seq + n)``, ``n <= limit`` shrunk until the
    bundle fits in ``max_bytes``, proven against the latest checkpoint (or the one of ``tree_size``).
    Returns the bundle, its checkpoint and ``n``. Raises :class:`TamperError` if the log does not
    verify, :class:`BadRequest` for a range or checkpoint that is not there."""
    with AuditStore.open(path, key) as store:
        _, latest, _, entries = verify_store(store, public_key, slot)
        checkpoint = latest
        if tree_size is not None and (latest is None or latest.tree_size != tree_size):
            # verify_store checked every stored checkpoint; pick the pinned one among them.
            checkpoint = next((c for c in store.load()[1] if c.tree_size == tree_size), None)
            if checkpoint is None:
                raise BadRequest(f"the log has no checkpoint at tree size {tree_size}")
    if checkpoint is None:
        raise BadRequest("the log has no checkpoint yet: nothing to export")
    size = checkpoint.tree_size
    if not 0 <= from_seq < size:
        raise BadRequest(f"from_seq must be 0 to {size - 1}: the checkpoint covers {size} records")
    records = [e.record for e in entries]
    count = min(limit, size - from_seq)
    while True:
        bundle = export_bundle(records, checkpoint, only=range(from_seq, from_seq + count))
        if len(bundle) <= max_bytes:
            return bundle, checkpoint, count
        if count == 1:
            raise BadRequest(f"record {from_seq} alone makes a bundle of {len(bundle)} bytes, over the "
                             f"{max_bytes} bytes broker.max_message_bytes allows")
        count = max(1, min(count - 1, count * max_bytes // len(bundle) * 9 // 10))  # strictly fewer each time

Pending = tuple[list[Record], "asyncio.Future[tuple[int, int]]"]


class Audit(Service):
    """Mesh name ``audit``; handlers: ``append``, ``tail``, ``verify``, ``export``, ``public_key``,
    ``alerts``, ``alerts.ack``, ``health``. ``clock`` measures the alert windows (tests inject one)."""

    name = "audit"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or load_config(config_path(self.home.root))
        self.state = "sealed"            # sealed | ok | tampered | failed
        self.problem: str | None = None  # why, when not ok; never holds record contents
        self.store: AuditStore | None = None
        self.head: LogHead | None = None
        self.latest: Checkpoint | None = None   # the latest checkpoint durable in the database
        self.slot: Keystore | None = None        # where the trusted latest checkpoint is kept
        self.public_key: bytes | None = None
        self._db_key: bytearray | None = None
        self._sign_key: bytearray | None = None
        self._hash_key: bytearray | None = None
        self._pending: list[Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()       # one transaction at a time; also guards head and latest
        self._unseal_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.alerts = AlertDesk(self.config.audit, self._enqueue, self._publish, clock)

    # -- lifecycle ----------------------------------------------------------------------

    async def on_start(self) -> None:
        """Try to unseal once, then keep retrying and checkpointing in the background."""
        try:
            subscription = await self.mesh.subscribe("security.", timeout=KEY_CALL_TIMEOUT_S)
            self._tasks.append(asyncio.create_task(self._watch(subscription), name="audit-watch"))
        except MeshError as exc:
            # Without the ACL grant we still unseal, just on the retry timer instead of at once.
            log.warning("no_security_events", reason=exc.code, hint="grant subscribe 'security.' to audit")
        await self._try_unseal()
        self._tasks.append(asyncio.create_task(self._keeper(), name="audit-keeper"))

    async def on_stop(self) -> None:
        """Finish pending commits, write a final checkpoint, close the database, wipe the keys."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        await self.alerts.close()
        await self._seal("stopping")

    async def _keeper(self) -> None:
        delay = KEY_RETRY_MIN_S
        while True:
            self._wake.clear()  # before the attempt, so a wake-up during it is not lost
            if self.state == "sealed" and not await self._try_unseal():
                timeout, delay = delay, min(delay * 2, KEY_RETRY_MAX_S)
            else:
                timeout, delay = CHECKPOINT_EVERY_S, KEY_RETRY_MIN_S
                await self._checkpoint()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _watch(self, subscription: Any) -> None:
        while True:
            try:
                event = await subscription.next(timeout=3600)
            except Timeout:
                continue
            if event.sender != "keyvault":  # only keyvault speaks for the seal state
                continue
            if event.topic == "security.unsealed":
                self._wake.set()
            elif event.topic == "security.sealed":
                await self._seal("security.sealed")

    async def _publish(self, topic: str, body: Any) -> None:
        await self.mesh.publish(topic, body, timeout=KEY_CALL_TIMEOUT_S)

    async def _fetch_key(self, purpose: str) -> bytearray:
        reply = await self.mesh.call("keyvault.keys.get", {"purpose": purpose}, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes object cannot be wiped (shared/_crypto.py); the copy we keep can.
        return bytearray(reply["key"])

    async def _try_unseal(self) -> bool:
        """Fetch the keys, open and verify the log. True when the service is no longer sealed."""
        async with self._unseal_lock:
            if self.state != "sealed":
                return True
            try:
                hmac_key = await self._fetch_key("audit-hmac")
                self._sign_key = await self._fetch_key("audit-signing")
            except MeshError as exc:
                log.info("sealed", reason=exc.code, detail=exc.message)
                return False
            try:
                self._db_key = derive_subkey(hmac_key, "audit-db")
                self._hash_key = derive_subkey(hmac_key, "audit-details")
            finally:
                wipe(hmac_key)
            self.public_key = public_key_of(self._sign_key)
            fingerprint = hashlib.sha256(self.public_key).hexdigest()[:16]
            self.slot, warning = choose_keystore(self.config.keyvault.keystore, self.home.keys / "audit-checkpoint",
                                                 f"audit-checkpoint:{fingerprint}")
            if warning:
                log.warning("checkpoint_slot_warning", warning="trusted checkpoint protected by file permissions only")
            loop = asyncio.get_running_loop()
            try:
                store = await loop.run_in_executor(None, AuditStore.open, db_path(self.home), self._db_key)
            except StoreError as exc:
                self.state, self.problem = "failed", exc.message
                log.error("audit_db_unusable", reason=exc.message)
                return True
            try:
                head, latest, trusted = await loop.run_in_executor(None, self._verify, store)
            except TamperError as exc:
                store.close()
                self.state, self.problem = "tampered", exc.message
                log.error("audit_log_tampered", first_bad=exc.sequence, reason=exc.message)
                return True
            self.store, self.head, self.latest, self.state, self.problem = store, head, latest, "ok", None
            log.info("unsealed", size=head.size, checkpoint_size=latest.tree_size if latest else 0)
            if latest is not None and (trusted is None or trusted.tree_size < latest.tree_size):
                await self._save_trusted(latest)  # a crash came between the checkpoint and the slot update
            return True

    def _verify(self, store: AuditStore) -> tuple[LogHead, Checkpoint | None, Checkpoint | None]:
        assert self.public_key is not None and self.slot is not None
        head, latest, trusted, entries = verify_store(store, self.public_key, self.slot)
        # Only a verified log is evidence: the open alerts come back from it (a restart forgets nothing).
        try:
            reopened = self.alerts.engine.rebuild(entry.record for entry in entries)
        except Exception as exc:  # noqa: BLE001 - the log is fine; losing open alerts must not seal audit
            log.error("alerts_not_rebuilt", error_type=type(exc).__name__)
        else:
            if reopened:
                log.warning("alerts_reopened", open=reopened)
        return head, latest, trusted

    async def _save_trusted(self, checkpoint: Checkpoint) -> None:
        assert self.slot is not None
        try:
            blob = bytearray(encode_checkpoint(checkpoint))
            await asyncio.get_running_loop().run_in_executor(None, self.slot.put, blob)
        except Exception as exc:  # noqa: BLE001 - a lagging trusted copy is safe; say so loudly.
            log.error("trusted_checkpoint_not_saved", error_type=type(exc).__name__, tree_size=checkpoint.tree_size)

    async def _seal(self, reason: str) -> None:
        async with self._write_lock:
            if self.state == "ok":
                await self._checkpoint_locked()
            if self.store is not None:
                self.store.close()
            for key in (self._db_key, self._sign_key, self._hash_key):
                if key is not None:
                    wipe(key)
            self.store = self.head = self._db_key = self._sign_key = self._hash_key = None
            self.state, self.problem = "sealed", reason
            log.info("sealed", reason=reason)

    # -- writing -----------------------------------------------------------------------

    def _refusal(self) -> MeshError:
        if self.state == "sealed":
            return Sealed("audit is sealed: the mesh is locked or keyvault is not reachable")
        return Unavailable(f"audit refuses to append: the stored log is {self.state} ({self.problem}); "
                           "an operator must investigate (audit.verify)")

    async def _checkpoint(self) -> None:
        async with self._write_lock:
            await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> None:
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

    async def _commit_pending(self) -> None:
        async with self._write_lock:
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
            log.error("append_failed", reason=exc.message, records=len(entries))
            for future, _, _ in ranges:
                if not future.done():
                    future.set_exception(Unavailable("the audit log could not be written; nothing was recorded"))
            return
        for future, first, last in ranges:
            if not future.done():
                future.set_result((first, last))
        self.alerts.after_commit([entry.record for entry in entries])  # may queue alert records
        if checkpoint is not None:
            self.latest = checkpoint
            await self._save_trusted(checkpoint)

    @handler("append", request=AppendRequest, concurrent=True, sensitive=("details",))
    async def append(self, ctx: RequestContext, req: AppendRequest) -> dict[str, Any]:
        """``audit.append {records: [{type, outcome, target?, on_behalf_of?, time?, details?}]}`` →
        ``{first_seq, last_seq}``, answered only once every record is durable. The actor is the
        caller the broker authenticated. ``SEALED`` while sealed; ``UNAVAILABLE`` when the log
        failed verification or the disk write failed (then nothing of the request was stored);
        ``FORBIDDEN`` for an ``alert.*`` type (only audit writes those), and for a ``process.*`` type
        from any caller but ``supervisor-events`` (only it speaks for supervisord)."""
        if self.state != "ok" or self._hash_key is None:
            raise self._refusal()
        if not req.records:
            raise BadRequest("append needs at least one record")
        now, prepared = time.time(), []
        for item in req.records:
            if item.type.startswith(ALERT_PREFIX):
                raise Forbidden(f"{ALERT_PREFIX}* records are written by audit itself, not appended")
            if item.type.startswith(PROCESS_PREFIX) and ctx.caller != SUPERVISOR_SENDER:
                raise Forbidden(f"{PROCESS_PREFIX}* records are appended by {SUPERVISOR_SENDER} only")
            details = sanitize_details(item.details, self._hash_key, item.type)
            if item.time is not None:
                details["reported_time"] = item.time
            record = Record(seq=0, time=now, actor=ctx.caller, event=item.type, outcome=item.outcome,
                            on_behalf_of=item.on_behalf_of, target=item.target, details=details)
            encode_record(record)  # refuse an oversized record here, so it cannot fail the whole batch
            prepared.append(record)
        first, last = await asyncio.shield(self._enqueue(prepared))  # a caller's timeout must not cancel it
        return {"first_seq": first, "last_seq": last}

    def _enqueue(self, records: list[Record]) -> asyncio.Future[tuple[int, int]]:
        """Queue records for the next group commit; the future resolves once they are durable."""
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="audit-commit")
        return future

    # -- reading (operators) ------------------------------------------------------------

    def _operator(self, ctx: RequestContext) -> None:
        if ctx.role != "operator":
            raise Forbidden("only an operator may read the audit log")
        if self.public_key is None or self._db_key is None:
            raise Sealed("audit is sealed: the mesh is locked or keyvault is not reachable")

    def _paths(self) -> tuple[Path, bytearray, bytes, Keystore]:
        assert self._db_key is not None and self.public_key is not None and self.slot is not None
        return db_path(self.home), self._db_key, self.public_key, self.slot

    @handler("tail", request=TailRequest, concurrent=True)
    async def tail(self, ctx: RequestContext, req: TailRequest) -> dict[str, Any]:
        """``audit.tail {limit?, type?, actor?}`` → ``{records: [...]}``, latest last (operators)."""
        self._operator(ctx)
        if not 1 <= req.limit <= MAX_TAIL:
            raise BadRequest(f"limit must be 1 to {MAX_TAIL}")

        path, key, _, _ = self._paths()

        def read() -> list[Record]:
            with AuditStore.open(path, key) as reader:
                return reader.tail(req.limit, req.type, req.actor)
        return {"records": [record_to_wire(r) for r in await ctx.run_blocking(read)]}

    @handler("verify", concurrent=True)
    async def verify(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``audit.verify`` → ``{ok, size, checkpoint_size, first_bad?, error?}``: re-verifies the whole
        database against the trusted checkpoint (operators). A failure also stops appends."""
        self._operator(ctx)
        result: dict[str, Any] = await ctx.run_blocking(verify_report, *self._paths())
        if not result["ok"] and self.state == "ok":
            self.state, self.problem = "tampered", result["error"]
            log.error("audit_log_tampered", first_bad=result["first_bad"], reason=result["error"])
        return result

    @handler("export", request=ExportRequest, concurrent=True)
    async def export(self, ctx: RequestContext, req: ExportRequest) -> dict[str, Any]:
        """``audit.export {from_seq?, limit?, tree_size?}`` → ``{bundle, public_key, tree_size,
        from_seq, count, next_seq}`` (operators): records ``[from_seq, from_seq + count)`` with
        inclusion proofs against a signed checkpoint, for :func:`.proofs.verify_bundle`. Without
        ``tree_size`` a fresh checkpoint is signed first, so it covers every record acknowledged so
        far; later pages pass the first page's ``tree_size`` so all are proven against one
        checkpoint. ``count`` is at most ``limit`` (default :data:`EXPORT_PAGE_RECORDS`) and fewer
        when needed to fit ``broker.max_message_bytes``; ``next_seq`` is None after the last page."""
        self._operator(ctx)
        if not 1 <= req.limit <= MAX_EXPORT_PAGE_RECORDS:
            raise BadRequest(f"limit must be 1 to {MAX_EXPORT_PAGE_RECORDS}")
        if req.tree_size is None:
            await self._checkpoint()  # so the export covers every record acknowledged so far
        max_bytes = self.config.broker.max_message_bytes - _EXPORT_MARGIN
        try:
            bundle, checkpoint, count = await ctx.run_blocking(export_page, *self._paths(), req.from_seq, req.limit,
                                                               req.tree_size, max_bytes)
        except TamperError as exc:
            raise Unavailable(f"the stored log failed verification; not exporting ({exc.message})") from None
        assert self.public_key is not None
        end = req.from_seq + count
        return {"bundle": bundle, "public_key": self.public_key, "tree_size": checkpoint.tree_size,
                "from_seq": req.from_seq, "count": count, "next_seq": end if end < checkpoint.tree_size else None}

    @handler("alerts")
    async def alerts_handler(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``audit.alerts`` → ``{alerts: [{id, rule, subject, count, threshold, window_s, opened,
        last_seen, first_seq, last_seq}]}``, the open alerts, oldest first (operators)."""
        if ctx.role != "operator":
            raise Forbidden("only an operator may list alerts")
        return {"alerts": self.alerts.open()}

    @handler("alerts.ack", request=AckRequest, concurrent=True)
    async def alerts_ack(self, ctx: RequestContext, req: AckRequest) -> dict[str, Any]:
        """``audit.alerts.ack {id}`` → ``{id, acknowledged, record}`` once the ``alert.ack`` record
        is durable (operators); ``NOT_FOUND`` when no such alert is open."""
        if ctx.role != "operator":
            raise Forbidden("only an operator may acknowledge alerts")
        if self.state != "ok":
            raise self._refusal()
        return await self.alerts.ack(req.id, ctx.caller)

    @handler("public_key")
    async def public_key_handler(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``audit.public_key`` → ``{public_key, fingerprint}``: the checkpoint-signing Ed25519 key."""
        if self.public_key is None:
            raise Sealed("audit is sealed: the mesh is locked or keyvault is not reachable")
        return {"public_key": self.public_key, "fingerprint": hashlib.sha256(self.public_key).hexdigest()[:16]}

    @handler("health")
    async def health(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``audit.health`` → the usual fields, ``status`` being ``ok``, ``sealed``, ``tampered`` or
        ``failed``, plus ``size``, ``checkpoint_size`` and ``problem``."""
        return {"service": self.name, "status": self.state, "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started, 3),
                "size": self.head.size if self.head else None,
                "checkpoint_size": self.latest.tree_size if self.latest else 0, "problem": self.problem}

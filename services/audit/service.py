"""The audit service: the tamper-evident audit log (DESIGN.md invariants 7 and 9).

Keys come from keyvault over the mesh (``audit-hmac``: the database key and the details-hash key
are derived from it; ``audit-signing``: the 32-byte Ed25519 checkpoint key); they live in
bytearrays here only and are wiped on ``security.sealed`` and at stop. Until both keys are
fetched the service is *sealed*: every append answers ``SEALED`` and it retries with a growing
delay, and at once on ``security.unsealed`` (when the ACL lets it subscribe to ``security.``).

At start (once keys are there) the records after the saved verified anchor (:mod:`.anchor`) are
verified, with their consistency to the trusted latest checkpoint, kept outside the log in a secret
slot (platform keyring, or a 0600 file); the whole log is then verified in the background (a failure
stops appends and raises the ``verify_failed`` alert, and until a whole verification passes again
every start verifies the whole log before it is ready), and on ``audit.verify``. If that fails the
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

The module split: this class is the wire surface (every handler but the paired devices', which are
:mod:`.witness`, and the lifecycle hooks); the group-commit and checkpoint writer is :mod:`.writer`,
the seal state (keys, unseal and verify, seal and wipe) is :mod:`.seal`, and export paging is
:mod:`.export`. Verification of the stored log (at unseal, ``verify``, an export's first page) is
one streamed pass, :mod:`.scan` over :mod:`.verifier`, in memory that does not grow with the log;
export pages reuse the verified tree of their checkpoint (:mod:`.pages`). Names other code imports
from here (``Audit``, ``export_page``, the constants) stay importable from here (``__all__``).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog

from shared import (
    FAILED,
    READY,
    SEALED,
    BadRequest,
    Forbidden,
    MeshConfig,
    MeshError,
    MeshHome,
    NoFields,
    Readiness,
    RequestContext,
    Sealed,
    Service,
    Unavailable,
    handler,
    mesh_config,
)
from shared.keystore import Keystore

from .alert_desk import AlertDesk
from .alerts import SUPERVISOR_SENDER, VERIFY_FAILED_EVENT, WITNESS_EVENT
from .chain import Record, encode_record
from .errors import TamperError
from .export import EXPORT_MARGIN, EXPORT_PAGE_RECORDS, MAX_EXPORT_PAGE_RECORDS, ExportRequest, export_page
from .sanitize import sanitize_details
from .scan import verify_report
from .schema import MAX_TAIL, AckRequest, AppendRequest, TailRequest, record_to_wire
from .seal import KEY_CALL_TIMEOUT_S, KEY_RETRY_MAX_S, KEY_RETRY_MIN_S, SealMixin
from .store import AuditStore, db_path
from .witness import WitnessMixin
from .writer import CHECKPOINT_EVERY_RECORDS, CHECKPOINT_EVERY_S, Pending

# What this module offered before the split, re-exported so its importers (tests/, storage_rig)
# keep working; mypy --strict does not re-export implicitly.
__all__ = [
    "ALERT_PREFIX", "CHECKPOINT_EVERY_RECORDS", "CHECKPOINT_EVERY_S", "EXPORT_PAGE_RECORDS", "KEY_CALL_TIMEOUT_S",
    "KEY_RETRY_MAX_S", "KEY_RETRY_MIN_S", "MAX_EXPORT_PAGE_RECORDS", "PROCESS_PREFIX", "Audit", "ExportRequest",
    "Pending", "export_page",
]

log = structlog.get_logger("audit")

ALERT_PREFIX: Final = "alert."         #: events only audit writes (alerts and their acknowledgements)
PROCESS_PREFIX: Final = "process."     #: events only the supervisor-events listener appends


class Audit(WitnessMixin, SealMixin, Service):
    """Mesh name ``audit``; handlers: ``append``, ``tail``, ``verify``, ``export``, ``public_key``,
    ``alerts``, ``alerts.ack``, ``health``, and the devices' ``checkpoint`` and ``witness_report``.
    ``clock`` measures the alert windows (tests inject one)."""

    name = "audit"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        # The types of this state are declared on the mixins that use it (.writer, .seal).
        self.state = "sealed"            # sealed | ok | tampered | failed
        self.problem = None              # why, when not ok; never holds record contents
        self.store = None
        self.head = None
        self.latest = None               # the latest checkpoint durable in the database
        self.slot = None                 # where the trusted latest checkpoint is kept
        self.witness_tree = None         # the verified log's tree, for audit.checkpoint's proofs
        self._witness_lock = threading.Lock()
        self.public_key = None
        self._db_key = None
        self._sign_key = None
        self._hash_key = None
        self._pending = []
        self._committer = None
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
            log.warning("no_security_events", reason=exc.code,
                        hint='add "security." to subscribe in [services.audit], then meshctl config reload')
        await self._try_unseal()
        self._tasks.append(asyncio.create_task(self._keeper(), name="audit-keeper"))

    async def on_stop(self) -> None:
        """Finish pending commits, write a final checkpoint, close the database, wipe the keys."""
        if self._background_cancel is not None:
            self._background_cancel.set()  # the background pass stops at its next record
        if self._background_task is not None:
            self._tasks.append(self._background_task)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        await self.alerts.close()
        await self._seal("stopping")

    async def _publish(self, topic: str, body: Any) -> None:
        await self.mesh.publish(topic, body, timeout=KEY_CALL_TIMEOUT_S)

    # -- writing (the commit path itself is in .writer) ---------------------------------

    @handler("append", request=AppendRequest, concurrent=True, sensitive=("details",))
    async def append(self, ctx: RequestContext, req: AppendRequest) -> dict[str, Any]:
        """``audit.append {records: [{type, outcome, target?, on_behalf_of?, time?, details?}]}`` →
        ``{first_seq, last_seq}``, answered only once every record is durable. The actor is the
        caller the broker authenticated. ``SEALED`` while sealed; ``UNAVAILABLE`` when the log
        failed verification or the disk write failed (then nothing of the request was stored);
        ``FORBIDDEN`` for an ``alert.*`` type and ``audit.witness_mismatch`` (only audit writes those),
        and for a ``process.*`` type from any caller but ``supervisor-events`` (only it speaks for supervisord)."""
        if self.state != "ok" or self._hash_key is None:
            raise self._refusal()
        if not req.records:
            raise BadRequest("append needs at least one record")
        now, prepared = time.time(), []
        for item in req.records:
            if item.type.startswith(ALERT_PREFIX) or item.type in (WITNESS_EVENT, VERIFY_FAILED_EVENT):
                raise Forbidden(f"{ALERT_PREFIX}*, {WITNESS_EVENT} and {VERIFY_FAILED_EVENT} records are written "
                                "by audit itself")
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
        """``audit.verify`` → ``{ok, size, checkpoint_size, first_bad?, error?, damaged?}``: re-verifies the
        whole database against the trusted checkpoint (operators). ``damaged`` (``{file, pages, problems}``)
        when the database's own integrity check fails, so no record can be blamed. A failure also stops
        appends. ``meshctl audit verify``."""
        self._operator(ctx)
        result: dict[str, Any] = await ctx.run_blocking(verify_report, *self._paths())
        if not result["ok"]:
            await self._verification_failed(result, "audit.verify")
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
        max_bytes = self.config.broker.max_message_bytes - EXPORT_MARGIN
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

    def readiness(self) -> Readiness:
        """Ready only while the log is verified and its last write succeeded: a keyvault key release
        waits for audit, so an audit that cannot record stops the mesh from unsealing anything."""
        if self.state == "ok":
            if self.write_failure:
                return Readiness(FAILED, f"cannot write the audit log: {self.write_failure}")
            return Readiness(READY)
        if self.state == "sealed":
            return self.without_keys or Readiness(SEALED, "waiting for its keys from keyvault", "keyvault")
        if self.state == "tampered":
            return Readiness(FAILED, f"the stored log failed verification: {self.problem}; "
                                     "run `meshctl audit verify` for the first bad record")
        return Readiness(FAILED, self.problem or "the audit database cannot be used")

    @handler("health")
    async def health(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``audit.health`` → the usual fields (``state``, ``reason``, ``dependency``...) plus ``log``
        (``ok``, ``sealed``, ``tampered`` or ``failed``: the stored log's own state), ``size`` and
        ``checkpoint_size``."""
        reply = await super().health(ctx, req)
        reply.update(log=self.state, size=self.head.size if self.head else None,
                     checkpoint_size=self.latest.tree_size if self.latest else 0,
                     start=self.start_report.to_wire() if self.start_report else None, background=self.background)
        return reply

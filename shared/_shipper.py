"""Delivery of spooled audit records to the audit service (DESIGN.md invariants 7 and 9).

A producer keeps its audit records in a :class:`~shared._spool.Spool` first; an
:class:`AuditShipper` task sends the oldest of them (at most :data:`BATCH_RECORDS`, and at most
:data:`BATCH_BYTES` encoded) as one ``audit.append`` call through the service's
:class:`~shared._client.MeshClient`, and acks them in the spool only once audit answered, which it
does only after they are durable. A failure (audit not registered, sealed, slow, or refusing)
leaves them where they are and the shipper tries again after a growing, bounded delay: nothing is
dropped. Delivery is at least once: a reply lost after the commit sends the same records again.

:func:`append_records` maps spool records (``{type, time, actor?, role?, outcome?, target?, ...}``)
to the ``audit.append`` schema. The actor is never sent as such (audit stamps the authenticated
caller, the producer, as the record's actor); the identity the producer reported as acting is kept
as ``details.subject``. Every other field goes to ``details``. The broker, which cannot await,
uses the same mapping for the requests it forwards to audit itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

from ._codec import encode_body
from ._errors import MeshError
from ._logging import get_logger
from ._spool import Spool

log = get_logger("audit-shipper")

BATCH_RECORDS: Final = 100          #: records per ``audit.append`` call at most
BATCH_BYTES: Final = 256 << 10      #: encoded bytes per call at most (at least one record is sent)
#: Errors that mean "audit cannot take records now": retried quietly. Anything else is retried
#: too (never drop), but logged as an error for an operator to look at.
TRANSIENT: Final = frozenset({"UNAVAILABLE", "SEALED", "TIMEOUT", "RATE_LIMITED"})

_OUTCOMES: Final[dict[str, str]] = {
    "mesh.deny": "denied", "mesh.refused": "refused", "mesh.rate_limited": "refused",
    "mesh.handshake_failed": "failed", "keyvault.key_refused": "refused", "spool.overflow": "lost",
}
_TOP: Final = frozenset({"type", "time", "actor", "outcome", "target", "on_behalf_of"})


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def append_record(record: dict[str, Any]) -> dict[str, Any]:
    """One spool record as an ``audit.append`` record. Always valid for the schema: anything that
    does not fit a top-level field is kept in ``details`` rather than refused."""
    kind = _text(record.get("type"), 128) or "unknown"
    details = {k: v for k, v in record.items() if k not in _TOP and isinstance(k, str)}
    out: dict[str, Any] = {"type": kind,
                           "outcome": _text(record.get("outcome"), 64) or _OUTCOMES.get(kind, "ok")}
    actor = record.get("actor")
    if actor is not None:
        details["subject"] = actor
    for name, limit in (("target", 256), ("on_behalf_of", 256)):
        value = record.get(name)
        if value is None:
            continue
        text = _text(value, 256)
        if text is not None and len(value) <= limit:
            out[name] = text
        else:
            details[name] = value
    when = record.get("time")
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        out["time"] = float(when)
    if details:
        out["details"] = details
    return out


def append_records(records: list[dict[str, Any]], max_bytes: int = BATCH_BYTES) -> list[dict[str, Any]]:
    """The longest prefix of ``records`` (at least one) whose mapped records encode within
    ``max_bytes``; the caller acks exactly ``len(result)`` spool records after success."""
    out: list[dict[str, Any]] = []
    size = 0
    for record in records:
        mapped = append_record(record)
        size += len(encode_body(mapped))
        if out and size > max_bytes:
            break
        out.append(mapped)
    return out


class AuditShipper:
    """An asyncio task that drains ``spool`` into ``audit.append`` through ``client``.

    ``start()`` it once the client is connected (a service's ``on_start``), ``notify()`` it after
    appending a record (it then ships soon instead of at the next period), ``await stop()`` it
    before closing the spool. Each ack is fsynced on the event loop, unless ``acked`` is given: then
    the ack is only written, and ``acked()`` asks its owner to fsync the spool (off the loop).
    """

    def __init__(self, spool: Spool, client: Any, *, name: str = "audit-shipper", period: float = 1.0,
                 min_backoff: float = 0.2, max_backoff: float = 10.0, call_timeout: float = 5.0,
                 acked: Callable[[], object] | None = None) -> None:
        self.spool = spool
        # With ``acked``, an ack is written but not fsynced here: ``acked`` is told, and its owner
        # fsyncs the spool off the event loop. A crash before that only delivers those records again.
        self.acked = acked
        self.client = client
        self.name = name
        self.period = period
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.call_timeout = call_timeout
        self.shipped = 0             #: records acknowledged by audit since start
        self.failures = 0            #: failed attempts since start
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self.name)

    def notify(self) -> None:
        """A record was spooled: ship it soon."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop shipping; records not yet acknowledged stay in the spool for the next run."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def ship_once(self) -> int:
        """Send one batch and ack it; the number of records delivered (0 when none waited).
        Raises the :class:`MeshError` of a failed call; then nothing is acked."""
        pending = self.spool.pending(BATCH_RECORDS)
        if not pending:
            return 0
        records = append_records(pending)
        await self.client.call("audit.append", {"records": records}, timeout=self.call_timeout)
        # Only this task acks, and appends only add at the tail: the oldest len(records)
        # spool records are exactly the ones just delivered.
        if self.acked is None:
            self.spool.ack(len(records))
        else:
            self.spool.ack(len(records), sync=False)
            self.acked()
        self.shipped += len(records)
        return len(records)

    async def _run(self) -> None:
        delay = self.min_backoff
        while True:
            self._wake.clear()  # before the attempt, so a record spooled during it is not missed
            try:
                sent = await self.ship_once()
            except MeshError as exc:
                self.failures += 1
                self.last_error = exc.code
                if exc.code in TRANSIENT:
                    log.info("audit_delivery_deferred", reason=exc.code, pending=len(self.spool), retry_s=delay)
                else:
                    log.error("audit_delivery_refused", reason=exc.code, pending=len(self.spool), retry_s=delay)
                await asyncio.sleep(delay)  # a bounded backoff, not synchronisation
                delay = min(delay * 2, self.max_backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - the shipper must outlive any one failure.
                self.failures += 1
                self.last_error = type(exc).__name__
                log.error("audit_delivery_failed", error_type=type(exc).__name__, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            delay = self.min_backoff
            self.last_error = None
            if sent and len(self.spool):
                continue  # more waiting: the next batch at once
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the wake-up and loses a
            # cancellation that arrives in the same turn, and stop() then never returns.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period):
                    await self._wake.wait()

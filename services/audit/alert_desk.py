"""The service side of alerts: what happens to an alert the rules raised, on the mesh.

Contract of :class:`AlertDesk`: the committer shows it every batch it made durable
(:meth:`~AlertDesk.after_commit`, which never raises: a fault in the rules must not break the
commit path). For each alert that fires it appends the ``alert.<rule>`` record through the
service's own group-commit path (``enqueue``); only once that record is durable is the alert open,
under the record's sequence number, and published on ``alerts.<rule>`` (``publish``; a failed
publish is logged, the record is the alert). An acknowledgement (:meth:`~AlertDesk.ack`) is
answered only once its ``alert.ack`` record is durable; if it cannot be written the alert stays
open. The rule state is :class:`.alert_engine.AlertEngine`, the rules :mod:`.alerts`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from shared import AuditConfig, MeshError

from .alert_engine import AlertEngine
from .alerts import ACK_EVENT, Alert
from .chain import Record

__all__ = ["AlertDesk", "Enqueue", "Publish"]

log = structlog.get_logger("audit.alerts")  # one logger name for all of alerts, as before the split

#: The service's group-commit path: queue records, get a future of ``(first_seq, last_seq)`` once durable.
Enqueue = Callable[[list[Record]], "asyncio.Future[tuple[int, int]]"]
#: Publish an event on the mesh (topic, body).
Publish = Callable[[str, Any], Awaitable[None]]


class AlertDesk:
    """The service side of alerts: appends alert records through the service's commit path
    (``enqueue``), publishes ``alerts.<rule>`` once they are durable (``publish``), and records
    acknowledgements."""

    def __init__(self, config: AuditConfig, enqueue: Enqueue, publish: Publish,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = AlertEngine(config, clock)
        self._enqueue = enqueue
        self._publish = publish
        self._tasks: set[asyncio.Task[None]] = set()

    def after_commit(self, records: list[Record]) -> None:
        """Called by the committer with the records it just made durable, in log order. Never
        raises: a fault in the rules must not break the commit path."""
        try:
            self.engine.replay.feed(records)  # what the log says is open, saved with the next anchor
            fired = self.engine.observe(records)
        except Exception as exc:  # noqa: BLE001 - logged; the records are durable regardless
            log.error("alert_rules_failed", error_type=type(exc).__name__)
            return
        for alert in fired:
            future = self._enqueue([alert.record(time.time())])
            task = asyncio.create_task(self._announce(alert, future), name=f"audit-alert-{alert.rule}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _announce(self, alert: Alert, future: asyncio.Future[tuple[int, int]]) -> None:
        try:
            seq, _ = await future
        except MeshError as exc:
            self.engine.discard(alert)
            log.error("alert_not_recorded", rule=alert.rule, reason=exc.code)
            return
        self.engine.opened(alert, seq)
        log.warning("alert", id=seq, rule=alert.rule, count=alert.count, threshold=alert.threshold)
        try:
            await self._publish(f"alerts.{alert.rule}", alert.to_wire())
        except MeshError as exc:  # the record is the alert; the event is a courtesy
            log.warning("alert_not_published", id=seq, rule=alert.rule, reason=exc.code,
                        hint="grant publish 'alerts.' to audit")

    def open(self) -> list[dict[str, Any]]:
        return [alert.to_wire() for alert in self.engine.open_alerts()]

    async def ack(self, alert_id: int, caller: str) -> dict[str, Any]:
        """Acknowledge an open alert; answered once the ``alert.ack`` record is durable."""
        alert = self.engine.take(alert_id)
        record = Record(seq=0, time=time.time(), actor=caller, event=ACK_EVENT, outcome="ok",
                        target=f"alert:{alert_id}",
                        details={"alert_id": alert_id, "rule": alert.rule, "subject": alert.subject,
                                 "count": alert.count})
        try:
            seq, _ = await asyncio.shield(self._enqueue([record]))
        except MeshError:
            self.engine.restore(alert)
            raise
        return {"id": alert_id, "acknowledged": True, "record": seq}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

"""Anomaly alerts: rules from ``[audit.rules]`` (mesh.toml) evaluated on records once they are durable.

A rule matches a record and names its *subject* (an account, a source, an identity, a process)
and an *amount* (1, or the record's ``count``, or for ``large_read`` its ``bytes``). When the
amounts of one subject reach the rule's ``threshold`` within ``window_s`` seconds, an alert fires:

- it is appended to the log as a record of its own (``alert.<rule>``, actor ``audit``, outcome
  ``open``, target the subject) through the same group-commit path as every other record;
- once that record is durable the alert is *open*; its id is the record's sequence number, and it
  is published on ``alerts.<rule>`` (audit needs ``publish = ["alerts."]`` in mesh.toml);
- while it is open, more matching records of the same subject raise no new alert: they are
  counted on the open one. It closes when an operator acknowledges it (``audit.alerts.ack``,
  itself recorded as ``alert.ack``) or when ``window_s`` passes with no further matching record.

The rules (the record fields each one reads; producers that do not exist yet are keyed on these):

==========================  =====================================================================
``failed_logins_account``   ``authn.login`` with outcome ``failure``/``failed``/``denied``; subject
                            ``on_behalf_of``, else ``details.account``/``user``, else ``target``
``failed_logins_source``    the same records; subject ``details.source``/``address``/``device``,
                            else the actor
``unknown_certs``           ``mesh.handshake_failed`` and ``mesh.cert_pending`` (amount
                            ``details.count``, default 1); one subject, ``mesh``
``rate_limited``            ``mesh.rate_limited`` (amount ``details.count``); subject
                            ``details.identity``/``subject``, else ``on_behalf_of``/``target``
``crash_loop``              ``process.crash`` (appended by the ``supervisor-events`` listener);
                            subject ``details.process``, else ``target``
``large_read``              a ``*.read`` or ``*.export`` record with a numeric ``details.bytes``
                            (the amount); subject ``on_behalf_of``, else the actor
``repeated_denies``         ``mesh.deny``, ``mesh.refused``, ``authz.deny``, or outcome ``denied``
                            (amount ``details.count``); subject ``details.subject`` (the peer the
                            broker's shipper names), ``identity``/``actor``/``peer``, else
                            ``on_behalf_of``, else the actor
==========================  =====================================================================

Open alerts are kept in memory and rebuilt from the log when audit unseals
(:meth:`AlertEngine.rebuild`): every ``alert.<rule>`` record written by audit with no later
``alert.ack`` for its id is open again, with the matching records after it counted on it, unless
its rule's window has passed since the last of them (record times). The sliding windows of bursts
that had not yet fired are not rebuilt. ``alert.*`` records only come from audit itself (the
service refuses them from producers), so a forged acknowledgement cannot close an alert.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from shared import AlertRule, AuditConfig, MeshError, NotFound

from .chain import Record

log = structlog.get_logger("audit.alerts")

ALERT_ACTOR: Final = "audit"
ACK_EVENT: Final = "alert.ack"
MAX_TRACKED: Final = 10_000     #: subjects with a live window, per rule; stale ones are swept first
MAX_SUBJECT: Final = 256        #: characters of a subject kept
FAILURE_OUTCOMES: Final = frozenset({"failure", "failed", "denied"})
DENY_EVENTS: Final = frozenset({"mesh.deny", "mesh.refused", "authz.deny"})
CERT_EVENTS: Final = frozenset({"mesh.handshake_failed", "mesh.cert_pending"})
#: The only identity that may append ``process.*`` records (it speaks for supervisord).
SUPERVISOR_SENDER: Final = "supervisor-events"

Match = tuple[str, int] | None


def _text(record: Record, *names: str) -> str | None:
    for name in names:
        value = record.details.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _amount(record: Record, name: str = "count") -> int:
    value = record.details.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return 1


def _failed_login(record: Record) -> bool:
    return record.event == "authn.login" and record.outcome in FAILURE_OUTCOMES


def failed_logins_account(record: Record) -> Match:
    if not _failed_login(record):
        return None
    subject = record.on_behalf_of or _text(record, "account", "user", "username") or record.target
    return (subject, 1) if subject else None


def failed_logins_source(record: Record) -> Match:
    if not _failed_login(record):
        return None
    return (_text(record, "source", "address", "device") or record.actor, 1)


def unknown_certs(record: Record) -> Match:
    return ("mesh", _amount(record)) if record.event in CERT_EVENTS else None


def rate_limited(record: Record) -> Match:
    if record.event != "mesh.rate_limited":
        return None
    subject = _text(record, "identity", "subject") or record.on_behalf_of or record.target
    return (subject, _amount(record)) if subject else None


def crash_loop(record: Record) -> Match:
    if record.event != "process.crash":
        return None
    subject = _text(record, "process") or record.target
    return (subject, 1) if subject else None


def large_read(record: Record) -> Match:
    if not record.event.endswith((".read", ".export")):
        return None
    size = record.details.get("bytes")
    if not isinstance(size, (int, float)) or isinstance(size, bool) or size < 0:
        return None
    return (record.on_behalf_of or record.actor, int(size))


def repeated_denies(record: Record) -> Match:
    if record.event not in DENY_EVENTS and record.outcome != "denied":
        return None
    subject = _text(record, "subject", "identity", "actor", "peer") or record.on_behalf_of or record.actor
    return (subject, _amount(record))


RULES: Final[dict[str, Callable[[Record], Match]]] = {
    "failed_logins_account": failed_logins_account, "failed_logins_source": failed_logins_source,
    "unknown_certs": unknown_certs, "rate_limited": rate_limited, "crash_loop": crash_loop,
    "large_read": large_read, "repeated_denies": repeated_denies,
}


@dataclass(slots=True)
class Alert:
    """One alert. ``id`` is the sequence number of its ``alert.<rule>`` record (None until durable)."""

    rule: str
    subject: str
    count: int
    threshold: int
    window_s: float
    opened: float
    last_seen: float
    first_seq: int
    last_seq: int
    id: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "subject": self.subject, "count": self.count,
                "threshold": self.threshold, "window_s": self.window_s, "opened": self.opened,
                "last_seen": self.last_seen, "first_seq": self.first_seq, "last_seq": self.last_seq}

    def record(self, now: float) -> Record:
        """The ``alert.<rule>`` record announcing this alert (appended like any other)."""
        return Record(seq=0, time=now, actor=ALERT_ACTOR, event=f"alert.{self.rule}", outcome="open",
                      target=self.subject,
                      details={"rule": self.rule, "subject": self.subject, "count": self.count,
                               "threshold": self.threshold, "window_s": self.window_s,
                               "first_seq": self.first_seq, "last_seq": self.last_seq})


@dataclass(slots=True)
class _Window:
    hits: deque[tuple[float, int, int]] = field(default_factory=deque)  # (time, amount, seq)
    total: int = 0

    def add(self, now: float, amount: int, seq: int, window_s: float) -> None:
        self.hits.append((now, amount, seq))
        self.total += amount
        self.expire(now, window_s)

    def expire(self, now: float, window_s: float) -> None:
        while self.hits and self.hits[0][0] < now - window_s:
            self.total -= self.hits.popleft()[1]


class AlertEngine:
    """The rule state: sliding windows per (rule, subject) and the alerts that are open.

    Pure and synchronous (no I/O); ``clock`` gives the time windows are measured in."""

    def __init__(self, config: AuditConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.rules: dict[str, AlertRule] = {name: getattr(config.rules, name) for name in RULES}
        self._windows: dict[str, dict[str, _Window]] = {name: {} for name in RULES}
        self._alerts: dict[tuple[str, str], Alert] = {}   # open or about to be (record not durable yet)

    def observe(self, records: Iterable[Record]) -> list[Alert]:
        """Feed durable records in log order; return the alerts that fire (their records are not
        written yet: the caller appends them and then calls :meth:`opened`)."""
        fired: list[Alert] = []
        now = self.clock()
        self._expire(now)
        for record in records:
            for name, match in RULES.items():
                rule = self.rules[name]
                hit = match(record) if rule.enabled else None
                if hit is None:
                    continue
                subject, amount = hit[0][:MAX_SUBJECT], hit[1]
                alert = self._alerts.get((name, subject))
                if alert is not None:  # deduplicated: counted on the alert that is open
                    alert.count += amount
                    alert.last_seen, alert.last_seq = now, record.seq
                    continue
                windows = self._windows[name]
                window = windows.get(subject)
                if window is None:
                    window = windows[subject] = _Window()
                    if len(windows) > MAX_TRACKED:
                        self._sweep(name, now)
                window.add(now, amount, record.seq, rule.window_s)
                if window.total >= rule.threshold:
                    alert = Alert(rule=name, subject=subject, count=window.total, threshold=rule.threshold,
                                  window_s=rule.window_s, opened=now, last_seen=now,
                                  first_seq=window.hits[0][2], last_seq=record.seq)
                    del windows[subject]  # the alert consumed them: after an ack it takes a new burst
                    self._alerts[(name, subject)] = alert
                    fired.append(alert)
        return fired

    def rebuild(self, records: Iterable[Record]) -> int:
        """Replace the open alerts with those the log says are open (records in log order, the
        whole verified log): alert records by audit not acknowledged later and, counting the
        matching records after them as :meth:`observe` does, seen within their rule's window.
        Alerts still waiting for their record are kept. Returns how many are open."""
        opened: dict[tuple[str, str], Alert] = {}
        for record in records:
            if record.event == ACK_EVENT:
                alert_id = record.details.get("alert_id")
                for key, acked in list(opened.items()):
                    if acked.id == alert_id:
                        del opened[key]
                continue
            announced = _alert_of(record)
            if announced is not None:
                if announced.rule in self.rules:
                    announced.window_s = self.rules[announced.rule].window_s
                    opened[(announced.rule, announced.subject)] = announced
                continue
            if not opened:
                continue
            for name, match in RULES.items():
                hit = match(record) if self.rules[name].enabled else None
                if hit is not None and (open_alert := opened.get((name, hit[0][:MAX_SUBJECT]))) is not None:
                    open_alert.count += hit[1]
                    open_alert.last_seen, open_alert.last_seq = record.time, record.seq
        now = self.clock()
        pending = {key: alert for key, alert in self._alerts.items() if alert.id is None}
        live = {key: alert for key, alert in opened.items() if now - alert.last_seen <= alert.window_s}
        self._alerts = {**dict(sorted(live.items(), key=lambda item: item[1].id or 0)), **pending}
        self._expire(now)
        return len(self.open_alerts())

    def _sweep(self, name: str, now: float) -> None:
        windows, window_s = self._windows[name], self.rules[name].window_s
        for subject in list(windows):
            windows[subject].expire(now, window_s)
            if not windows[subject].hits:
                del windows[subject]
        while len(windows) > MAX_TRACKED:  # still too many live subjects: forget the oldest-tracked
            del windows[next(iter(windows))]

    def _expire(self, now: float) -> None:
        for key, alert in list(self._alerts.items()):
            if alert.id is not None and now - alert.last_seen > alert.window_s:
                del self._alerts[key]
                log.info("alert_expired", id=alert.id, rule=alert.rule)
        opened = [key for key, alert in self._alerts.items() if alert.id is not None]  # oldest first
        for key in opened[:max(0, len(opened) - self.config.max_open_alerts)]:
            del self._alerts[key]

    def opened(self, alert: Alert, seq: int) -> None:
        """The alert's record is durable at ``seq``: the alert is open under that id."""
        alert.id = seq

    def discard(self, alert: Alert) -> None:
        """The alert's record could not be written: forget it, so the next burst raises it again."""
        if self._alerts.get((alert.rule, alert.subject)) is alert:
            del self._alerts[(alert.rule, alert.subject)]

    def open_alerts(self) -> list[Alert]:
        """Open alerts (records durable), oldest first."""
        self._expire(self.clock())
        return sorted((a for a in self._alerts.values() if a.id is not None), key=lambda a: a.id or 0)

    def take(self, alert_id: int) -> Alert:
        """Remove the open alert ``alert_id`` (for an acknowledgement); :class:`NotFound` if none."""
        for alert in self.open_alerts():
            if alert.id == alert_id:
                del self._alerts[(alert.rule, alert.subject)]
                return alert
        raise NotFound(f"no open alert {alert_id} (acknowledged already, expired, or never raised)")

    def restore(self, alert: Alert) -> None:
        """Put back an alert whose acknowledgement could not be recorded."""
        self._alerts.setdefault((alert.rule, alert.subject), alert)


def _alert_of(record: Record) -> Alert | None:
    """The open alert an ``alert.<rule>`` record announced, or None if ``record`` is not one."""
    if record.actor != ALERT_ACTOR or not record.event.startswith("alert.") or record.outcome != "open":
        return None
    d = record.details
    rule, subject = d.get("rule"), d.get("subject")
    if record.event != f"alert.{rule}" or rule not in RULES or not isinstance(subject, str):
        return None
    numbers = [d.get(k) for k in ("count", "threshold", "first_seq")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    window = d.get("window_s")
    last_seq = d.get("last_seq")
    return Alert(rule=rule, subject=subject, count=int(d["count"]), threshold=int(d["threshold"]),
                 window_s=float(window) if isinstance(window, (int, float)) else 0.0,
                 opened=record.time, last_seen=record.time, first_seq=int(d["first_seq"]),
                 last_seq=last_seq if isinstance(last_seq, int) else record.seq, id=record.seq)


Enqueue = Callable[[list[Record]], "asyncio.Future[tuple[int, int]]"]
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


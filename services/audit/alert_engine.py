"""The alert rule state: sliding windows per (rule, subject) and the alerts that are open.

Contract of :class:`AlertEngine`: pure and synchronous (no I/O; the clock is injected). It is fed
durable records in log order (:meth:`~AlertEngine.observe`) and answers which alerts fire; it
never writes them itself: the caller (:mod:`.alert_desk`) appends each alert's record and then
reports it durable (:meth:`~AlertEngine.opened`) or lost (:meth:`~AlertEngine.discard`). While an
alert is open, matching records of its subject are counted on it rather than raising another. At
unseal the open alerts are those the log says are open (:class:`Replay`): restored from the verified
anchor and fed the records after it (:meth:`~AlertEngine.adopt`), or, without an anchor, replayed
from the whole verified log (:meth:`~AlertEngine.rebuild`). Memory is bounded: :data:`MAX_TRACKED`
subjects per rule, ``[audit] max_open_alerts`` open alerts, :data:`MAX_SUBJECT` characters per
subject. The rules themselves are :mod:`.alerts`.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from shared import AlertRule, AuditConfig, NotFound

from .alerts import ACK_EVENT, RULES, Alert, alert_of
from .chain import Record

__all__ = ["MAX_SUBJECT", "MAX_TRACKED", "AlertEngine", "Replay"]

log = structlog.get_logger("audit.alerts")  # one logger name for all of alerts, as before the split

MAX_TRACKED: Final = 10_000     #: subjects with a live window, per rule; stale ones are swept first
MAX_SUBJECT: Final = 256        #: characters of a subject kept


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


class Replay:
    """The open alerts as the log says them, record by record: what :meth:`AlertEngine.rebuild`
    computes, kept as a state that can be fed more records and saved (:meth:`to_wire`) with the
    verified anchor, so a start restores it and feeds it the new records only instead of replaying
    the whole log. Alert records by audit open an alert, an ``alert.ack`` record closes it, and the
    matching records after an open alert are counted on it (record times). Pure; no clock."""

    __slots__ = ("opened", "rules")

    def __init__(self, rules: dict[str, AlertRule], opened: dict[tuple[str, str], Alert] | None = None) -> None:
        self.rules = rules
        self.opened: dict[tuple[str, str], Alert] = opened or {}

    def feed(self, records: Iterable[Record]) -> None:
        """Apply records in log order."""
        opened = self.opened
        for record in records:
            if record.event == ACK_EVENT:
                alert_id = record.details.get("alert_id")
                for key, acked in list(opened.items()):
                    if acked.id == alert_id:
                        del opened[key]
                continue
            announced = alert_of(record)
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

    def to_wire(self) -> list[dict[str, Any]]:
        """The open alerts, msgpack-safe (for the anchor)."""
        return [alert.to_wire() for alert in self.opened.values()]

    @classmethod
    def from_wire(cls, rules: dict[str, AlertRule], items: list[Any]) -> Replay:
        """The state :meth:`to_wire` gave; an alert of a rule no longer known is dropped (as the
        replay drops it). Raises ValueError / KeyError / TypeError on a malformed item."""
        opened: dict[tuple[str, str], Alert] = {}
        for item in items:
            alert = Alert(rule=str(item["rule"]), subject=str(item["subject"]), count=int(item["count"]),
                          threshold=int(item["threshold"]), window_s=float(item["window_s"]),
                          opened=float(item["opened"]), last_seen=float(item["last_seen"]),
                          first_seq=int(item["first_seq"]), last_seq=int(item["last_seq"]), id=int(item["id"]))
            if alert.rule in rules:
                alert.window_s = rules[alert.rule].window_s
                opened[(alert.rule, alert.subject)] = alert
        return cls(rules, opened)


class AlertEngine:
    """The rule state: sliding windows per (rule, subject) and the alerts that are open.

    Pure and synchronous (no I/O); ``clock`` gives the time windows are measured in."""

    def __init__(self, config: AuditConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.rules: dict[str, AlertRule] = {name: getattr(config.rules, name) for name in RULES}
        self._windows: dict[str, dict[str, _Window]] = {name: {} for name in RULES}
        self._alerts: dict[tuple[str, str], Alert] = {}   # open or about to be (record not durable yet)
        #: What the log so far says is open (record times, no clock): saved with each anchor.
        self.replay = Replay(self.rules)

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
        replay = Replay(self.rules)
        replay.feed(records)
        return self.adopt(replay)

    def adopt(self, replay: Replay) -> int:
        """Make ``replay`` (the alerts a log up to some record says are open) the open alerts:
        those still within their rule's window now; alerts still waiting for their record are
        kept. From here on :attr:`replay` follows the committed records (:meth:`.alert_desk.AlertDesk.after_commit`)
        so it can be saved with the next anchor. Returns how many are open."""
        now = self.clock()
        pending = {key: alert for key, alert in self._alerts.items() if alert.id is None}
        live = {key: copy.copy(alert) for key, alert in replay.opened.items()
                if now - alert.last_seen <= alert.window_s}
        self._alerts = {**dict(sorted(live.items(), key=lambda item: item[1].id or 0)), **pending}
        self.replay = replay
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

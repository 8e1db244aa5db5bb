"""Turning supervisord notifications into mesh events, through a bounded durable spool.

Every notification worth forwarding becomes a spool record first (fsynced
before supervisord gets its OK), then a publish on ``supervisor.process.<state>``
once the broker is reachable; a record leaves the spool only after the broker
accepted its publish. Delivery is at least once: a record published just
before a crash is published again, and carries supervisord's ``serial`` so a
consumer can tell. Nothing is dropped silently:

* a full spool counts what it could not keep (:attr:`Spool.dropped`) and
  spools a ``spool.overflow`` record as soon as there is room, published on
  ``supervisor.overflow``;
* events supervisord discarded from its own buffer show up as gaps in the
  pool serial; they are counted in ``lost_upstream`` and reported on
  ``supervisor.events_lost``.

Each process state event is also an audit record (``process.crash`` for a crash state,
``process.state`` otherwise; see :func:`audit_record`), appended to a second spool, the
listener's audit spool, and shipped to ``audit.append`` by a :class:`shared.AuditShipper`: what
happens while audit is down or sealed waits in that spool and is delivered when audit is back.
The audit spool is bounded too; a full one counts what it could not keep and spools a
``spool.overflow`` record (audited with outcome ``lost``) as soon as there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Final

import structlog

from shared import Forbidden, MeshClient, MeshError, Spool

from .protocol import Notification

log = structlog.get_logger("supervisor_events")

TOPIC_PREFIX: Final = "supervisor."
#: States forwarded besides an unexpected EXITED: the alarming ones, and RUNNING and
#: STOPPED for context (when a process came back, or was stopped on purpose).
FORWARDED_STATES: Final = frozenset({"BACKOFF", "FATAL", "UNKNOWN", "RUNNING", "STOPPED"})
ALERT_STATES: Final = frozenset({"EXITED", "BACKOFF", "FATAL", "UNKNOWN"})
#: States audited as ``process.crash`` (an EXITED reaches here only when unexpected); the
#: ``crash_loop`` alert rule counts those.
CRASH_STATES: Final = ALERT_STATES
#: Fields of a spool record's body kept in its audit record (services/audit/sanitize.py).
AUDIT_FIELDS: Final = ("process", "group", "state", "from_state", "pid", "tries", "expected", "serial",
                       "supervisor")
_BATCH: Final = 100
_RETRY_S: Final = 0.5
_REFUSED_RETRY_S: Final = 10.0


@dataclass(slots=True)
class Counters:
    """What the listener did since it started; reported by ``supervisor-events.health``."""

    received: int = 0
    ignored: int = 0
    malformed: int = 0
    dropped: int = 0
    forwarded: int = 0
    publish_failures: int = 0
    lost_upstream: int = 0
    audit_dropped: int = 0


def to_record(note: Notification, now: float) -> dict[str, Any] | None:
    """The spool record for one notification, or None if it is not forwarded."""
    name = note.eventname
    if not name.startswith("PROCESS_STATE_"):
        return None
    state = name.removeprefix("PROCESS_STATE_")
    p = note.payload
    expected = p.get("expected")
    if state == "EXITED" and expected != "0":
        return None  # an exit supervisord was told to expect (a stop): not news.
    if state != "EXITED" and state not in FORWARDED_STATES:
        return None
    body: dict[str, Any] = {
        "process": p.get("processname", ""), "group": p.get("groupname", ""), "state": state,
        "from_state": p.get("from_state", ""), "severity": "alert" if state in ALERT_STATES else "info",
        "time": now, "serial": note.serial("serial"), "supervisor": note.header.get("server", ""),
    }
    if p.get("pid", "").isdigit():
        body["pid"] = int(p["pid"])
    if p.get("tries", "").isdigit():
        body["tries"] = int(p["tries"])
    if expected is not None:
        body["expected"] = expected == "1"
    return {"type": "process.state", "topic": f"{TOPIC_PREFIX}process.{state.lower()}", "body": body}


def audit_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """The audit spool record for one spool record (``process.crash`` or ``process.state``), or
    None when it is not a process state event. Shaped for :func:`shared.append_record`."""
    if record.get("type") != "process.state":
        return None
    body = record.get("body") or {}
    state = str(body.get("state", "")).upper()
    out: dict[str, Any] = {"type": "process.crash" if state in CRASH_STATES else "process.state",
                           "time": body.get("time"), "outcome": state.lower() or "unknown"}
    process = body.get("process")
    if isinstance(process, str) and process:
        out["target"] = process
    out.update({k: body[k] for k in AUDIT_FIELDS if k in body})
    return out


def topic_and_body(record: dict[str, Any]) -> tuple[str, Any]:
    """Where and what to publish for a spool record (overflow notes included)."""
    kind = record.get("type")
    if kind == "spool.overflow":
        return f"{TOPIC_PREFIX}overflow", {"dropped": record.get("dropped", 0), "severity": "alert"}
    if kind == "events.lost":
        return f"{TOPIC_PREFIX}events_lost", {"lost": record.get("lost", 0), "severity": "alert"}
    return str(record["topic"]), record.get("body")


class Forwarder:
    """Accepts notifications (synchronously, for the protocol) and publishes them (a task)."""

    def __init__(self, spool: Spool, clock: Any = time.time, audit_spool: Spool | None = None) -> None:
        self.spool = spool
        self.audit_spool = audit_spool
        #: Called after an audit record is spooled (the shipper's ``notify``), once one runs.
        self.audit_notify: Any = None
        self.counters = Counters()
        self.clock = clock
        self.wakeup = asyncio.Event()
        self._last_poolserial: int | None = None

    def accept(self, note: Notification) -> None:
        """Spool what is worth forwarding and make it durable. Never raises for a bad event."""
        self.counters.received += 1
        try:
            self._note_gap(note.serial("poolserial"))
            record = to_record(note, self.clock())
        except (ValueError, KeyError, TypeError):
            self.counters.malformed += 1
            log.warning("malformed_event", eventname=note.eventname[:64])
            return
        if record is None:
            self.counters.ignored += 1
            return
        if not self.spool.append(record):
            self.counters.dropped += 1
            log.error("spool_full", dropped=self.counters.dropped, spooled=len(self.spool))
        self.spool.sync()
        self.wakeup.set()
        self._audit(record)

    def _audit(self, record: dict[str, Any]) -> None:
        """Spool the audit record for ``record`` durably; the shipper delivers it (never waited on)."""
        entry = audit_record(record)
        if self.audit_spool is None or entry is None:
            return
        if not self.audit_spool.append(entry):
            self.counters.audit_dropped += 1
            log.error("audit_spool_full", dropped=self.counters.audit_dropped, spooled=len(self.audit_spool))
        self.audit_spool.sync()
        if self.audit_notify is not None:
            self.audit_notify()

    def _note_gap(self, poolserial: int | None) -> None:
        # supervisord numbers the events of our pool without gaps; a gap means it threw
        # events away (its buffer overflowed while we were not reading).
        if poolserial is None:
            return
        last, self._last_poolserial = self._last_poolserial, poolserial
        if last is not None and poolserial > last + 1:
            lost = poolserial - last - 1
            self.counters.lost_upstream += lost
            log.error("events_lost_upstream", lost=lost)
            self.spool.append({"type": "events.lost", "lost": lost})

    def health(self) -> dict[str, Any]:
        c = self.counters
        return {"received": c.received, "forwarded": c.forwarded, "ignored": c.ignored,
                "malformed": c.malformed, "spooled": len(self.spool), "dropped": c.dropped,
                "lost_upstream": c.lost_upstream, "publish_failures": c.publish_failures,
                "audit_spooled": len(self.audit_spool) if self.audit_spool is not None else 0,
                "audit_dropped": c.audit_dropped}

    async def drained(self) -> None:
        """Return once the spool is empty (the caller bounds the wait)."""
        while len(self.spool):
            self.wakeup.set()
            await asyncio.sleep(0.05)  # poll interval

    async def run(self, client: MeshClient) -> None:
        """Publish spooled records in order, forever; wait and retry while the broker is away."""
        while True:
            delay = await self._flush(client)
            self.wakeup.clear()
            if delay is None and len(self.spool) == 0:
                await self.wakeup.wait()
            else:
                # A poll: retry after a pause, sooner if a new event arrives. asyncio.timeout, not
                # wait_for: on Python 3.11 wait_for returns a wake-up that arrives in the same turn
                # as a cancellation and loses the cancellation, and the listener's stop never ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay or _RETRY_S):
                        await self.wakeup.wait()

    async def _flush(self, client: MeshClient) -> float | None:
        """Publish what is spooled; None when done, else seconds to wait before retrying."""
        while len(self.spool):
            if not client.connection.connected.is_set():
                return _RETRY_S
            batch = self.spool.pending(_BATCH)
            sent = 0
            retry: float | None = None
            for record in batch:
                topic, body = topic_and_body(record)
                try:
                    await client.publish(topic, body, timeout=2.0)
                except Forbidden as exc:
                    # Our ACL does not allow this topic: keep the record (the spool is bounded
                    # and counts overflow) and say so loudly until the configuration is fixed.
                    self.counters.publish_failures += 1
                    log.error("publish_refused", topic=topic, reason=exc.message)
                    retry = _REFUSED_RETRY_S
                    break
                except MeshError as exc:
                    self.counters.publish_failures += 1
                    log.warning("publish_failed", topic=topic, error=exc.code, reason=exc.message)
                    retry = _RETRY_S
                    break
                sent += 1
            self.spool.ack(sent)
            self.counters.forwarded += sent
            if retry is not None:
                return retry
        return None

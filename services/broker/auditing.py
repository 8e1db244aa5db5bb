"""The broker's audit records: written to a persistent spool, delivered from there to audit.

The broker cannot await the audit service, so its records go to a spool first
(:class:`AuditTrail`, ``<home>/spool/broker-audit.spool``). Every tick hands what was spooled since
to the flusher thread (:meth:`AuditTrail.sync_soon`, :mod:`.flusher`), so the routing loop never
waits on the disk; a record that must be durable before an operator is told "done" (a certificate
accepted, revoked ...) is followed by :meth:`AuditTrail.sync`, which waits.

:class:`AuditDelivery` ships the spool itself: on a tick, when ``audit`` is registered and no
shipment is in flight, it forwards up to :data:`SHIP_BATCH` spooled records as one ``audit.append``
request (``"from": "broker"``, ``"role": "service"``) straight to audit's connection, remembered in
the in-flight table as an entry with no caller. Audit's reply acks them in the spool (audit answers
only once they are durable); an error, a timeout or audit going away leaves them for the next try,
after a growing, bounded delay. Nothing is dropped; delivery is at least once.

Routing hands the delivery audit's answer (:meth:`AuditDelivery.answered`) and upkeep the
shipment's timeout (:meth:`AuditDelivery.failed`). When audit's connection goes away the
shipment's entry simply leaves the in-flight table; the next tick sees that
(:meth:`AuditDelivery.tick`), so whoever dropped the connection need not know about shipments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import structlog

from shared import PROTOCOL_VERSION, BrokerConfig, Spool, append_records, encode_body, encode_header

from .flusher import Flusher
from .outbox import Outbox
from .state import InFlight, MeshState

log = structlog.get_logger("broker")

SHIP_BATCH: Final = 100           #: spooled records per ``audit.append`` shipment at most
SHIP_TTL_MS: Final = 5000         #: how long audit has to answer a shipment
SHIP_RETRY_MIN_S: Final = 0.2     #: first delay after a failed shipment ...
SHIP_RETRY_MAX_S: Final = 5.0     #: ... doubling up to this


class AuditTrail:
    """Appends audit records to the broker's spool (``<home>/spool/broker-audit.spool``)."""

    def __init__(self, spool: Spool, flusher: Flusher, wall: Callable[[], float]) -> None:
        self.spool = spool
        self.flusher = flusher
        self._wall = wall

    def record(self, event: str, *, actor: str | None = None, role: str | None = None, **details: Any) -> None:
        """Spool a record of ``event``; ``actor`` and ``role`` name the peer that acted, if one did.
        A full spool drops the record (counted by the spool, logged here), never blocks."""
        record: dict[str, Any] = {"type": event, "time": self._wall()}
        if actor is not None:
            record["actor"] = actor
            record["role"] = role
        record.update(details)
        if not self.spool.append(record):
            log.warning("audit_spool_full", dropped=self.spool.dropped)

    def sync_soon(self) -> None:
        """Have the flusher make every record (and ack) spooled so far durable, without waiting for
        the disk; first raise what an earlier background fsync failed with (the broker stops)."""
        self.flusher.raise_failure()
        job = self.spool.sync_job()
        if job is not None:
            self.flusher.submit(job)

    def sync(self) -> None:
        """Make every record spooled so far durable before returning: wait for the flusher's jobs
        (what they took off the spool is durable only once they ran), then fsync what is left."""
        self.flusher.drain()
        self.flusher.raise_failure()
        self.spool.sync()


class AuditDelivery:
    """Ships the spool to ``audit.append``, one shipment at a time."""

    def __init__(self, state: MeshState, outbox: Outbox, spool: Spool, cfg: BrokerConfig,
                 clock: Callable[[], float]) -> None:
        self.state = state
        self.outbox = outbox
        self.spool = spool
        self._clock = clock
        self._max_bytes = cfg.max_message_bytes // 2
        self._ttl_ms = min(SHIP_TTL_MS, cfg.max_ttl_ms)
        #: No shipment starts before this time (the broker's clock); a failure pushes it back.
        self.ship_after = 0.0
        #: Spooled records audit has acknowledged since start (``mesh.stats``).
        self.shipped = 0
        self._delay = SHIP_RETRY_MIN_S
        #: The shipment in flight: its broker id, its in-flight entry and how many records it holds.
        self._shipment: tuple[int, InFlight, int] | None = None

    def tick(self, now: float) -> None:
        """Notice a shipment whose entry left the table (audit went away), then ship if due."""
        shipment = self._shipment
        if shipment is not None and self.state.in_flight.get(shipment[0]) is not shipment[1]:
            self.failed(shipment[0], "audit went away before answering")
        if self._shipment is None and len(self.spool) and now >= self.ship_after:
            self._ship(now)

    def _ship(self, now: float) -> None:
        """Forward the oldest spooled records to ``audit.append``, if audit is registered."""
        registration = self.state.services.get("audit")
        if registration is None:
            return
        records = append_records(self.spool.pending(SHIP_BATCH), self._max_bytes)
        broker_id = self.state.ids.take(self.state.in_flight)
        out = [encode_header({"v": PROTOCOL_VERSION, "k": "req", "id": broker_id, "to": "audit.append",
                              "ttl": self._ttl_ms, "from": "broker", "role": "service"}),
               encode_body({"records": records})]
        if not self.outbox.send(registration.peer.rid, out):
            self.failed(None, "audit cannot take the request")
            return
        registration.peer.counters.msgs_out += 1
        registration.requests += 1
        entry = self.state.track(broker_id, None, 0, registration, self._ttl_ms, now)
        self._shipment = (broker_id, entry, len(records))

    def answered(self, entry: InFlight, header: dict[str, Any]) -> None:
        """Audit answered a shipment (its entry already out of the table): ack on ``rep``,
        retry later on ``err``."""
        broker_id = header["id"]
        entry.service.in_flight.discard(broker_id)
        if header["k"] == "err":
            entry.service.errors += 1
            self.failed(broker_id, str(header.get("code")))
            return
        shipment, self._shipment = self._shipment, None
        if shipment is None or shipment[0] != broker_id:
            return
        self.spool.ack(shipment[2], sync=False)  # made durable by the next tick's sync_soon
        self.shipped += shipment[2]
        self._delay = SHIP_RETRY_MIN_S
        self.ship_after = 0.0

    def failed(self, broker_id: int | None, reason: str) -> None:
        """The records stay spooled; the next shipment waits a growing, bounded delay. ``broker_id``
        None: the shipment never left."""
        if broker_id is not None and (self._shipment is None or self._shipment[0] != broker_id):
            return
        self._shipment = None
        self.state.totals["audit_ship_failures"] += 1
        self.ship_after = self._clock() + self._delay
        log.info("audit_delivery_deferred", reason=reason, pending=len(self.spool), retry_s=self._delay)
        self._delay = min(self._delay * 2, SHIP_RETRY_MAX_S)

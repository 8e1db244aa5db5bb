"""The broker's timers and housekeeping: deadlines, liveness, the socket monitor,
certificate reloads, periodic audit reports of noisy events, and the delivery of the
broker's audit spool to the audit service.

The broker cannot await a call, so it ships its spool itself: on a tick, when ``audit`` is
registered and no shipment is in flight, it forwards up to :data:`SHIP_BATCH` spooled records as
one ``audit.append`` request (``"from": "broker"``, ``"role": "service"``) straight to audit's
connection, remembered in the in-flight table as an entry with no caller. Audit's reply acks
them in the spool (audit answers only once they are durable); an error, a timeout or audit going
away leaves them for the next try, after a growing, bounded delay. Nothing is dropped; delivery
is at least once.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Final

import structlog
import zmq
import zmq.utils.z85

from shared import PROTOCOL_VERSION, Timeout, Unavailable, append_records, certs, encode_body, encode_header

from .state import InFlight

if TYPE_CHECKING:
    from .core import Broker
    from .state import Peer, Registration

log = structlog.get_logger("broker")

SHIP_BATCH: Final = 100           #: spooled records per ``audit.append`` shipment at most
SHIP_TTL_MS: Final = 5000         #: how long audit has to answer a shipment
SHIP_RETRY_MIN_S: Final = 0.2     #: first delay after a failed shipment ...
SHIP_RETRY_MAX_S: Final = 5.0     #: ... doubling up to this

HANDSHAKE_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}


class Upkeep:
    """Mixin of :class:`~services.broker.core.Broker`: everything driven by the clock."""

    _last_hb = 0.0
    _last_reload = 0.0
    _last_report = 0.0
    #: The shipment of spooled audit records in flight: (broker id, records in it), or None.
    _shipment: tuple[int, int] | None = None
    _ship_after = 0.0
    _ship_delay = SHIP_RETRY_MIN_S

    def _deregister(self: Broker, registration: Registration, reason: str) -> None:
        if self.services.get(registration.name) is registration:
            del self.services[registration.name]
            log.info("service_deregistered", service=registration.name, reason=reason)
        registration.peer.registration = None
        for broker_id in sorted(registration.in_flight):
            entry = self.in_flight.pop(broker_id, None)
            if entry is None:
                continue
            if entry.caller is None:
                self._shipment_failed(broker_id, "audit went away before answering")
            else:
                self._fail(entry.caller, entry.caller_id,
                           Unavailable(f"service {registration.name!r} went away before answering"))
        registration.in_flight.clear()

    def _tick(self: Broker, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            _, broker_id = heapq.heappop(self.deadlines)
            entry = self.in_flight.pop(broker_id, None)
            if entry is not None:
                entry.service.in_flight.discard(broker_id)
                self.totals["expired"] += 1
                if entry.caller is None:
                    self._shipment_failed(broker_id, "TIMEOUT")
                    continue
                self._fail(entry.caller, entry.caller_id,
                           Timeout(f"no reply from {entry.service.name!r} before the deadline"))
        self._heartbeats(now)
        self._note_unknown_keys()
        self._reload_certs(now)
        self._report(now)
        self.spool.sync()
        if self._shipment is None and len(self.spool) and now >= self._ship_after:
            self._ship_audit(now)

    # -- delivering the audit spool ---------------------------------------------

    def _ship_audit(self: Broker, now: float) -> None:
        """Forward the oldest spooled records to ``audit.append``, if audit is registered."""
        registration = self.services.get("audit")
        if registration is None:
            return
        records = append_records(self.spool.pending(SHIP_BATCH), self.cfg.max_message_bytes // 2)
        broker_id = self._ids.take(self.in_flight)
        ttl = min(SHIP_TTL_MS, self.cfg.max_ttl_ms)
        out = [encode_header({"v": PROTOCOL_VERSION, "k": "req", "id": broker_id, "to": "audit.append",
                              "ttl": ttl, "from": "broker", "role": "service"}),
               encode_body({"records": records})]
        if not self._send(registration.peer.rid, out):
            self._shipment_failed(None, "audit cannot take the request")
            return
        registration.peer.counters.msgs_out += 1
        registration.requests += 1
        registration.in_flight.add(broker_id)
        deadline = now + ttl / 1000.0
        self.in_flight[broker_id] = InFlight(None, 0, registration, deadline, now)
        heapq.heappush(self.deadlines, (deadline, broker_id))
        self._shipment = (broker_id, len(records))

    def _shipment_answered(self: Broker, entry: InFlight, header: dict[str, Any]) -> None:
        """Audit answered a shipment (called from ``_on_reply``): ack on ``rep``, retry on ``err``."""
        broker_id = header["id"]
        entry.service.in_flight.discard(broker_id)
        if header["k"] == "err":
            entry.service.errors += 1
            self._shipment_failed(broker_id, str(header.get("code")))
            return
        shipment, self._shipment = self._shipment, None
        if shipment is None or shipment[0] != broker_id:
            return
        self.spool.ack(shipment[1])
        self.audit_shipped += shipment[1]
        self._ship_delay = SHIP_RETRY_MIN_S
        self._ship_after = 0.0

    def _shipment_failed(self: Broker, broker_id: int | None, reason: str) -> None:
        """The records stay spooled; the next shipment waits a growing, bounded delay."""
        if broker_id is not None and (self._shipment is None or self._shipment[0] != broker_id):
            return
        self._shipment = None
        self.totals["audit_ship_failures"] += 1
        self._ship_after = self.clock() + self._ship_delay
        log.info("audit_delivery_deferred", reason=reason, pending=len(self.spool), retry_s=self._ship_delay)
        self._ship_delay = min(self._ship_delay * 2, SHIP_RETRY_MAX_S)

    def _heartbeats(self: Broker, now: float) -> None:
        if now - self._last_hb < self.cfg.heartbeat_interval_ms / 1000.0:
            return
        self._last_hb = now
        liveness = self.cfg.liveness_ms / 1000.0
        for rid, peer in list(self.peers.items()):
            if now - peer.last_seen > liveness:
                # Remembered as expired: if it speaks again it is told to reconnect
                # rather than silently becoming a fresh, unregistered peer.
                self._drop_peer(peer, "heartbeat lost", expired=True)
            else:
                self._send(rid, [self._hb_frame])

    def _drop_peer(self: Broker, peer: Peer, reason: str, *, expired: bool = False) -> None:
        """Forget a connection and everything that belongs to it: its registration (its
        in-flight requests fail), its subscriptions and call cache (they live on the Peer),
        and replies to its own requests (no longer forwarded, see ``_on_reply``). The
        connection's routing id and token are remembered (:class:`.connections.EndedConnections`)."""
        if self.peers.get(peer.rid) is not peer:
            return  # already dropped
        del self.peers[peer.rid]
        self.ended.remember(peer.rid, peer.conn, expired=expired)
        if peer.registration is not None:
            self._deregister(peer.registration, reason)

    def _probe_connections(self: Broker) -> None:
        """A connection closed: find out at once which tracked peer it was, so its state dies
        before another connection could take its routing id. A send to a routing id no
        connection holds fails (``ROUTER_MANDATORY``), and ``_send`` drops that peer."""
        for peer in list(self.peers.values()):
            try:
                self._send(peer.rid, [self._hb_frame])
            except zmq.ZMQError:  # any other failure to reach it: treat it as gone too
                self._drop_peer(peer, "connection closed")

    def _on_monitor(self: Broker, monitor: zmq.Socket[bytes]) -> None:
        disconnected = False
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = int.from_bytes(frames[0][:2], "little")
            if event == zmq.EVENT_DISCONNECTED:
                disconnected = True
            elif event in HANDSHAKE_EVENTS:
                self.handshake_failures[HANDSHAKE_EVENTS[event]] += 1
        if disconnected:  # one probe for a burst of disconnections
            self._probe_connections()

    def _note_unknown_keys(self: Broker) -> None:
        unknown = self.zap.unknown
        while unknown:
            raw, address = unknown.popleft()
            if self.store.record_unknown(raw, address, self.wall()):
                key = certs.fingerprint(zmq.utils.z85.encode(raw))
                self.audit("mesh.cert_pending", None, fingerprint=key, address=address)
                log.warning("unknown_certificate_pending", fingerprint=key, address=address)

    def _reload_certs(self: Broker, now: float) -> None:
        if now - self._last_reload < self.cfg.cert_reload_interval_ms / 1000.0:
            return
        self._last_reload = now
        if self.store.changed():
            self.reload_certs("directory changed")

    def reload_certs(self: Broker, reason: str) -> list[tuple[str, str]]:
        """Re-read the store; the new allow-list applies to the very next message."""
        problems = self.store.reload()
        self._by_text = self.store.snapshot.by_text
        for path, problem in problems:
            log.warning("certificate_skipped", file=path, problem=problem)
        log.info("certificates_reloaded", reason=reason, allowed=len(self._by_text))
        for peer in list(self.peers.values()):
            if peer.cert.public_key not in self.store.snapshot.by_z85:
                self._drop_peer(peer, "certificate revoked")
        return problems

    def _report(self: Broker, now: float) -> None:
        """Aggregate noisy events (handshake failures, rate limiting) into periodic audit records."""
        if now - self._last_report < 1.0:
            return
        self._last_report = now
        failures = sum(self.handshake_failures.values())
        if failures > self._handshake_reported:
            self.audit("mesh.handshake_failed", None, count=failures - self._handshake_reported,
                       by_reason=dict(self.handshake_failures))
            self._handshake_reported = failures
        for key in ("revoked_refused", "custom_routing_id_refused", "expired_refused"):
            delta = self.totals[key] - self._reported_totals.get(key, 0)
            if delta:
                self.audit("mesh.refused", None, reason=key, count=delta)
                self._reported_totals[key] = self.totals[key]
        for name, counters in self.counters.items():
            if counters.rate_limited > counters.reported_rate_limited:
                self.audit("mesh.rate_limited", None, identity=name,
                           count=counters.rate_limited - counters.reported_rate_limited)
                counters.reported_rate_limited = counters.rate_limited

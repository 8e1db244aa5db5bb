"""The broker's timers and housekeeping: everything driven by the clock or the socket monitor.

On every tick (:meth:`Upkeep.tick`, every 20 ms from the core loop): requests past their
deadline fail ``TIMEOUT``; peers silent for ``broker.liveness_ms`` are dropped and the others
get a heartbeat; refused unknown keys become pending; the certificate store is reloaded when
its files changed; noisy events (handshake failures, refusals, rate limiting) are aggregated
into periodic audit records; the spool is made durable and shipped to audit when due.

The socket monitor (:meth:`Upkeep.on_monitor`) counts failed handshakes and, on a
disconnection, probes the tracked connections so the one that closed is dropped before another
connection could be given its routing id.
"""

from __future__ import annotations

from typing import Final

import zmq

from shared import PROTOCOL_VERSION, BrokerConfig, Timeout, encode_header

from .allowlist import CertWatch
from .auditing import AuditDelivery, AuditTrail
from .outbox import Outbox
from .state import MeshState

#: The monitor events of failed handshakes, and the reason ``mesh.stats`` counts each under.
HANDSHAKE_EVENTS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
}
#: Noisy events are aggregated into one audit record per kind at most this often (seconds).
REPORT_EVERY_S: Final = 1.0
#: Refusals counted in ``totals`` and reported as ``mesh.refused`` records.
_REFUSALS: Final = ("revoked_refused", "custom_routing_id_refused", "expired_refused")


class Upkeep:
    """Called by the core loop on ticks and monitor events; calls down to the parts it keeps up."""

    def __init__(self, state: MeshState, outbox: Outbox, watch: CertWatch, delivery: AuditDelivery,
                 trail: AuditTrail, cfg: BrokerConfig) -> None:
        self.state = state
        self.outbox = outbox
        self.watch = watch
        self.delivery = delivery
        self.trail = trail
        self._hb_every = cfg.heartbeat_interval_ms / 1000.0
        self._liveness = cfg.liveness_ms / 1000.0
        self._hb_frame = encode_header({"v": PROTOCOL_VERSION, "k": "hb"})
        self._last_hb = 0.0
        self._last_report = 0.0
        self._reported_totals: dict[str, int] = {}
        self._handshake_reported = 0

    def tick(self, now: float) -> None:
        """Do everything that is due at ``now`` (the broker's monotonic clock)."""
        for broker_id, entry in self.state.expired(now):
            self.state.totals["expired"] += 1
            if entry.caller is None:
                self.delivery.failed(broker_id, "TIMEOUT")
                continue
            self.outbox.fail(entry.caller, entry.caller_id,
                             Timeout(f"no reply from {entry.service.name!r} before the deadline"))
        self._heartbeats(now)
        self.watch.note_unknown_keys()
        self.watch.poll(now)
        self._report(now)
        self.trail.sync_soon()
        self.delivery.tick(now)

    def _heartbeats(self, now: float) -> None:
        if now - self._last_hb < self._hb_every:
            return
        self._last_hb = now
        for rid, peer in list(self.state.peers.items()):
            if now - peer.last_seen > self._liveness:
                # Remembered as expired: if it speaks again it is told to reconnect
                # rather than silently becoming a fresh, unregistered peer.
                self.outbox.drop(peer, "heartbeat lost", expired=True)
            else:
                self.outbox.send(rid, [self._hb_frame])

    def on_monitor(self, monitor: zmq.Socket[bytes]) -> None:
        """Read every pending monitor event: count failed handshakes, probe after disconnections."""
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
                self.state.handshake_failures[HANDSHAKE_EVENTS[event]] += 1
        if disconnected:  # one probe for a burst of disconnections
            self._probe_connections()

    def _probe_connections(self) -> None:
        """A connection closed: find out at once which tracked peer it was, so its state dies
        before another connection could take its routing id. A send to a routing id no
        connection holds fails (``ROUTER_MANDATORY``), and the outbox drops that peer."""
        for peer in list(self.state.peers.values()):
            try:
                self.outbox.send(peer.rid, [self._hb_frame])
            except zmq.ZMQError:  # any other failure to reach it: treat it as gone too
                self.outbox.drop(peer, "connection closed")

    def _report(self, now: float) -> None:
        """Aggregate noisy events (handshake failures, refusals, rate limiting) into audit records."""
        if now - self._last_report < REPORT_EVERY_S:
            return
        self._last_report = now
        state, trail = self.state, self.trail
        failures = sum(state.handshake_failures.values())
        if failures > self._handshake_reported:
            trail.record("mesh.handshake_failed", count=failures - self._handshake_reported,
                         by_reason=dict(state.handshake_failures))
            self._handshake_reported = failures
        for key in _REFUSALS:
            delta = state.totals[key] - self._reported_totals.get(key, 0)
            if delta:
                trail.record("mesh.refused", reason=key, count=delta)
                self._reported_totals[key] = state.totals[key]
        for name, counters in state.counters.items():
            if counters.rate_limited > counters.reported_rate_limited:
                trail.record("mesh.rate_limited", identity=name,
                             count=counters.rate_limited - counters.reported_rate_limited)
                counters.reported_rate_limited = counters.rate_limited

"""How the broker handles each kind of message a peer sends (the dispatch table's targets).

Requests are forwarded under a broker-chosen id and remembered in the in-flight
table; a reply is accepted only from the connection the request went to and is
routed back to the connection the request came from. Events go to every live
subscriber whose prefix matches; topic rights are checked at publish and at
subscribe time.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import structlog
import zmq

from shared import (
    PROTOCOL_VERSION,
    WIRE_CODES,
    BadRequest,
    Conflict,
    Unavailable,
    encode_header,
    error_text,
    split_target,
)

from .state import InFlight, Registration

if TYPE_CHECKING:
    from .core import Broker
    from .state import Peer

log = structlog.get_logger("broker")


class Routing:
    """Mixin of :class:`~services.broker.core.Broker`: one method per message kind."""

    def _on_request(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        request_id = header["id"]
        if self._limited(peer, request_id, now):
            return
        target = header["to"]
        allowed = peer.call_cache.get(target)
        if allowed is None:
            try:
                service, method = split_target(target)
            except BadRequest as exc:
                self._fail(peer, request_id, exc)
                return
            allowed = peer.grant.may_call(service, method)
            if len(peer.call_cache) < 1024:
                peer.call_cache[target] = allowed
        if not allowed:
            self._deny(peer, request_id, "call", target)
            return
        service, _, method = target.partition(".")
        ttl = header["ttl"] or self.cfg.default_ttl_ms
        if ttl > self.cfg.max_ttl_ms:
            self._fail(peer, request_id, BadRequest(f"ttl above the limit of {self.cfg.max_ttl_ms} ms"))
            return
        if service == "mesh":
            self.introspection.handle(peer, request_id, method, body)
            return
        registration = self.services.get(service)
        if registration is None:
            self._fail(peer, request_id, Unavailable(f"service {service!r} is not registered"))
            return
        broker_id = self._ids.take(self.in_flight)
        deadline = now + ttl / 1000.0
        out = [encode_header({"v": PROTOCOL_VERSION, "k": "req", "id": broker_id, "to": target,
                              "ttl": ttl, "from": peer.cert.name, "role": peer.cert.role})]
        if body is not None:
            out.append(body)
        if not self._send(registration.peer.rid, out):
            self._fail(peer, request_id, Unavailable(f"service {service!r} cannot take the request"))
            return
        registration.peer.counters.msgs_out += 1
        registration.requests += 1
        registration.in_flight.add(broker_id)
        self.in_flight[broker_id] = InFlight(peer, request_id, registration, deadline, now)
        deadlines = self.deadlines
        heapq.heappush(deadlines, (deadline, broker_id))
        if len(deadlines) > 2 * len(self.in_flight) + 1024:
            # Answered requests leave their deadline behind (lazy deletion); compact
            # now and then so the heap stays proportional to what is really in flight.
            self.deadlines = [(e.deadline, i) for i, e in self.in_flight.items()]
            heapq.heapify(self.deadlines)

    def _on_reply(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        entry = self.in_flight.get(header["id"])
        if entry is None or entry.service.peer is not peer:
            # Late (after a timeout) or not ours to answer: never forwarded.
            self.totals["stray_replies"] += 1
            return
        del self.in_flight[header["id"]]
        caller = entry.caller
        if caller is None:  # the broker's own shipment of spooled audit records
            self._shipment_answered(entry, header)
            return
        if self.peers.get(caller.rid) is not caller:
            # The caller was dropped (revoked or expired) since it asked: not forwarded.
            entry.service.in_flight.discard(header["id"])
            self.totals["stray_replies"] += 1
            return
        registration = entry.service
        registration.in_flight.discard(header["id"])
        registration.latencies.append(now - entry.started)
        out_header: dict[str, Any] = {"v": PROTOCOL_VERSION, "k": header["k"], "id": entry.caller_id,
                                      "from": registration.name}
        if header["k"] == "err":
            registration.errors += 1
            out_header["code"] = header["code"] if header["code"] in WIRE_CODES else "INTERNAL"
            out_header["msg"] = error_text(header["msg"])
        out: list[Any] = [encode_header(out_header)]
        if body is not None:
            out.append(body)
        if self._send(caller.rid, out):
            caller.counters.msgs_out += 1

    def _on_publish(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        request_id, topic = header["id"], header["topic"]
        if self._limited(peer, request_id, now):
            return
        if not peer.grant.may_publish(topic):
            self._deny(peer, request_id, "publish", topic)
            return
        self.publish(topic, peer.cert.name, body)
        self._ok(peer, request_id)

    def publish(self: Broker, topic: str, sender: str, body: Any) -> int:
        """Deliver an event to every live subscriber whose prefix matches; return how many."""
        event = encode_header({"v": PROTOCOL_VERSION, "k": "evt", "topic": topic, "from": sender})
        frames = [event] if body is None else [event, body]
        delivered = 0
        for sub in list(self.peers.values()):
            if not sub.subscriptions or sub.cert.public_key not in self.store.snapshot.by_z85:
                continue
            if any(topic.startswith(p) for p in sub.subscriptions):
                if self._send(sub.rid, frames):
                    sub.counters.msgs_out += 1
                    delivered += 1
        return delivered

    def _on_subscribe(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        request_id, topic = header["id"], header["topic"]
        if self._limited(peer, request_id, now):
            return
        if not topic or not peer.grant.may_subscribe(topic):
            self._deny(peer, request_id, "subscribe", topic)
            return
        if len(peer.subscriptions) >= 64:
            self._fail(peer, request_id, BadRequest("at most 64 subscriptions per connection"))
            return
        # "*" subscribes to every topic (only an identity granted "*" gets this far).
        peer.subscriptions.add("" if topic == "*" else topic)
        self._ok(peer, request_id)

    def _on_unsubscribe(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        if self._limited(peer, header["id"], now):
            return
        peer.subscriptions.discard("" if header["topic"] == "*" else header["topic"])
        self._ok(peer, header["id"])

    def _on_register(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        request_id, name = header["id"], header["name"]
        if self._limited(peer, request_id, now):
            return
        if peer.cert.role != "service" or name != peer.cert.name or name == "mesh":
            self._deny(peer, request_id, "register", name)
            return
        if peer.registration is not None or peer.said_goodbye:
            self._fail(peer, request_id, Conflict("this connection has already registered"))
            return
        old = self.services.get(name)
        if old is not None:
            # The same authenticated identity on a new connection: the old one is a
            # previous incarnation (a restart); its unanswered requests fail now.
            self._deregister(old, "replaced by a new connection")
        peer.registration = self.services[name] = Registration(name, peer, now)
        self.audit("mesh.register", peer, service=name)
        log.info("service_registered", service=name)
        self._ok(peer, request_id)

    def _on_bye(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        # Stop routing new requests to it, but keep what is in flight: a stopping
        # service finishes its work and its replies are still forwarded.
        if self._limited(peer, header["id"], now):
            return
        registration = peer.registration
        peer.said_goodbye = registration is not None
        if registration is not None and self.services.get(registration.name) is registration:
            del self.services[registration.name]
            log.info("service_deregistered", service=registration.name, reason="said goodbye")
        self._ok(peer, header["id"])

    def _on_heartbeat(self: Broker, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """Nothing to do: receiving any message already refreshed the peer's liveness."""

    # -- registry and timers ---------------------------------------------------

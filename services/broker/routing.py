"""How the broker handles each kind of message a peer sends, once the peer is known.

Requests are checked (rate limit, ACL, ttl bound), then forwarded under a broker-chosen id
and remembered in the in-flight table; a reply is accepted only from the connection the
request went to and is routed back to the connection the request came from. Requests to
``mesh`` are answered by the broker's own service (:mod:`.service`) after the same checks.
Events go to every live subscriber whose prefix matches; topic rights are checked at publish
and at subscribe time. Every deny is answered ``FORBIDDEN``, counted, audited and logged
(:mod:`.denials`).

:attr:`Routing.kinds` is the dispatch table the core loop calls, one entry per message kind.
Routing calls down only: the state, the outbox, the audit trail, the mesh service and the audit
delivery (for audit's answers to the broker's own shipments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import structlog
import zmq

from shared import (
    PROTOCOL_VERSION,
    WIRE_CODES,
    BadRequest,
    BrokerConfig,
    Conflict,
    Forbidden,
    MeshError,
    RateLimited,
    Unavailable,
    encode_header,
    error_text,
    split_target,
)

from .auditing import AuditDelivery, AuditTrail
from .certstore import CertStore
from .denials import DenyLog, caller_message
from .outbox import Outbox
from .service import MeshService
from .state import CALL_CACHE_MAX, MeshState, Peer, Registration

log = structlog.get_logger("broker")

#: What the core loop calls for a message of one kind: (peer, header, body frame, now).
KindHandler: TypeAlias = Callable[[Peer, dict[str, Any], "zmq.Frame | None", float], None]


class Routing:
    """One method per message kind, and the checks they share."""

    def __init__(self, state: MeshState, outbox: Outbox, trail: AuditTrail, store: CertStore,
                 mesh: MeshService, delivery: AuditDelivery, cfg: BrokerConfig,
                 clock: Callable[[], float]) -> None:
        self.state = state
        self.outbox = outbox
        self.trail = trail
        self.store = store
        self.mesh = mesh
        self.delivery = delivery
        self.denials = DenyLog()
        self._clock = clock
        # The hot path reads these on every request: bound once (the containers are never replaced).
        self._peers = state.peers
        self._services = state.services
        self._in_flight = state.in_flight
        self._ids = state.ids
        self._default_ttl = cfg.default_ttl_ms
        self._max_ttl = cfg.max_ttl_ms
        self.kinds: dict[str, KindHandler] = {
            "req": self.on_request, "rep": self.on_reply, "err": self.on_reply,
            "pub": self.on_publish, "sub": self.on_subscribe, "unsub": self.on_unsubscribe,
            "reg": self.on_register, "bye": self.on_bye, "hb": self.on_heartbeat,
        }

    # -- checks ---------------------------------------------------------------------

    def _limited(self, peer: Peer, request_id: int, now: float) -> bool:
        if peer.bucket.take(now):
            return False
        peer.counters.rate_limited += 1
        self.outbox.fail(peer, request_id, RateLimited("rate limit exceeded; slow down"))
        return True

    def _deny(self, peer: Peer, request_id: int, action: str, target: str) -> None:
        peer.counters.denies += 1
        self.trail.record("mesh.deny", actor=peer.cert.name, role=peer.cert.role, action=action, target=target)
        self.denials.note(peer.cert.name, peer.cert.role, action, target, self._clock())
        self.outbox.fail(peer, request_id, Forbidden(caller_message(peer.cert.name, action, target)))

    # -- requests and replies ---------------------------------------------------------

    def on_request(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``req``: rate limit, ACL, ttl bound; then ``mesh.*`` is answered here and anything else
        is forwarded to the registered service, stamped with the caller's identity and role."""
        request_id = header["id"]
        if self._limited(peer, request_id, now):
            return
        target = header["to"]
        allowed = peer.call_cache.get(target)
        if allowed is None:
            try:
                service, method = split_target(target)
            except BadRequest as exc:
                self.outbox.fail(peer, request_id, exc)
                return
            allowed = peer.grant.may_call(service, method)
            if len(peer.call_cache) < CALL_CACHE_MAX:
                peer.call_cache[target] = allowed
        if not allowed:
            self._deny(peer, request_id, "call", target)
            return
        service, _, method = target.partition(".")
        ttl = header["ttl"] or self._default_ttl
        if ttl > self._max_ttl:
            self.outbox.fail(peer, request_id, BadRequest(f"ttl above the limit of {self._max_ttl} ms"))
            return
        if service == "mesh":
            self._call_mesh(peer, request_id, method, body, now + ttl / 1000.0)
            return
        registration = self._services.get(service)
        if registration is None:
            self.outbox.fail(peer, request_id, Unavailable(f"service {service!r} is not registered"))
            return
        broker_id = self._ids.take(self._in_flight)
        out: list[Any] = [encode_header({"v": PROTOCOL_VERSION, "k": "req", "id": broker_id, "to": target,
                                         "ttl": ttl, "from": peer.cert.name, "role": peer.cert.role,
                                         "fp": peer.fingerprint})]
        if body is not None:
            out.append(body)
        if not self.outbox.send(registration.peer.rid, out):
            self.outbox.fail(peer, request_id, Unavailable(f"service {service!r} cannot take the request"))
            return
        registration.peer.counters.msgs_out += 1
        registration.requests += 1
        self.state.track(broker_id, peer, request_id, registration, ttl, now)

    def _call_mesh(self, peer: Peer, request_id: int, method: str, body: zmq.Frame | None,
                   deadline: float) -> None:
        try:
            reply = self.mesh.call(method, body, peer.cert, deadline)
        except MeshError as exc:
            self.outbox.fail(peer, request_id, exc)
            return
        self.outbox.ok(peer, request_id, reply)

    def on_reply(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``rep``/``err``: forwarded to the caller only from the connection the request went to,
        and only while the caller is still tracked; an unknown error code becomes ``INTERNAL``."""
        entry = self._in_flight.get(header["id"])
        if entry is None or entry.service.peer is not peer:
            # Late (after a timeout) or not ours to answer: never forwarded.
            self.state.totals["stray_replies"] += 1
            return
        del self._in_flight[header["id"]]
        caller = entry.caller
        if caller is None:  # the broker's own shipment of spooled audit records
            self.delivery.answered(entry, header)
            return
        if self._peers.get(caller.rid) is not caller:
            # The caller was dropped (revoked or expired) since it asked: not forwarded.
            entry.service.in_flight.discard(header["id"])
            self.state.totals["stray_replies"] += 1
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
        if self.outbox.send(caller.rid, out):
            caller.counters.msgs_out += 1

    # -- events -------------------------------------------------------------------------

    def on_publish(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``pub``: rate limit and the topic right, then delivery (:meth:`publish`) and ``rep``."""
        request_id, topic = header["id"], header["topic"]
        if self._limited(peer, request_id, now):
            return
        if not peer.grant.may_publish(topic):
            self._deny(peer, request_id, "publish", topic)
            return
        self.publish(topic, peer.cert.name, body)
        self.outbox.ok(peer, request_id)

    def publish(self, topic: str, sender: str, body: Any) -> int:
        """Deliver an event to every live subscriber whose prefix matches; return how many."""
        event = encode_header({"v": PROTOCOL_VERSION, "k": "evt", "topic": topic, "from": sender})
        frames = [event] if body is None else [event, body]
        delivered = 0
        for sub in list(self._peers.values()):
            if not sub.subscriptions or sub.cert.public_key not in self.store.snapshot.by_z85:
                continue
            if any(topic.startswith(p) for p in sub.subscriptions):
                if self.outbox.send(sub.rid, frames):
                    sub.counters.msgs_out += 1
                    delivered += 1
        return delivered

    def on_subscribe(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``sub``: rate limit and the prefix right (a prefix allows only what every topic it
        matches is allowed), at most 64 per connection."""
        request_id, topic = header["id"], header["topic"]
        if self._limited(peer, request_id, now):
            return
        if not topic or not peer.grant.may_subscribe(topic):
            self._deny(peer, request_id, "subscribe", topic)
            return
        if len(peer.subscriptions) >= 64:
            self.outbox.fail(peer, request_id, BadRequest("at most 64 subscriptions per connection"))
            return
        # "*" subscribes to every topic (only an identity granted "*" gets this far).
        peer.subscriptions.add("" if topic == "*" else topic)
        self.outbox.ok(peer, request_id)

    def on_unsubscribe(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``unsub``: forget one prefix of this connection (answered ``rep`` even if it had none)."""
        if self._limited(peer, header["id"], now):
            return
        peer.subscriptions.discard("" if header["topic"] == "*" else header["topic"])
        self.outbox.ok(peer, header["id"])

    # -- registration and liveness ----------------------------------------------------

    def on_register(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``reg``: a ``service`` certificate registers under its own name only, once per connection;
        a registration of the same name on another connection is replaced (a restart)."""
        request_id, name = header["id"], header["name"]
        if self._limited(peer, request_id, now):
            return
        if peer.cert.role != "service" or name != peer.cert.name or name == "mesh":
            self._deny(peer, request_id, "register", name)
            return
        if peer.registration is not None or peer.said_goodbye:
            self.outbox.fail(peer, request_id, Conflict("this connection has already registered"))
            return
        old = self._services.get(name)
        if old is not None:
            # The same authenticated identity on a new connection: the old one is a
            # previous incarnation (a restart); its unanswered requests fail now.
            self.outbox.deregister(old, "replaced by a new connection")
        peer.registration = self._services[name] = Registration(name, peer, now)
        self.trail.record("mesh.register", actor=peer.cert.name, role=peer.cert.role, service=name)
        log.info("service_registered", service=name)
        self.outbox.ok(peer, request_id)

    def on_bye(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """``bye``: no new requests are routed to this connection's service."""
        # Stop routing new requests to it, but keep what is in flight: a stopping
        # service finishes its work and its replies are still forwarded.
        if self._limited(peer, header["id"], now):
            return
        registration = peer.registration
        peer.said_goodbye = registration is not None
        if registration is not None and self._services.get(registration.name) is registration:
            del self._services[registration.name]
            log.info("service_deregistered", service=registration.name, reason="said goodbye")
        self.outbox.ok(peer, header["id"])

    def on_heartbeat(self, peer: Peer, header: dict[str, Any], body: zmq.Frame | None, now: float) -> None:
        """Nothing to do: receiving any message already refreshed the peer's liveness."""

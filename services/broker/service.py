"""The broker's own service, ``mesh``: its methods are handlers like every other service's.

Each group of ``mesh.*`` methods is a :class:`MeshHandlers` class whose methods are declared with
:func:`shared.handler`; as for a :class:`shared.Service`, the decorator only records a
:class:`~shared.HandlerSpec` (wire name, request schema, sensitive fields) and the class collects
the specs into its explicit table :attr:`MeshHandlers.handlers`. :class:`MeshService` joins the
groups' tables and dispatches on them alone, never with ``getattr`` on a wire name: the body is
decoded and checked against the handler's declared request type, exactly as the service runtime
does, and anything not in a table is ``BAD_REQUEST``.

The broker is the server, so it answers ``mesh.*`` in its own process and loop, which cannot wait:
a handler is declared ``async`` (the mechanism is shared) but must finish without suspending, and
is run to completion at once (:func:`run_to_completion`). Who may call which method is the mesh
ACL's decision (the operator role by default), made before a call gets here.

This module also holds the introspection group (``ping``, ``services``, ``stats``); the
certificate methods are in :mod:`.allowlist`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import zmq

from shared import (
    BadRequest,
    Certificate,
    HandlerSpec,
    Internal,
    RequestContext,
    Spool,
    decode_body,
    encode_body,
    handler,
    handler_table,
)

from .auditing import AuditDelivery
from .certstore import CertStore
from .connections import connection_mode
from .flusher import Flusher
from .schema import Empty
from .state import MeshState, percentile
from .zap import ZapHandler


class MeshHandlers:
    """Base of a group of ``mesh.*`` handlers: collects the specs ``@handler`` recorded on the class
    (and its bases) into :attr:`handlers`, wire name to spec, the way :class:`shared.Service` does."""

    handlers: ClassVar[Mapping[str, HandlerSpec]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handlers = MappingProxyType(handler_table(cls))


def run_to_completion(awaitable: Awaitable[Any]) -> Any:
    """The result of a coroutine that finishes without suspending; a handler that would wait is a
    bug in the broker, raised as :class:`RuntimeError` (answered ``INTERNAL``, logged)."""
    if not isinstance(awaitable, Coroutine):
        raise TypeError("a mesh.* handler must be a coroutine function")
    try:
        awaitable.send(None)
    except StopIteration as done:
        return done.value
    awaitable.close()
    raise RuntimeError("a mesh.* handler tried to wait; the broker's loop cannot")


class MeshService:
    """Dispatches ``mesh.<method>`` to the one handler of the groups that declares it."""

    name: ClassVar[str] = "mesh"

    def __init__(self, *groups: MeshHandlers, max_body: int) -> None:
        table: dict[str, tuple[MeshHandlers, HandlerSpec]] = {}
        for group in groups:
            for wire_name, spec in type(group).handlers.items():
                if wire_name in table:
                    raise ValueError(f"mesh.{wire_name} is declared twice")
                table[wire_name] = (group, spec)
        #: Wire name (``certs.list``) -> the group that answers it and its handler's spec.
        self.table: Mapping[str, tuple[MeshHandlers, HandlerSpec]] = MappingProxyType(table)
        self._max_body = max_body

    def call(self, method: str, body: zmq.Frame | None, caller: Certificate, deadline: float) -> bytes:
        """Run ``mesh.<method>`` for ``caller`` and return the encoded reply body; a refusal is
        raised as its :class:`~shared.MeshError`."""
        entry = self.table.get(method)
        if entry is None:
            raise BadRequest(f"unknown method mesh.{method}")
        group, spec = entry
        value = decode_body(body.bytes, self._max_body) if body is not None else None
        request = spec.request.from_wire(value)
        ctx = RequestContext(caller=caller.name, role=caller.role, method=spec.wire_name, deadline=deadline,
                             fingerprint=caller.fingerprint)
        result = run_to_completion(spec.function(group, ctx, request))
        try:
            if spec.reply is not None and not isinstance(result, spec.reply):
                result = spec.reply.from_wire(result)
        except BadRequest:  # the handler broke its own declared reply: the broker's bug
            raise Internal("internal error") from None
        return encode_body(result.to_wire() if hasattr(result, "to_wire") else result)


class Introspection(MeshHandlers):
    """``mesh.ping``, ``mesh.services`` and ``mesh.stats``: what the broker sees of the mesh."""

    def __init__(self, *, state: MeshState, store: CertStore, spool: Spool, delivery: AuditDelivery,
                 flusher: Flusher, zap: ZapHandler, certificate: Certificate, endpoints: list[str],
                 clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.state = state
        self.store = store
        self.spool = spool
        self.delivery = delivery
        self.flusher = flusher
        self.zap = zap
        self.certificate = certificate
        #: The broker's bound endpoints: the core's own list, filled when it binds.
        self.endpoints = endpoints
        self._clock = clock
        self._wall = wall
        self.started = wall()

    @handler("ping", request=Empty)
    async def ping(self, ctx: RequestContext, _: Empty) -> dict[str, Any]:
        """``mesh.ping`` → ``{"pong": true, "time": <unix seconds>}``. ``meshctl ping mesh``."""
        return {"pong": True, "time": self._wall()}

    @handler("services", request=Empty)
    async def services(self, ctx: RequestContext, _: Empty) -> list[dict[str, Any]]:
        """``mesh.services`` → one map per registered service, sorted by name: ``name``,
        ``fingerprint``, ``registered_for_s``, ``heartbeat_age_s``, ``in_flight``, ``requests``,
        ``errors``, ``p50_ms``, ``p99_ms`` (nil before the first reply). ``meshctl status``."""
        now = self._clock()
        out = []
        for name, reg in sorted(self.state.services.items()):
            p50 = percentile(reg.latencies, 0.5)
            p99 = percentile(reg.latencies, 0.99)
            out.append({
                "name": name, "fingerprint": reg.peer.cert.fingerprint,
                "registered_for_s": round(now - reg.registered_at, 3),
                "heartbeat_age_s": round(now - reg.peer.last_seen, 3),
                "in_flight": len(reg.in_flight), "requests": reg.requests, "errors": reg.errors,
                "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            })
        return out

    @handler("stats", request=Empty)
    async def stats(self, ctx: RequestContext, _: Empty) -> dict[str, Any]:
        """``mesh.stats`` → counters per identity, totals, handshake failures, endpoints, the
        certificate store and the audit spool (docs/protocol.md §11.3). ``meshctl status``."""
        state, store, spool = self.state, self.store, self.spool
        return {
            "endpoints": list(self.endpoints),
            "public_key": self.certificate.public_key.decode(),
            "fingerprint": self.certificate.fingerprint,
            "uptime_s": round(self._wall() - self.started, 3),
            "zap_alive": self.zap.alive(), "zap_errors": self.zap.errors,
            "identities": {name: {"msgs_in": c.msgs_in, "msgs_out": c.msgs_out, "denies": c.denies,
                                  "errors": c.errors, "rate_limited": c.rate_limited}
                           for name, c in sorted(state.counters.items())},
            "connections": len(state.peers),
            # Paired devices connected now, and how: detached (tcp) or coupled (ipc).
            "devices": sorted(({"name": p.cert.name, "mode": connection_mode(p.address), "address": p.address,
                                "connected_for_s": round(self._clock() - p.connected_at, 3)}
                               for p in state.peers.values() if p.cert.role == "device"), key=lambda d: d["name"]),
            "in_flight": len(state.in_flight),
            "totals": dict(state.totals),
            "handshake_failures": dict(state.handshake_failures),
            "pending_certificates": len(store.pending),
            "pending_dropped": store.pending_dropped, "pending_throttled": store.pending_throttled,
            "certificate_problems": [{"file": f, "problem": p} for f, p in store.problems],
            "audit_spool": {"records": len(spool), "dropped": spool.dropped, "shipped": self.delivery.shipped,
                            "slow_syncs": self.flusher.slow, "longest_sync_s": round(self.flusher.longest_s, 3)},
        }

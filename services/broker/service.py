"""The broker's own ``mesh.*`` methods: introspection and the certificate store.

Dispatch goes through the explicit table :attr:`Introspection.methods`;
anything else is ``BAD_REQUEST``. Who may call which method is the mesh ACL's
decision (the operator role by default), made before a call gets here.
Changes to the store are audited: the record is durable in the broker's spool (fsync)
before the change is answered, and shipped to the audit service from there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from shared import BadRequest, MeshError, certs, decode_body, encode_body

from .schema import CertAccept, CertList, CertRef, Empty
from .state import Peer, percentile

if TYPE_CHECKING:
    from .core import Broker

Method = Callable[[Peer, Any], Any]


class Introspection:
    """Handlers for ``mesh.<method>``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.methods: dict[str, tuple[type[Any], Method]] = {
            "ping": (Empty, self.ping),
            "services": (Empty, self.services),
            "stats": (Empty, self.stats),
            "certs.list": (CertList, self.certs_list),
            "certs.pending": (Empty, self.certs_pending),
            "certs.show": (CertRef, self.certs_show),
            "certs.accept": (CertAccept, self.certs_accept),
            "certs.reject": (CertRef, self.certs_reject),
            "certs.revoke": (CertRef, self.certs_revoke),
            "certs.unrevoke": (CertRef, self.certs_unrevoke),
            "certs.reload": (Empty, self.certs_reload),
        }

    def handle(self, peer: Peer, request_id: int, method: str, body: zmq.Frame | None) -> None:
        entry = self.methods.get(method)
        try:
            if entry is None:
                raise BadRequest(f"unknown method mesh.{method}")
            schema, fn = entry
            value = decode_body(body.bytes, self.broker.cfg.max_message_bytes) if body is not None else None
            reply = fn(peer, schema.from_wire(value))
            self.broker._ok(peer, request_id, encode_body(reply))
        except MeshError as exc:
            self.broker._fail(peer, request_id, exc)

    # -- introspection ----------------------------------------------------------

    def ping(self, peer: Peer, _: Empty) -> dict[str, Any]:
        """``mesh.ping`` → ``{"pong": true, "time": <unix seconds>}``. ``meshctl ping mesh``."""
        return {"pong": True, "time": self.broker.wall()}

    def services(self, peer: Peer, _: Empty) -> list[dict[str, Any]]:
        """``mesh.services`` → one map per registered service. ``meshctl status``."""
        now = self.broker.clock()
        out = []
        for name, reg in sorted(self.broker.services.items()):
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

    def stats(self, peer: Peer, _: Empty) -> dict[str, Any]:
        """``mesh.stats`` → counters per identity, totals, handshake failures, endpoints. ``meshctl status``."""
        b = self.broker
        return {
            "endpoints": list(b.endpoints),
            "public_key": b.keypair.certificate.public_key.decode(),
            "fingerprint": b.keypair.certificate.fingerprint,
            "uptime_s": round(b.wall() - b.started, 3),
            "zap_alive": b.zap.alive(), "zap_errors": b.zap.errors,
            "identities": {name: {"msgs_in": c.msgs_in, "msgs_out": c.msgs_out, "denies": c.denies,
                                  "errors": c.errors, "rate_limited": c.rate_limited}
                           for name, c in sorted(b.counters.items())},
            "connections": len(b.peers),
            "in_flight": len(b.in_flight),
            "totals": dict(b.totals),
            "handshake_failures": dict(b.handshake_failures),
            "pending_certificates": len(b.store.pending),
            "pending_dropped": b.store.pending_dropped, "pending_throttled": b.store.pending_throttled,
            "certificate_problems": [{"file": f, "problem": p} for f, p in b.store.problems],
            "audit_spool": {"records": len(b.spool), "dropped": b.spool.dropped, "shipped": b.audit_shipped},
        }

    # -- certificates -------------------------------------------------------------

    def certs_list(self, peer: Peer, req: CertList) -> list[dict[str, Any]]:
        """``mesh.certs.list {state?}``: every key, or those in one state. ``meshctl certs list``."""
        if req.state is not None and req.state not in ("allowed", "pending", "rejected", "revoked"):
            raise BadRequest("state must be allowed, pending, rejected or revoked")
        return self.broker.store.entries(req.state)

    def certs_pending(self, peer: Peer, _: Empty) -> list[dict[str, Any]]:
        """``mesh.certs.pending``: unknown keys that tried to connect. ``meshctl certs pending``."""
        return self.broker.store.entries("pending")

    def certs_show(self, peer: Peer, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.show {ref}``: one key. ``meshctl certs show REF``."""
        state, key = self.broker.store.find_key(req.ref)
        return next(e for e in self.broker.store.entries(state) if e["public_key"] == key.decode())

    def certs_accept(self, peer: Peer, req: CertAccept) -> dict[str, Any]:
        """``mesh.certs.accept {ref, name, role}``: a pending or rejected key only; a revoked one
        answers ``NOT_FOUND`` naming ``meshctl certs unrevoke``. ``meshctl certs accept REF --name N --role R``."""
        cert = self.broker.store.accept(req.ref, req.name, req.role)
        self.broker.reload_certs("certificate accepted")
        self.broker.audit("mesh.cert_accept", peer, name=cert.name, cert_role=cert.role,
                          fingerprint=cert.fingerprint)
        self.broker.spool.sync()  # durable before the operator is told it is done
        return {"name": cert.name, "role": cert.role, "fingerprint": cert.fingerprint}

    def certs_reject(self, peer: Peer, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.reject {ref}``. ``meshctl certs reject REF``."""
        key = self.broker.store.reject(req.ref)
        self.broker.audit("mesh.cert_reject", peer, fingerprint=certs.fingerprint(key))
        self.broker.spool.sync()
        return {"fingerprint": certs.fingerprint(key)}

    def certs_revoke(self, peer: Peer, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.revoke {ref}``: takes effect on the next message of live connections.
        ``meshctl certs revoke REF``."""
        cert = self.broker.store.revoke(req.ref)
        self.broker.reload_certs("certificate revoked")
        self.broker.audit("mesh.cert_revoke", peer, name=cert.name, fingerprint=cert.fingerprint)
        self.broker.spool.sync()
        return {"name": cert.name, "fingerprint": cert.fingerprint}

    def certs_unrevoke(self, peer: Peer, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.unrevoke {ref}`` → ``{"name", "role", "fingerprint"}``: a revoked key is
        allowed again under the name and role it had; its next handshake is admitted.
        ``meshctl certs unrevoke REF``."""
        cert = self.broker.store.unrevoke(req.ref)
        self.broker.reload_certs("certificate unrevoked")
        self.broker.audit("mesh.cert_unrevoke", peer, name=cert.name, cert_role=cert.role,
                          fingerprint=cert.fingerprint)
        self.broker.spool.sync()  # durable before the operator is told it is done
        return {"name": cert.name, "role": cert.role, "fingerprint": cert.fingerprint}

    def certs_reload(self, peer: Peer, _: Empty) -> dict[str, Any]:
        """``mesh.certs.reload``: re-read the store now. ``meshctl certs reload``."""
        problems = self.broker.reload_certs("operator request")
        return {"allowed": len(self.broker.store.snapshot.by_z85),
                "problems": [{"file": f, "problem": p} for f, p in problems]}

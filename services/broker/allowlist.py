"""The allow-list in the running broker: changes applied to live connections, and the operators'
``mesh.certs.*`` methods that make them.

:class:`~.certstore.CertStore` loads and changes the files; :class:`CertWatch` makes each change
count at once (invariant 4): after every reload it publishes the lookup the hot path checks on
every message (:attr:`CertWatch.by_text`, the key a message's ZAP metadata carries), and drops
every tracked connection whose key is no longer allowed. It reloads when an operator changes the
store, and by itself when the store's files change (checked every
``broker.cert_reload_interval_ms``). It also turns the unknown keys the ZAP handler refused into
pending entries an operator can accept, each recorded for audit.

:class:`CertMethods` are the ``mesh.certs.*`` handlers. A ``ref`` names a key by identity name, Z85
public key or fingerprint (a prefix of 8+ hex digits), resolved as docs/protocol.md §11 says.
Changes to the store are audited: the record is durable in the broker's spool (fsync) before the
change is answered, and shipped to the audit service from there.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import zmq.utils.z85

from shared import BadRequest, Certificate, RequestContext, certs, handler

from .auditing import AuditTrail
from .certstore import CertStore
from .outbox import Outbox
from .schema import CertAccept, CertList, CertRef, Empty
from .service import MeshHandlers
from .state import MeshState

log = structlog.get_logger("broker")

_STATES = ("allowed", "pending", "rejected", "revoked")


class CertWatch:
    """Reloads the store and applies the result to the connections the broker tracks."""

    def __init__(self, store: CertStore, state: MeshState, outbox: Outbox, trail: AuditTrail,
                 unknown: collections.deque[tuple[bytes, str]], wall: Callable[[], float],
                 reload_interval_s: float) -> None:
        self.store = store
        self.state = state
        self.outbox = outbox
        self.trail = trail
        #: Raw keys (and addresses) the ZAP handler refused as unknown, filled by its thread.
        self.unknown = unknown
        self._wall = wall
        self._interval = reload_interval_s
        self._last_reload = 0.0
        #: Z85 key text -> allowed certificate: what the hot path looks a message's key up in.
        self.by_text: Mapping[str, Certificate] = store.snapshot.by_text

    def reload(self, reason: str) -> list[tuple[str, str]]:
        """Re-read the store; the new allow-list applies to the very next message. Returns the
        files it skipped, with why."""
        problems = self.store.reload()
        snapshot = self.store.snapshot
        self.by_text = snapshot.by_text
        for path, problem in problems:
            log.warning("certificate_skipped", file=path, problem=problem)
        log.info("certificates_reloaded", reason=reason, allowed=len(self.by_text))
        for peer in list(self.state.peers.values()):
            if peer.cert.public_key not in snapshot.by_z85:
                self.outbox.drop(peer, "certificate revoked")
        return problems

    def poll(self, now: float) -> None:
        """Reload if the store's files changed, at most once per reload interval."""
        if now - self._last_reload < self._interval:
            return
        self._last_reload = now
        if self.store.changed():
            self.reload("directory changed")

    def note_unknown_keys(self) -> None:
        """Record the keys ZAP refused as pending (bounded by the store) and audit each new one."""
        unknown = self.unknown
        while unknown:
            raw, address = unknown.popleft()
            if self.store.record_unknown(raw, address, self._wall()):
                key = certs.fingerprint(zmq.utils.z85.encode(raw))
                self.trail.record("mesh.cert_pending", fingerprint=key, address=address)
                log.warning("unknown_certificate_pending", fingerprint=key, address=address)


class CertMethods(MeshHandlers):
    """The certificate store, as operators see and change it."""

    def __init__(self, store: CertStore, watch: CertWatch, trail: AuditTrail) -> None:
        self.store = store
        self.watch = watch
        self.trail = trail

    @handler("certs.list", request=CertList)
    async def certs_list(self, ctx: RequestContext, req: CertList) -> list[dict[str, Any]]:
        """``mesh.certs.list {state?}`` → every key's entry, or those in one state (allowed, pending,
        rejected, revoked), sorted by state, name, fingerprint. ``meshctl certs list [--state S]``."""
        if req.state is not None and req.state not in _STATES:
            raise BadRequest("state must be allowed, pending, rejected or revoked")
        return self.store.entries(req.state)

    @handler("certs.pending", request=Empty)
    async def certs_pending(self, ctx: RequestContext, _: Empty) -> list[dict[str, Any]]:
        """``mesh.certs.pending`` → the unknown keys that tried to connect. ``meshctl certs pending``."""
        return self.store.entries("pending")

    @handler("certs.show", request=CertRef)
    async def certs_show(self, ctx: RequestContext, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.show {ref}`` → one key's entry. ``meshctl certs show REF``."""
        state, key = self.store.find_key(req.ref)
        return next(e for e in self.store.entries(state) if e["public_key"] == key.decode())

    @handler("certs.accept", request=CertAccept)
    async def certs_accept(self, ctx: RequestContext, req: CertAccept) -> dict[str, Any]:
        """``mesh.certs.accept {ref, name, role}`` → ``{"name", "role", "fingerprint"}``: a pending or
        rejected key only; a revoked one answers ``NOT_FOUND`` naming ``meshctl certs unrevoke``.
        Audited as ``mesh.cert_accept``. ``meshctl certs accept REF --name N --role R``."""
        cert = self.store.accept(req.ref, req.name, req.role)
        self.watch.reload("certificate accepted")
        self.trail.record("mesh.cert_accept", actor=ctx.caller, role=ctx.role, name=cert.name,
                          cert_role=cert.role, fingerprint=cert.fingerprint)
        self.trail.sync()  # durable before the operator is told it is done
        return {"name": cert.name, "role": cert.role, "fingerprint": cert.fingerprint}

    @handler("certs.reject", request=CertRef)
    async def certs_reject(self, ctx: RequestContext, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.reject {ref}`` → ``{"fingerprint"}``: a pending key is refused for good (no
        longer listed as pending). Audited as ``mesh.cert_reject``. ``meshctl certs reject REF``."""
        key = self.store.reject(req.ref)
        self.trail.record("mesh.cert_reject", actor=ctx.caller, role=ctx.role, fingerprint=certs.fingerprint(key))
        self.trail.sync()
        return {"fingerprint": certs.fingerprint(key)}

    @handler("certs.revoke", request=CertRef)
    async def certs_revoke(self, ctx: RequestContext, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.revoke {ref}`` → ``{"name", "fingerprint"}``: takes effect on the next message
        of live connections. Audited as ``mesh.cert_revoke``. ``meshctl certs revoke REF``."""
        cert = self.store.revoke(req.ref)
        self.watch.reload("certificate revoked")
        self.trail.record("mesh.cert_revoke", actor=ctx.caller, role=ctx.role, name=cert.name,
                          fingerprint=cert.fingerprint)
        self.trail.sync()
        return {"name": cert.name, "fingerprint": cert.fingerprint}

    @handler("certs.unrevoke", request=CertRef)
    async def certs_unrevoke(self, ctx: RequestContext, req: CertRef) -> dict[str, Any]:
        """``mesh.certs.unrevoke {ref}`` → ``{"name", "role", "fingerprint"}``: a revoked key is
        allowed again under the name and role it had; its next handshake is admitted. Audited as
        ``mesh.cert_unrevoke``. ``meshctl certs unrevoke REF``."""
        cert = self.store.unrevoke(req.ref)
        self.watch.reload("certificate unrevoked")
        self.trail.record("mesh.cert_unrevoke", actor=ctx.caller, role=ctx.role, name=cert.name,
                          cert_role=cert.role, fingerprint=cert.fingerprint)
        self.trail.sync()  # durable before the operator is told it is done
        return {"name": cert.name, "role": cert.role, "fingerprint": cert.fingerprint}

    @handler("certs.reload", request=Empty)
    async def certs_reload(self, ctx: RequestContext, _: Empty) -> dict[str, Any]:
        """``mesh.certs.reload`` → ``{"allowed": int, "problems": [{"file", "problem"}, …]}``: re-read
        the store now (the broker also does when its files change). ``meshctl certs reload``."""
        problems = self.watch.reload("operator request")
        return {"allowed": len(self.store.snapshot.by_z85),
                "problems": [{"file": f, "problem": p} for f, p in problems]}

"""Paired devices as the broker sees them: ``mesh.devices.enroll|revoke|seen``.

A device is a certificate with role ``device``. It gets onto the allow-list only through the pairing
service, after a PAKE with the one-time code the operator was shown (docs/pairing.md); these are the
broker's side of that. They are exposed to the ``pairing`` identity (and ``seen`` to operators) by
mesh.toml. Whatever the caller, ``enroll`` can only ever create a ``device`` certificate and
``revoke`` can only ever remove one: a compromised pairing service can admit and cut devices, never
mint or cut a service or an operator. Every change is audited, durably, before it is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from shared import Conflict, RequestContext, handler

from .allowlist import CertWatch
from .auditing import AuditTrail
from .certstore import CertStore
from .connections import connection_mode
from .schema import DeviceEnroll, DeviceName, Empty
from .service import MeshHandlers
from .state import MeshState

ROLE: Final = "device"


class DeviceMethods(MeshHandlers):
    """The device certificates: admitted by pairing, cut by pairing, seen by both and by operators."""

    def __init__(self, store: CertStore, watch: CertWatch, state: MeshState, trail: AuditTrail,
                 endpoints: list[str], clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.store = store
        #: The broker's bound endpoints (the core's own list, filled when it binds).
        self.endpoints = endpoints
        self.watch = watch
        self.state = state
        self.trail = trail
        self._clock = clock
        self._wall = wall

    @handler("devices.enroll", request=DeviceEnroll)
    async def devices_enroll(self, ctx: RequestContext, req: DeviceEnroll) -> dict[str, Any]:
        """``mesh.devices.enroll {public_key, name}`` → ``{name, fingerprint, endpoints}`` (the tcp
        endpoints the broker is bound to, for the device to dial): the key is allowed as
        ``name`` with role ``device`` from its next handshake. A key that is allowed, revoked or
        rejected, or a name in use, is ``CONFLICT``. Audited as ``mesh.device_enrolled``. Called by
        pairing when a device has joined (``meshctl pair start``)."""
        cert = self.store.enroll(req.public_key.encode("ascii"), req.name, ROLE)
        self.watch.reload("device enrolled")
        self.trail.record("mesh.device_enrolled", actor=ctx.caller, role=ctx.role, name=cert.name,
                          fingerprint=cert.fingerprint)
        self.trail.sync()  # durable before pairing tells the device it is in
        return {"name": cert.name, "fingerprint": cert.fingerprint,
                "endpoints": [e for e in self.endpoints if e.startswith("tcp://")]}

    @handler("devices.revoke", request=DeviceName)
    async def devices_revoke(self, ctx: RequestContext, req: DeviceName) -> dict[str, Any]:
        """``mesh.devices.revoke {name}`` → ``{name, fingerprint, connections}``: the device's key
        leaves the allow-list and every live connection of it is cut now (``connections``: how
        many). Only a ``device`` certificate: anything else is ``CONFLICT``. Revoking one already
        revoked answers ``connections: 0`` again. Audited as ``mesh.device_revoked``.
        ``meshctl devices revoke NAME`` (through pairing, which also ends its sessions and grants)."""
        cert = self.store.snapshot.by_name.get(req.name)
        if cert is None:
            gone = [c for c in self.store.revoked.values() if c.name == req.name and c.role == ROLE]
            if gone:
                return {"name": req.name, "fingerprint": gone[-1].fingerprint, "connections": 0}
            raise Conflict(f"no device {req.name!r} is on the allow-list")
        if cert.role != ROLE:
            raise Conflict(f"{req.name!r} is not a device; this method revokes devices only")
        live = sum(1 for peer in self.state.peers.values() if peer.cert.public_key == cert.public_key)
        self.store.revoke(cert.name)
        self.watch.reload("device revoked")  # drops its live connections before this answer
        self.trail.record("mesh.device_revoked", actor=ctx.caller, role=ctx.role, name=cert.name,
                          fingerprint=cert.fingerprint)
        self.trail.sync()
        return {"name": cert.name, "fingerprint": cert.fingerprint, "connections": live}

    @handler("devices.seen", request=Empty)
    async def devices_seen(self, ctx: RequestContext, _: Empty) -> list[dict[str, Any]]:
        """``mesh.devices.seen`` → one map per allowed device, by name: ``name``, ``fingerprint``,
        ``connected`` (connections now), ``mode`` (``detached`` over tcp, ``coupled`` over ipc,
        nil if never seen since the broker started), ``address`` and ``last_seen`` (unix seconds,
        nil if not seen since the broker started). ``meshctl devices list``, ``meshctl status``."""
        offset = self._wall() - self._clock()  # monotonic times as wall-clock seconds
        seen: dict[str, tuple[float, str, int]] = {}
        for name, (last, address) in self.state.devices_gone.items():
            seen[name] = (last, address, 0)
        for peer in self.state.peers.values():
            if peer.cert.role != ROLE:
                continue
            last, address, count = seen.get(peer.cert.name, (0.0, "", 0))
            if count == 0 or peer.last_seen >= last:
                last, address = peer.last_seen, peer.address
            seen[peer.cert.name] = (last, address, count + 1)
        out = []
        for cert in sorted(self.store.snapshot.by_z85.values(), key=lambda c: c.name):
            if cert.role != ROLE:
                continue
            entry = seen.get(cert.name)
            out.append({
                "name": cert.name, "fingerprint": cert.fingerprint,
                "connected": entry[2] if entry else 0,
                "mode": connection_mode(entry[1]) if entry else None,
                "address": entry[1] if entry else None,
                "last_seen": round(entry[0] + offset, 3) if entry else None,
            })
        return out

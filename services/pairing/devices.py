"""Paired devices on the wire: ``pairing.devices.list|show|rename|revoke`` (``meshctl devices``).

What a device is called (``name``, the label) can change; the identity it speaks as on the mesh
(the certificate name, and ``device:<identity>`` in consent grants and policies) is fixed when it
pairs, so renaming never moves a grant or a session to something else. Revoking is one audited
operation over three services, in the order that stops the device soonest: the broker takes its
key off the allow-list and cuts its live connections, authn ends every session opened through its
key (so its tokens fail on their next use, on both verification paths), and authz revokes the
consent grants made to the device or through those sessions. Each step is idempotent: when a
service does not answer, the operator is told what is done and what is not, and running the same
command again finishes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared import AuditRecorder, BadRequest, MeshError, RequestContext, Unavailable, handler

from .schema import DeviceList, DeviceRef, DeviceRename

if TYPE_CHECKING:
    from .store import Device, PairingDB


class DeviceHandlers:
    """Mixed into :class:`~.service.Pairing`, which owns the attributes declared here."""

    recorder: AuditRecorder
    clock: Callable[[], float]
    db: Callable[[], PairingDB]
    _call: Callable[..., Awaitable[Any]]

    async def _views(self, devices: list[Device]) -> list[dict[str, Any]]:
        """Each device as an operator sees it, with what the broker sees of it now (and that
        sighting remembered, so ``last_seen`` survives a broker restart)."""
        seen = {entry["name"]: entry for entry in await self._call("mesh.devices.seen", {})}
        db, out = self.db(), []
        for device in devices:
            view = device.view()
            now = seen.get(device.identity)
            view.update(connected=0, mode=None)
            if now is not None and device.revoked_at is None:
                view.update(connected=now["connected"], mode=now["mode"])
                if now["last_seen"] is not None and (device.last_seen is None or now["last_seen"] > device.last_seen):
                    db.seen(device.identity, now["last_seen"], now["address"] or "")
                    view.update(last_seen=now["last_seen"], address=now["address"])
            out.append(view)
        return out

    @handler("devices.list", request=DeviceList)
    async def devices_list(self, ctx: RequestContext, req: DeviceList) -> list[dict[str, Any]]:
        """``pairing.devices.list {all?}`` → one map per paired device (with ``all``, revoked ones
        too): ``name``, ``identity``, ``fingerprint``, ``paired_at``, ``paired_from``, ``last_seen``,
        ``address``, ``trust`` (``paired`` or ``revoked``), ``client_version``, ``connected`` and
        ``mode`` (``detached``/``coupled`` while connected). ``meshctl devices list [--all]``."""
        return await self._views(self.db().devices(revoked=req.all))

    @handler("devices.show", request=DeviceRef)
    async def devices_show(self, ctx: RequestContext, req: DeviceRef) -> dict[str, Any]:
        """``pairing.devices.show {ref}`` → one device (by name, identity or fingerprint prefix).
        ``meshctl devices show REF``."""
        return (await self._views([self.db().find(req.ref)]))[0]

    @handler("devices.rename", request=DeviceRename)
    async def devices_rename(self, ctx: RequestContext, req: DeviceRename) -> dict[str, Any]:
        """``pairing.devices.rename {ref, name}`` → the device under its new name; its identity (and
        so its grants and sessions) stays. Audited. ``meshctl devices rename REF NEW_NAME``."""
        label = req.name.strip()
        if not label or not label.isprintable():
            raise BadRequest("name: printable text, at most 64 characters")
        db = self.db()
        device = db.find(req.ref)
        if device.revoked_at is not None:
            raise BadRequest("that device is revoked; a revoked device keeps the name it had")
        self.recorder.record("pairing.device_renamed", ctx, "ok", target=device.identity, device=device.identity,
                             old_label=device.label, new_label=label)
        db.rename(device.identity, label)
        return (await self._views([db.find(device.identity)]))[0]

    @handler("devices.revoke", request=DeviceRef)
    async def devices_revoke(self, ctx: RequestContext, req: DeviceRef) -> dict[str, Any]:
        """``pairing.devices.revoke {ref}`` → ``{name, identity, fingerprint, connections_cut,
        sessions_ended, grants_revoked}``: the device's key leaves the allow-list and its live
        connections are cut, its sessions end (its tokens fail on their next use) and its consent
        grants are revoked, as one audited operation. When authn or authz does not answer, the
        reply is ``UNAVAILABLE`` saying what is done; the same command again finishes it.
        ``meshctl devices revoke REF``."""
        db = self.db()
        device = db.find(req.ref)
        done: list[str] = []
        outcome: dict[str, Any] = {"connections_cut": 0, "sessions_ended": 0, "grants_revoked": 0}
        try:
            cut = await self._call("mesh.devices.revoke", {"name": device.identity})
            outcome["connections_cut"] = int(cut["connections"])
            db.revoke(device.identity, ctx.caller, self.clock())
            done.append("key")
            ended = await self._call("authn.sessions.end_device", {"device": device.fingerprint})
            outcome["sessions_ended"] = len(ended["ended"])
            done.append("sessions")
            grants = await self._call("authz.revoke_device",
                                      {"device": device.identity, "sessions": list(ended["ended"])})
            outcome["grants_revoked"] = len(grants["revoked"])
            done.append("grants")
        except MeshError as exc:
            self.recorder.record("pairing.device_revoked", ctx, "failure", target=device.identity,
                                 device=device.identity, fingerprint=device.fingerprint, steps=",".join(done),
                                 reason=exc.code, **outcome)
            missing = {"": "nothing is revoked yet", "key": "its sessions and grants are not ended yet",
                       "key,sessions": "its consent grants are not revoked yet"}[",".join(done)]
            raise Unavailable(f"revoking {device.label!r} stopped ({exc.code}: {exc.message}): {missing}; run "
                              f"`meshctl devices revoke {device.identity}` again") from None
        self.recorder.record("pairing.device_revoked", ctx, "ok", target=device.identity, device=device.identity,
                             fingerprint=device.fingerprint, steps=",".join(done), **outcome)
        return {"name": device.label, "identity": device.identity, "fingerprint": device.fingerprint, **outcome}

"""Signed-in devices: ``authn.sessions.list`` and ``authn.sessions.revoke`` for operators, and
``authn.sessions.end_device`` for pairing (a device revoked as a whole).

A session is one sign-in of one person through one peer key: who, from which device (the peer's
identity and key fingerprint), since when, last used. Revoking ends it on every path at once: its
refresh tokens are spent, ``authn.verify`` refuses its access tokens from the next request, and
``authn.revoked.session`` tells services that verify locally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import AuditRecorder, BadRequest, NotFound, RequestContext, handler

from .database import AccountsDB, Session, User
from .schema import DeviceSessions, SessionFilter, SessionRevoke


def session_view(session: Session, user: User | None) -> dict[str, Any]:
    return {"session": session.id, "user": session.user_id, "username": user.username if user else None,
            "peer": session.peer, "device": session.peer_fp, "since": session.created,
            "last_used": session.last_used, "auth_time": session.auth_time, "amr": list(session.amr)}


class SessionHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    recorder: AuditRecorder
    clock: Callable[[], float]
    publish_revoked: Callable[..., Any]
    db: Callable[[], AccountsDB]
    # AccountHandlers': only operators, and the account a name stands for.
    _operator: Callable[[RequestContext], None]
    _user: Callable[[str], User]


    @handler("sessions.list", request=SessionFilter)
    async def sessions_list(self, ctx: RequestContext, req: SessionFilter) -> list[dict[str, Any]]:
        """``authn.sessions.list {username?}`` → the open sessions (of one user, or all).
        ``meshctl sessions list [--user NAME]``."""
        self._operator(ctx)
        db = self.db()
        only = self._user(req.username) if req.username is not None else None
        users = {u.id: u for u in db.users()}
        return [session_view(s, users.get(s.user_id)) for s in db.sessions(only.id if only else None)]

    @handler("sessions.revoke", request=SessionRevoke)
    async def sessions_revoke(self, ctx: RequestContext, req: SessionRevoke) -> dict[str, Any]:
        """``authn.sessions.revoke {session | username | device}`` → ``{ended: [ids]}``: exactly one
        filter; a device is its key fingerprint (64 hex digits, as ``sessions list`` shows it).
        ``meshctl sessions revoke (--session ID | --user NAME | --device FP)``."""
        self._operator(ctx)
        given = [name for name in ("session", "username", "device") if getattr(req, name) is not None]
        if len(given) != 1:
            raise BadRequest("name exactly one of session, username or device")
        db, now = self.db(), self.clock()
        if req.session is not None:
            session = db.session(req.session)
            if session is None:
                raise NotFound("no such session: meshctl sessions list shows them")
            ended = db.end_sessions(now, "revoked by an operator", session_id=session.id)
            users = {session.user_id: ended}
        elif req.username is not None:
            user = self._user(req.username)
            users = {user.id: db.end_sessions(now, "revoked by an operator", user_id=user.id)}
        else:
            users = self._device_sessions(str(req.device), now, "revoked by an operator")
        return await self._ended(ctx, users, given[0], "revoked by an operator")

    @handler("sessions.end_device", request=DeviceSessions)
    async def sessions_end_device(self, ctx: RequestContext, req: DeviceSessions) -> dict[str, Any]:
        """``authn.sessions.end_device {device}`` → ``{ended: [ids]}``: every session opened through
        the key with that fingerprint (64 hex digits) ends now, on every path. Exposed by mesh.toml to
        pairing alone, which calls it when a device is revoked (``meshctl devices revoke``); ending
        none (a device that never signed anyone in, or a second call) is not an error."""
        users = self._device_sessions(req.device, self.clock(), "device revoked")
        return await self._ended(ctx, users, "device", "device revoked")

    async def _ended(self, ctx: RequestContext, users: dict[str, list[str]], how: str, reason: str) -> dict[str, Any]:
        """Record and announce sessions just ended (their ids by user); the reply listing them."""
        ended_all = [sid for ids in users.values() for sid in ids]
        self.recorder.record("authn.sessions_revoked", ctx, "ok", count=len(ended_all), filter=how)
        for user_id, ids in users.items():
            if ids:
                await self.publish_revoked(user_id, ids, reason)
        return {"ended": ended_all}

    def _device_sessions(self, fingerprint: str, now: float, reason: str) -> dict[str, list[str]]:
        """End the open sessions of a device key; their ids by user."""
        device = fingerprint.lower()
        if len(device) != 64 or any(c not in "0123456789abcdef" for c in device):
            raise BadRequest("device: the 64 hex digits of a key fingerprint (meshctl sessions list)")
        db = self.db()
        users: dict[str, list[str]] = {}
        for session in db.sessions():
            if session.peer_fp == device:
                users.setdefault(session.user_id, []).append(session.id)
        db.end_sessions(now, reason, peer_fp=device)
        return users

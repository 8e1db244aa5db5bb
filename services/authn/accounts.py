"""People's accounts, for operators: ``authn.users.*`` (``meshctl users ...``).

Usernames are NFC-normalised and checked (names.py); two names that look the same (case,
confusable letters) are the same person and cannot both exist. Passwords are checked against the
policy (passwords.py) and stored as Argon2id hashes with the ``authentication`` profile. Deleting,
disabling or re-passwording an account ends every session of it at once, on every path, and each
change is audited. Only operators reach these handlers (mesh.toml exposes ``users.*`` to them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import AuditRecorder, Forbidden, NoFields, NotFound, RequestContext, handler

from .database import AccountsDB, User
from .names import normalise_username, skeleton
from .passwords import PasswordHasher, check_password
from .schema import NewUser, Username


def find_user(db: AccountsDB, raw: str) -> User:
    """The account named ``raw`` (or a name that looks the same); ``NOT_FOUND`` otherwise."""
    user = db.user_by_skeleton(skeleton(normalise_username(raw)))
    if user is None:
        raise NotFound("no such user: meshctl users list shows them")
    return user


def view(user: User, sessions: int | None = None) -> dict[str, Any]:
    """An account as operators see it: never its hash."""
    out: dict[str, Any] = {"id": user.id, "username": user.username, "disabled": user.disabled,
                           "created": user.created, "updated": user.updated}
    if sessions is not None:
        out["sessions"] = sessions
    return out


class AccountHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    recorder: AuditRecorder
    hasher: PasswordHasher
    clock: Callable[[], float]
    publish_revoked: Callable[..., Any]
    db: Callable[[], AccountsDB]

    @staticmethod
    def _operator(ctx: RequestContext) -> None:
        # mesh.toml exposes users.* to operators only; checked here too, so a widened ACL does not
        # hand account management to a service.
        if ctx.role != "operator":
            raise Forbidden("managing accounts and sessions is for operators (meshctl users, meshctl sessions)")

    def _user(self, raw: str) -> User:
        return find_user(self.db(), raw)

    @handler("users.add", request=NewUser, concurrent=True)
    async def users_add(self, ctx: RequestContext, req: NewUser) -> dict[str, Any]:
        """``authn.users.add {username, password}`` → the account. ``CONFLICT`` when the name (or
        one that looks the same) exists; ``BAD_REQUEST`` with the reason for a refused name or
        password. ``meshctl users add NAME``."""
        self._operator(ctx)
        db = self.db()  # SEALED before any work
        username = normalise_username(req.username)
        check_password(req.password, username)
        encoded = await ctx.run_blocking(self.hasher.hash, req.password)
        db = self.db()  # again: the mesh may have been sealed while Argon2 ran
        user = db.add_user(username, skeleton(username), encoded, self.clock())
        self.recorder.record("authn.user_added", ctx, "ok", target=user.username, user_id=user.id)
        return view(user, 0)

    @handler("users.list")
    async def users_list(self, ctx: RequestContext, req: NoFields) -> list[dict[str, Any]]:
        """``authn.users.list`` → every account with its count of open sessions. ``meshctl users list``."""
        self._operator(ctx)
        db = self.db()
        counts: dict[str, int] = {}
        for session in db.sessions():
            counts[session.user_id] = counts.get(session.user_id, 0) + 1
        return [view(u, counts.get(u.id, 0)) for u in db.users()]

    @handler("users.show", request=Username)
    async def users_show(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.users.show {username}`` → the account and its open sessions. ``meshctl users show NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        sessions = self.db().sessions(user.id)
        return {**view(user, len(sessions)), "open_sessions": [
            {"session": s.id, "peer": s.peer, "device": s.peer_fp[:16], "since": s.created,
             "last_used": s.last_used, "amr": list(s.amr)} for s in sessions]}

    async def _set_disabled(self, ctx: RequestContext, raw: str, disabled: bool) -> dict[str, Any]:
        self._operator(ctx)
        user = self._user(raw)
        db = self.db()
        open_ids = [s.id for s in db.sessions(user.id)] if disabled else []
        ended = db.set_disabled(user.id, disabled, self.clock())
        self.recorder.record("authn.user_disabled" if disabled else "authn.user_enabled", ctx, "ok",
                             target=user.username, user_id=user.id, ended=ended)
        if open_ids:
            await self.publish_revoked(user.id, open_ids, "account disabled")
        return {**view(self._user(raw)), "sessions_ended": ended}

    @handler("users.disable", request=Username)
    async def users_disable(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.users.disable {username}``: no login, every session ended at once. ``meshctl users disable NAME``."""
        return await self._set_disabled(ctx, req.username, True)

    @handler("users.enable", request=Username)
    async def users_enable(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.users.enable {username}``: logins allowed again. ``meshctl users enable NAME``."""
        return await self._set_disabled(ctx, req.username, False)

    @handler("users.delete", request=Username)
    async def users_delete(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.users.delete {username}``: the account, its sessions, refresh tokens and known
        devices are gone; every token of it is refused from the next request. ``meshctl users delete NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        ended = self.db().delete_user(user.id)
        self.recorder.record("authn.user_deleted", ctx, "ok", target=user.username, user_id=user.id,
                             ended=len(ended))
        await self.publish_revoked(user.id, ended, "account deleted")
        return {"deleted": True, "username": user.username, "sessions_ended": len(ended)}

    @handler("users.passwd", request=NewUser, concurrent=True)
    async def users_passwd(self, ctx: RequestContext, req: NewUser) -> dict[str, Any]:
        """``authn.users.passwd {username, password}``: a new password (the policy applies); every
        session of the account ends. ``meshctl users passwd NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        check_password(req.password, user.username)
        encoded = await ctx.run_blocking(self.hasher.hash, req.password)
        db = self.db()
        open_ids = [s.id for s in db.sessions(user.id)]
        ended = db.set_password(user.id, encoded, self.clock(), end_sessions="password changed")
        self.recorder.record("authn.password_changed", ctx, "ok", target=user.username, user_id=user.id,
                             ended=ended)
        if open_ids:
            await self.publish_revoked(user.id, open_ids, "password changed")
        return {"changed": True, "username": user.username, "sessions_ended": ended}

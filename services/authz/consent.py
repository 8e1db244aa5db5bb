"""Consent grants on the wire: ``authz.consent.grant|revoke|list|show`` (``meshctl consent``).

A grant is the owner's own act: ``grant`` takes the owner's access token, verified by authn as
presented by the caller and *sensitive* (signed in within ``[authn] step_up_s``; an older sign-in
is ``REAUTH_REQUIRED``). The grant's owner is the token's user, never a field of the request.
The owner (with any valid token of theirs) or an operator revokes, lists and shows grants.

A grant or revocation is recorded in audit, written durably, applied to the decisions (the cache
cleared) and announced on ``authz.changed`` before the answer: the very next request sees it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from shared import (
    AuditRecorder,
    BadRequest,
    Forbidden,
    MeshConfig,
    NotFound,
    RequestContext,
    Unauthenticated,
    handler,
)
from shared.tokens import MESH_AUDIENCE

from .grants import Grant, check_terms
from .schema import PRINCIPAL_RE, ConsentGrant, ConsentId, ConsentQuery, DeviceGrants

if TYPE_CHECKING:
    from .authority import Authority
    from .store import AuthzDB

VERIFY_TIMEOUT_S: Final = 5.0
#: What an unauthenticated caller is told, whatever the reason (the reason is authn's audit record).
REFUSED: Final = "token refused"


class ConsentHandlers:
    """Mixed into :class:`~.service.Authz`, which owns the attributes declared here."""

    authority: Authority
    recorder: AuditRecorder
    config: MeshConfig
    clock: Callable[[], float]
    db: Callable[[], AuthzDB]
    announce: Callable[..., Awaitable[None]]
    _call: Callable[..., Awaitable[Any]]

    async def _user_of(self, ctx: RequestContext, token: str, *, fresh: bool) -> tuple[str, str]:
        """The user id and session a token of the caller's names (authn checks it is bound to the
        caller's key, live, and with ``fresh`` recent enough)."""
        try:
            claims = await self._call("authn.verify", {"access_token": token, "audience": MESH_AUDIENCE,
                                                       "presenter": ctx.fingerprint, "sensitive": fresh},
                                      timeout=VERIFY_TIMEOUT_S)
        except Unauthenticated:
            raise Unauthenticated(REFUSED) from None
        return str(claims["sub"]), str(claims["sid"])

    async def _owner_or_operator(self, ctx: RequestContext, token: str | None) -> str | None:
        """The user a request acts for (its token's), or None for an operator without a token."""
        if token is not None:
            return (await self._user_of(ctx, token, fresh=False))[0]
        if ctx.role != "operator":
            raise Unauthenticated(REFUSED)
        return None

    @handler("consent.grant", request=ConsentGrant)
    async def consent_grant(self, ctx: RequestContext, req: ConsentGrant) -> dict[str, Any]:
        """``authz.consent.grant {access_token, grantee, categories, actions, purpose, duration_s?}`` →
        the grant ``{id, owner, grantee, categories, actions, purpose, granted_at, expires_at, ...}``,
        in force from the next request. ``grantee``: ``plugin:<id>``, ``device:<name>``,
        ``service:<name>`` or ``user:<id>``; ``duration_s``: ``[authz] consent_default_s`` (30 days)
        unless given, at most ``consent_max_s``. The token must be the owner's, fresh
        (``REAUTH_REQUIRED`` otherwise). ``meshctl consent grant --user NAME GRANTEE ...``."""
        settings = self.config.authz
        problem = check_terms(req.grantee, req.categories, req.actions, req.purpose,
                              self.authority.bundle.categories)
        if problem:
            raise BadRequest(problem)
        duration = settings.consent_default_s if req.duration_s is None else req.duration_s
        if not 60 <= duration <= settings.consent_max_s:
            raise BadRequest(f"duration_s: from 60 to {settings.consent_max_s} seconds ([authz] consent_max_s)")
        owner, session = await self._user_of(ctx, req.access_token, fresh=True)
        if req.grantee == f"user:{owner}":
            raise BadRequest("grantee: an owner needs no consent of their own")
        db, now = self.db(), self.clock()
        categories, actions = tuple(req.categories), tuple(req.actions)
        self.recorder.record("authz.consent_granted", ctx, "ok", target=req.grantee, on_behalf_of=owner,
                             grantee=req.grantee, categories=",".join(categories), actions=",".join(actions),
                             purpose=req.purpose, expires_at=now + duration)
        grant = db.add_grant(owner, req.grantee, categories, actions, req.purpose, now, now + duration, session)
        self.authority.granted(grant)
        await self.announce("consent", owner=owner, grant=grant.id)
        return grant.wire(now)

    @handler("consent.revoke", request=ConsentId)
    async def consent_revoke(self, ctx: RequestContext, req: ConsentId) -> dict[str, Any]:
        """``authz.consent.revoke {grant_id, access_token?}`` → the grant, now ``revoked``: the very
        next request it covered is denied (decisions are recomputed before this answer). The owner
        (their token) or an operator. ``meshctl consent revoke GRANT_ID``."""
        user = await self._owner_or_operator(ctx, req.access_token)
        grant = self._visible(req.grant_id, user)
        if grant.revoked is not None:
            return grant.wire(self.clock())  # revoking twice changes nothing and says so
        now = self.clock()
        self.recorder.record("authz.consent_revoked", ctx, "ok", target=grant.grantee, on_behalf_of=grant.owner,
                             grant=grant.id, grantee=grant.grantee, user=user)
        revoked = self.db().revoke(grant.id, user or f"operator:{ctx.caller}", now)
        self.authority.revoked(revoked)
        await self.announce("consent", owner=grant.owner, grant=grant.id)
        return revoked.wire(now)

    @handler("consent.list", request=ConsentQuery)
    async def consent_list(self, ctx: RequestContext, req: ConsentQuery) -> list[dict[str, Any]]:
        """``authz.consent.list {owner?, all?, access_token?}`` → grants in force (with ``all``, expired
        and revoked ones too), oldest first. The owner sees their own; an operator anyone's.
        ``meshctl consent list [--user NAME] [--all]``."""
        user = await self._owner_or_operator(ctx, req.access_token)
        if user is not None and req.owner not in (None, user):
            raise Forbidden("a person lists their own grants only")
        now = self.clock()
        owner = user if user is not None else req.owner
        return [g.wire(now) for g in self.db().grants(owner, live_at=None if req.all else now)]

    @handler("consent.show", request=ConsentId)
    async def consent_show(self, ctx: RequestContext, req: ConsentId) -> dict[str, Any]:
        """``authz.consent.show {grant_id, access_token?}`` → one grant. ``meshctl consent show GRANT_ID``."""
        user = await self._owner_or_operator(ctx, req.access_token)
        return self._visible(req.grant_id, user).wire(self.clock())

    @handler("revoke_device", request=DeviceGrants)
    async def consent_revoke_device(self, ctx: RequestContext, req: DeviceGrants) -> dict[str, Any]:
        """``authz.revoke_device {device, sessions}`` → ``{revoked: [grant ids]}``: every grant
        in force to ``device:<device>``, or made in one of ``sessions`` (signed in through that
        device), is revoked, each audited, before the answer. Exposed by mesh.toml to pairing alone
        (outside ``consent.*``, which devices and services may call),
        which calls it when a device is revoked (``meshctl devices revoke``); a second call revokes
        nothing more."""
        grantee, sessions = f"device:{req.device}", set(req.sessions)
        if not PRINCIPAL_RE.fullmatch(grantee):
            raise BadRequest("device: an identity name")
        db, now, revoked = self.db(), self.clock(), []
        for grant in db.grants(live_at=now):
            if grant.grantee != grantee and grant.granted_by not in sessions:
                continue
            self.recorder.record("authz.consent_revoked", ctx, "ok", target=grant.grantee, on_behalf_of=grant.owner,
                                 grant=grant.id, grantee=grant.grantee, reason="device revoked")
            self.authority.revoked(db.revoke(grant.id, f"device revoked:{req.device}", now))
            revoked.append(grant.id)
        if revoked:
            await self.announce("consent", device=req.device, grants=len(revoked))
        return {"revoked": revoked}

    def _visible(self, grant_id: str, user: str | None) -> Grant:
        """The grant, if it exists and the asker may see it (its owner, or an operator: ``user`` None);
        another person's grant is as absent as one that does not exist."""
        grant = self.db().grant(grant_id)
        if grant is None or (user is not None and grant.owner != user):
            raise NotFound("no such consent grant (meshctl consent list shows them)")
        return grant

"""Role assignments on the wire: ``authz.roles.list|assign|revoke`` (``meshctl roles``).

A principal's roles are those its declaration in mesh.toml gives it (``roles``; changed only there)
plus those assigned here at run time. Each assignment and revocation is one transaction, recorded
in audit, applied to the decisions (the cache cleared) and announced on ``authz.changed`` before
the answer. Operators only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared import AuditRecorder, BadRequest, Conflict, NotFound, RequestContext, handler

from .checking import _operator
from .policies import ROLE_RE
from .schema import PrincipalOnly, RoleChange, principal

if TYPE_CHECKING:
    from .authority import Authority
    from .store import AuthzDB


class RoleHandlers:
    """Mixed into :class:`~.service.Authz`, which owns the attributes declared here."""

    authority: Authority
    recorder: AuditRecorder
    clock: Callable[[], float]
    db: Callable[[], AuthzDB]
    announce: Callable[..., Awaitable[None]]

    @handler("roles.list", request=PrincipalOnly)
    async def roles_list(self, ctx: RequestContext, req: PrincipalOnly) -> list[dict[str, Any]]:
        """``authz.roles.list {principal?}`` → ``[{principal, roles: [{role, source, assigned_by?,
        assigned_at?}]}]``: declared (mesh.toml) and assigned roles, of one principal or all.
        ``meshctl roles list [PRINCIPAL]``."""
        _operator(ctx)
        if req.principal is not None:
            principal(req.principal)
        assigned = self.db().roles()
        names = sorted(set(self.authority.declared) | set(assigned))
        if req.principal is not None:
            names = [req.principal]
        listed = []
        for name in names:
            roles = [{"role": r, "source": "declared"} for r in self.authority.declared.get(name, ())]
            roles += [{"role": r, "source": "assigned", "assigned_by": by, "assigned_at": at}
                      for r, by, at in assigned.get(name, [])]
            listed.append({"principal": name, "roles": roles})
        return listed

    @handler("roles.assign", request=RoleChange)
    async def roles_assign(self, ctx: RequestContext, req: RoleChange) -> dict[str, Any]:
        """``authz.roles.assign {principal, role}`` → ``{principal, roles}`` once durable and in force.
        ``CONFLICT`` when it holds the role already. ``meshctl roles assign PRINCIPAL ROLE``."""
        _operator(ctx)
        kind, _ = principal(req.principal)
        if not ROLE_RE.fullmatch(req.role):
            raise BadRequest("role: 1-32 characters of a-z, 0-9 and -, starting with a letter")
        if kind == "operator":
            raise BadRequest("operators act through meshctl's own rights; they are not given authz roles")
        if req.role in self.authority.declared.get(req.principal, ()):
            raise Conflict(f"{req.principal} holds {req.role} by its declaration in mesh.toml already")
        db = self.db()
        if req.role in self.authority.assigned.get(req.principal, ()):
            raise Conflict(f"{req.principal} holds the role {req.role} already")
        # Recorded before it is done (no await in between): a change audit cannot record is not made.
        self.recorder.record("authz.role_assigned", ctx, "ok", target=req.principal, principal=req.principal,
                             assigned_role=req.role)
        db.assign(req.principal, req.role, ctx.caller, self.clock())
        return await self._changed(db, req)

    @handler("roles.revoke", request=RoleChange)
    async def roles_revoke(self, ctx: RequestContext, req: RoleChange) -> dict[str, Any]:
        """``authz.roles.revoke {principal, role}`` → ``{principal, roles}`` once durable and in force:
        the next decision no longer sees the role. A declared role is changed in mesh.toml instead.
        ``meshctl roles revoke PRINCIPAL ROLE``."""
        _operator(ctx)
        principal(req.principal)
        if req.role in self.authority.declared.get(req.principal, ()):
            raise BadRequest(f"{req.role} is declared for {req.principal} in mesh.toml (roles); remove it "
                             "there and run meshctl config reload")
        db = self.db()
        if req.role not in self.authority.assigned.get(req.principal, ()):
            raise NotFound(f"{req.principal} was not assigned the role {req.role} (meshctl roles list shows "
                           "what is assigned)")
        self.recorder.record("authz.role_revoked", ctx, "ok", target=req.principal, principal=req.principal,
                             assigned_role=req.role)
        db.unassign(req.principal, req.role)
        return await self._changed(db, req)

    async def _changed(self, db: AuthzDB, req: RoleChange) -> dict[str, Any]:
        self.authority.use_roles({p: tuple(r for r, _, _ in held) for p, held in db.roles().items()})
        await self.announce("roles", principal=req.principal)
        return {"principal": req.principal, "roles": list(self.authority.roles_of(req.principal))}

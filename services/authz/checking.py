"""Decisions on the wire: ``authz.check`` for the enforcing services, ``authz.policy.*`` for operators.

Every deny and every allow on a sensitive category is recorded (``authz.decision``: the principal,
the owner of the data, the acting user, the action, category and purpose, the deciding policy ids;
never data) before the answer leaves, so a decision audit could not record is not given: the call
fails with ``UNAVAILABLE`` and the enforcing service refuses the access.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import AuditRecorder, BadRequest, Forbidden, NoFields, RequestContext, Unavailable, handler

from .deciding import Decision, Request
from .policies import PolicyError, load
from .schema import Check, PolicyDir, action, principal

if TYPE_CHECKING:
    from .authority import Authority
    from .store import AuthzDB

#: Sensitivity at and above which an allow is audited too (3: categories.toml's "sensitive").
AUDITED_ALLOW: int = 3
#: Times one ``check`` decides at most when changes keep overtaking its audited allow (see ``check``).
DECIDE_AT_MOST: int = 3


def request_of(req: Check) -> Request:
    """The :class:`Request` a ``Check`` asks about (a user principal acts for itself)."""
    kind, name = principal(req.principal)
    user = name if kind == "user" and not req.user else req.user
    return Request(kind, name, action(req.action), req.category, req.owner, user, req.purpose)


class CheckHandlers:
    """Mixed into :class:`~.service.Authz`, which owns the attributes declared here."""

    authority: Authority
    recorder: AuditRecorder
    clock: Callable[[], float]
    policy_dir: Path
    loaded_at: float

    db: Callable[[], AuthzDB]
    announce: Callable[..., Awaitable[None]]

    @handler("check", request=Check, concurrent=True)
    async def check(self, ctx: RequestContext, req: Check) -> dict[str, Any]:
        """``authz.check {principal, action, category, owner, user?, purpose?}`` → ``{decision, allow,
        policies, reason, cache_s}``: may ``principal`` (``service:notes``, ``device:phone``, ``plugin:x``,
        ``user:<id>``) ``action`` (read, write, delete) ``owner``'s data in ``category``, acting for
        ``user``, for ``purpose``? ``cache_s``: how long the caller may reuse an allow, provided it
        drops it on ``authz.changed`` (0 for a deny, or an allow recorded each time).
        ``SEALED`` while authz cannot see its grants; ``UNAVAILABLE`` when an audited decision cannot
        be recorded, or the grants and policies changed under it three times in a row.
        ``meshctl policy test`` asks the same question without a record."""
        request = request_of(req)
        for _ in range(DECIDE_AT_MOST):
            self.db()  # no decision while the roles and grants assigned at run time are not loaded
            changes, now = self.authority.changes, self.clock()
            decision, _, until = self.authority.check_until(request, now)
            if decision.allowed and decision.sensitivity < AUDITED_ALLOW:
                return {**decision.wire(), "cache_s": round(max(0.0, until - now), 3)}
            await self._record(ctx, request, decision)
            # Other calls ran while the record was made durable. An allow decided before a change
            # (a consent revoked, a role taken away, the mesh sealed) that answered after it would
            # outrun the change's own answer ("the very next request is denied"): decide again.
            if not decision.allowed or self.authority.changes == changes:
                return {**decision.wire(), "cache_s": 0.0}  # recorded every time: never reused
        raise Unavailable("the grants and policies kept changing while this decision was recorded; ask again")

    async def _record(self, ctx: RequestContext, request: Request, decision: Decision) -> None:
        # The fsync runs on a worker thread, shared by every decision recorded meanwhile (group
        # commit), and other calls run while it waits: ``check`` decides again when they changed
        # anything. ``subject``: the principal decided on is who acted (audit's repeated_denies
        # counts per subject); the record's actor is the enforcing service that asked.
        await self.recorder.record_durably(
            "authz.decision", ctx, "allowed" if decision.allowed else "denied",
            target=request.principal, on_behalf_of=request.owner, subject=request.principal,
            principal=request.principal, action=request.action, category=request.category,
            user=request.user or None, purpose=request.purpose or None,
            policies=",".join(decision.policies) or None, reason=decision.reason, sensitivity=decision.sensitivity)

    @handler("policy.test", request=Check)
    async def policy_test(self, ctx: RequestContext, req: Check) -> dict[str, Any]:
        """``authz.policy.test {principal, action, category, owner, user?, purpose?}`` → the decision
        ``check`` would give now, with the deciding policies' files and lines; operators only, nothing
        recorded (nothing is accessed). ``meshctl policy test service:notes read memories --owner ID``."""
        _operator(ctx)
        self.db()
        decision, cached = self.authority.check(request_of(req), self.clock())
        by_id = {info.id: info for info in self.authority.bundle.policies.values()}
        where = [{"id": p, "effect": by_id[p].effect, "file": Path(by_id[p].file).name, "line": by_id[p].line}
                 for p in decision.policies if p in by_id]
        return {**decision.wire(), "deciding": where, "cached": cached}

    @handler("policy.show")
    async def policy_show(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``authz.policy.show`` → ``{directory, digest, loaded_at, categories, policies: [{id, effect,
        reason, file, line}]}``: the policies in force. ``meshctl policy show``."""
        _operator(ctx)
        bundle = self.authority.bundle
        levels = {1: "low", 2: "personal", 3: "sensitive"}
        return {"directory": str(bundle.directory), "digest": bundle.digest, "loaded_at": self.loaded_at,
                "categories": {name: levels[level] for name, level in sorted(bundle.categories.items())},
                "policies": [{"id": i.id, "effect": i.effect, "reason": i.reason, "file": i.file, "line": i.line}
                             for i in bundle.policies.values()]}

    @handler("policy.validate", request=PolicyDir)
    async def policy_validate(self, ctx: RequestContext, req: PolicyDir) -> dict[str, Any]:
        """``authz.policy.validate {directory?}`` → ``{valid, directory, policies?, error?}``: would this
        directory load (the configured one by default)? Changes nothing. ``meshctl policy validate``."""
        _operator(ctx)
        directory = self.policy_dir if req.directory is None else Path(req.directory)
        if not directory.is_absolute():
            raise BadRequest("directory: an absolute path (authz may run in another working directory)")
        try:
            bundle = await ctx.run_blocking(load, directory)
        except PolicyError as exc:
            return {"valid": False, "directory": str(directory), "error": str(exc)}
        return {"valid": True, "directory": str(directory), "policies": len(bundle.policies),
                "digest": bundle.digest}

    @handler("policy.reload")
    async def policy_reload(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``authz.policy.reload`` → ``{reloaded, digest, previous, policies}``: load the configured
        directory again and use it from the next decision on. Atomic: a directory that does not load
        leaves the running policies in force and the answer is ``BAD_REQUEST`` naming the file and
        line. ``meshctl policy reload``."""
        _operator(ctx)
        previous = self.authority.bundle.digest
        try:
            bundle = await ctx.run_blocking(load, self.policy_dir)
        except PolicyError as exc:
            self.recorder.record("authz.policy_refused", ctx, "refused", digest=previous, error=str(exc)[:300])
            raise BadRequest(f"the running policies stay in force: {exc}") from None
        self.recorder.record("authz.policy_reloaded", ctx, "ok", digest=bundle.digest)
        self.authority.use_policies(bundle)
        self.loaded_at = self.clock()
        await self.announce("policy", digest=bundle.digest)
        return {"reloaded": True, "digest": bundle.digest, "previous": previous, "policies": len(bundle.policies)}


def _operator(ctx: RequestContext) -> None:
    """Operators only, whatever the ACL says (it grants these to operators; this holds if it is
    ever widened by mistake)."""
    if ctx.role != "operator":
        raise Forbidden("only an operator may do this")

"""Who a user-data call acts for, and whether it may: the gate every storage data method passes.

A data request either acts for the calling service's (or device's) own data, or for a person:

- **Without a token** it reaches the caller's own namespace only (``owner`` = the caller the broker
  authenticated, ``subject`` = :data:`OWN`). Naming a ``subject`` without that person's token is a
  forged claim and is refused (``FORBIDDEN``), whoever the subject is.
- **With a token** (``token``: the person's access token from authn) the namespace is the person's:
  ``owner`` = :data:`PEOPLE`, ``subject`` = the person the data belongs to (the token's user unless
  the request names another one, which then needs that person's consent grant). Two questions are
  asked at once: ``authn.verify`` (the token is valid, live, and bound to the key of whoever
  presented it: the caller, or the peer it names as ``presenter`` when a service relays a token
  presented to it) and ``authz.check`` (may this principal do this action on this category of this
  person's data, for this purpose?). authz is asked about the user the token *claims*; its answer is
  used only if authn confirms that very user. Any other outcome is a refusal: an invalid token is
  ``UNAUTHENTICATED`` "token refused" (authn audits why), a deny is ``FORBIDDEN`` with authz's
  reason (authz audits it), and an authz or authn that cannot answer is ``UNAVAILABLE``: no
  decision, no data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from shared import Forbidden, MeshError, RequestContext, Unauthenticated, Unavailable
from shared.tokens import MESH_AUDIENCE, claimed_subject

from .namespace import OWN, PEOPLE, Namespace

#: How long storage waits for authn's and authz's answers (they are asked at the same time).
DECISION_TIMEOUT_S: Final = 5.0
TOKEN_REFUSED: Final = "token refused"  # noqa: S105 - a message, not a password
#: The principal kind a caller's certificate role is, for authz.
_KINDS: Final = {"service": "service", "device": "device", "operator": "operator"}


class DataRequest(Protocol):
    """The fields every user-data request carries (each engine's schema declares them)."""

    subject: str | None
    category: str
    token: str | None
    presenter: str | None
    purpose: str | None


class Gate:
    """Decides the namespace of each data request. ``call`` is the service's mesh call."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        self.call = call

    async def namespace(self, ctx: RequestContext, req: DataRequest, action: str) -> Namespace:
        """The namespace ``req`` may ``action`` (read, write, delete) in, or the refusal."""
        if req.token is None:
            if req.subject is not None or req.presenter is not None:
                raise Forbidden("subject and presenter need the person's access token (token); without one a "
                                "caller reaches only its own data")
            return Namespace(ctx.caller, OWN, req.category)
        if req.presenter is not None and ctx.role != "service":
            raise Forbidden("only a service relays a token presented to it (presenter)")
        claimed = claimed_subject(req.token)
        if claimed is None:
            raise Unauthenticated(TOKEN_REFUSED)
        owner = claimed if req.subject is None else req.subject
        ns = Namespace(PEOPLE, owner, req.category)  # checks the subject's and category's form first
        verified, decision = await asyncio.gather(
            self.call("authn.verify", {"access_token": req.token, "audience": MESH_AUDIENCE,
                                       "presenter": req.presenter or ctx.fingerprint}, timeout=DECISION_TIMEOUT_S),
            self.call("authz.check", {"principal": f"{_KINDS.get(ctx.role, 'operator')}:{ctx.caller}",
                                      "action": action, "category": req.category, "owner": owner,
                                      "user": claimed, "purpose": req.purpose or ""}, timeout=DECISION_TIMEOUT_S),
            return_exceptions=True)
        if isinstance(verified, Unauthenticated):
            raise Unauthenticated(TOKEN_REFUSED)
        for answer, who in ((verified, "authn"), (decision, "authz")):
            if isinstance(answer, MeshError):
                raise Unavailable(f"{who} cannot answer now ({answer.code}); no data without a decision, retry")
            if isinstance(answer, BaseException):
                raise answer
        if not isinstance(verified, dict) or verified.get("sub") != claimed:
            raise Unauthenticated(TOKEN_REFUSED)
        if not isinstance(decision, dict) or decision.get("allow") is not True:
            reason = decision.get("reason") if isinstance(decision, dict) else None
            raise Forbidden(f"authz denied this {action}: {reason or 'no decision'}")
        return ns

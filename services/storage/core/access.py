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
  used only if authn confirms that very user. An allow authz marks reusable is remembered
  (:mod:`.decisions`) until authz announces a change or it runs out, and then only authn is asked.
  Any other outcome is a refusal: an invalid token is
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

from .decisions import AllowCache
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
        #: authz's reusable allows (.decisions): a cached allow skips the authz question, never authn's.
        self.allows = AllowCache()

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
        principal = f"{_KINDS.get(ctx.role, 'operator')}:{ctx.caller}"
        key = (principal, action, req.category, owner, claimed, req.purpose or "")
        verify = self.call("authn.verify", {"access_token": req.token, "audience": MESH_AUDIENCE,
                                            "presenter": req.presenter or ctx.fingerprint}, timeout=DECISION_TIMEOUT_S)
        if self.allows.allows(key):
            verified, decision = await _answer(verify, "authn"), {"allow": True}
        else:
            epoch = self.allows.epoch()
            answers = await asyncio.gather(
                verify, self.call("authz.check", {"principal": principal, "action": action, "category": req.category,
                                                  "owner": owner, "user": claimed, "purpose": req.purpose or ""},
                                  timeout=DECISION_TIMEOUT_S), return_exceptions=True)
            verified, decision = await _answer(answers[0], "authn"), await _answer(answers[1], "authz")
            if isinstance(decision, dict) and decision.get("allow") is True:
                cache_s = decision.get("cache_s")
                self.allows.keep(key, float(cache_s) if isinstance(cache_s, (int, float)) else 0.0, epoch)
        if not isinstance(verified, dict) or verified.get("sub") != claimed:
            raise Unauthenticated(TOKEN_REFUSED)
        if not isinstance(decision, dict) or decision.get("allow") is not True:
            reason = decision.get("reason") if isinstance(decision, dict) else None
            raise Forbidden(f"authz denied this {action}: {reason or 'no decision'}")
        return ns


async def _answer(answer: Any, who: str) -> Any:
    """A mesh answer, awaited if it is still a call; a refusal or failure becomes the gate's."""
    if asyncio.iscoroutine(answer):
        try:
            answer = await answer
        except BaseException as exc:  # noqa: BLE001 - mapped below, exactly as gather's results are
            answer = exc
    if isinstance(answer, Unauthenticated):
        raise Unauthenticated(TOKEN_REFUSED)
    if isinstance(answer, MeshError):
        raise Unavailable(f"{who} cannot answer now ({answer.code}); no data without a decision, retry")
    if isinstance(answer, BaseException):
        raise answer
    return answer

"""Consent grants: what one person allowed whom to do with which of their data, for what, until
when; and the index a decision looks them up in.

A grant names its ``owner`` (the user whose data it opens), its ``grantee`` (a principal as
``kind:name``: a plugin, a paired device, a service, or another user), the categories and actions
it covers, the purpose, when it was granted and by which session, and when it expires. A grant
covers a request only while it is live (not expired, not revoked) and only if the request's
principal, or the user it acts for, is the grantee, and the category, action and purpose all
match exactly. Pure: times are passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from .deciding import ACTIONS, Request

GRANTEE_RE: Final = re.compile(r"(user|service|device|plugin):[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PURPOSE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
INFINITY: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Grant:
    """One consent grant (see the module docstring). ``revoked`` is None while in force."""

    id: str
    owner: str
    grantee: str
    categories: tuple[str, ...]
    actions: tuple[str, ...]
    purpose: str
    granted_at: float
    expires_at: float
    granted_by: str
    revoked: float | None = None

    def live(self, now: float) -> bool:
        return self.revoked is None and now < self.expires_at

    def covers(self, request: Request, now: float) -> bool:
        """True when this grant, live at ``now``, covers ``request``."""
        return (self.live(now) and request.owner == self.owner
                and self.grantee in (f"{request.kind}:{request.name}", f"user:{request.user}")
                and request.category in self.categories and request.action in self.actions
                and request.purpose == self.purpose)

    def wire(self, now: float) -> dict[str, Any]:
        state = "revoked" if self.revoked is not None else "expired" if now >= self.expires_at else "active"
        return {"id": self.id, "owner": self.owner, "grantee": self.grantee, "categories": list(self.categories),
                "actions": list(self.actions), "purpose": self.purpose, "granted_at": self.granted_at,
                "expires_at": self.expires_at, "granted_by": self.granted_by, "revoked_at": self.revoked,
                "state": state}


def check_terms(grantee: str, categories: list[str], actions: list[str], purpose: str,
                known_categories: dict[str, int]) -> str | None:
    """Why the terms of a new grant are unacceptable, or None. The message names the bad field."""
    if not GRANTEE_RE.fullmatch(grantee):
        return f"grantee must be kind:name with kind one of user, service, device, plugin (got {len(grantee)} chars)"
    if not categories or len(set(categories)) != len(categories):
        return "categories: one or more distinct categories"
    unknown = [c for c in categories if c not in known_categories]
    if unknown:
        return f"categories: unknown {unknown[0]!r}; the categories are {', '.join(sorted(known_categories))}"
    if not actions or len(set(actions)) != len(actions) or any(a not in ACTIONS for a in actions):
        return f"actions: one or more distinct of {', '.join(ACTIONS)}"
    if not PURPOSE_RE.fullmatch(purpose):
        return "purpose: 1-32 characters of a-z, 0-9, _ and -, starting with a letter (say what the access is for)"
    return None


class GrantIndex:
    """The live grants by owner, held in memory beside the database (which is the truth): loaded
    at unseal, changed in the same step as each database change."""

    def __init__(self, grants: list[Grant] | None = None) -> None:
        self._by_owner: dict[str, dict[str, Grant]] = {}
        for grant in grants or []:
            self.add(grant)

    def add(self, grant: Grant) -> None:
        if grant.revoked is None:
            self._by_owner.setdefault(grant.owner, {})[grant.id] = grant

    def remove(self, grant: Grant) -> None:
        held = self._by_owner.get(grant.owner, {})
        held.pop(grant.id, None)
        if not held:
            self._by_owner.pop(grant.owner, None)

    def covering(self, request: Request, now: float) -> tuple[bool, float]:
        """Whether a live grant covers ``request``, and until when that answer holds: the latest
        expiry among covering grants, or (when none covers) infinity (a new grant clears caches)."""
        until = [g.expires_at for g in self._by_owner.get(request.owner, {}).values() if g.covers(request, now)]
        return (True, max(until)) if until else (False, INFINITY)

"""Decisions: one authorization request against a :class:`~.policies.PolicyBundle`, as a plain
function (:func:`decide`), and the cache in front of it (:class:`DecisionCache`).

Pure: no I/O, no clock of its own, no mesh. The service gathers what a decision depends on (the
principal's roles, whether a consent grant covers the request, the local time) and hands it in;
the same inputs give the same :class:`Decision`. Deny overrides allow, and no matching permit is a
deny (Cedar's semantics, which these functions do not reinterpret): a request authz cannot even
evaluate (an unknown category, an evaluation error) is a deny too.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

from .policies import PolicyBundle

#: Wire names of principal kinds and their Cedar entity types.
KINDS: Final = {"user": "User", "service": "Service", "device": "Device", "plugin": "Plugin", "operator": "Operator"}
ACTIONS: Final = ("read", "write", "delete")
#: The reason of a request no policy matched.
DEFAULT_DENY: Final = "no policy allows this (deny by default)"


@dataclass(frozen=True, slots=True)
class Request:
    """What is asked: ``principal`` (kind, name) does ``action`` on ``owner``'s data in
    ``category``, acting for ``user`` ("" for nobody) and for ``purpose``."""

    kind: str
    name: str
    action: str
    category: str
    owner: str
    user: str = ""
    purpose: str = ""

    @property
    def principal(self) -> str:
        """``Kind::name`` as audit and operators read it."""
        return f"{KINDS[self.kind]}::{self.name}"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the service found out about a request: consent, and the local hour and weekday."""

    consented: bool
    hour: int
    weekday: int


@dataclass(frozen=True, slots=True)
class Decision:
    """``allowed``, the ``@id`` of each deciding policy, and a sentence saying why; ``sensitivity``
    of the category (0 when unknown) so the caller can tell what must be audited."""

    allowed: bool
    policies: tuple[str, ...]
    reason: str
    sensitivity: int

    def wire(self) -> dict[str, Any]:
        return {"decision": "allow" if self.allowed else "deny", "allow": self.allowed,
                "policies": list(self.policies), "reason": self.reason}


def decide(bundle: PolicyBundle, entities: Any, request: Request, facts: Facts) -> Decision:
    """The decision for ``request`` under ``bundle`` (``entities`` from :meth:`PolicyBundle.entities`)."""
    sensitivity = bundle.categories.get(request.category, 0)
    if not sensitivity:
        return Decision(False, (), f"unknown category {request.category!r} (categories.toml)", 0)
    trust = "paired" if request.kind == "device" else "this_machine"
    query = {
        "principal": {"type": KINDS[request.kind], "id": request.name},
        "action": {"type": "Action", "id": request.action},
        "resource": {"type": "Category", "id": request.category},
        "context": {"owner": request.owner, "user": request.user,
                    "on_behalf_of_owner": bool(request.user) and request.user == request.owner,
                    "consented": facts.consented, "purpose": request.purpose, "hour": facts.hour,
                    "weekday": facts.weekday, "device_trust": trust},
    }
    result = cedarpy.is_authorized(query, bundle.policy_set, entities)
    diagnostics = result.diagnostics
    if diagnostics.errors:
        # A policy that failed to evaluate decides nothing; the request is denied, never guessed.
        return Decision(False, (), "a policy could not be evaluated (see authz's log)", sensitivity)
    infos = [bundle.policies[p] for p in diagnostics.reasons if p in bundle.policies]
    ids = tuple(sorted(info.id for info in infos))
    if result.allowed:
        return Decision(True, ids, "; ".join(i.reason or i.id for i in infos), sensitivity)
    if not infos:
        return Decision(False, (), DEFAULT_DENY, sensitivity)
    return Decision(False, ids, "; ".join(i.reason or i.id for i in infos), sensitivity)


class DecisionCache:
    """Decisions by request and facts, at most ``max_entries`` (least recently used out first).

    Every entry also carries the time it stops being valid (the end of its hour, or the earliest
    expiry of the consent grants it relied on), so nothing time-dependent outlives its facts.
    :meth:`clear` drops everything: the service calls it on any change of policies, roles or
    grants, before it acknowledges the change.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], tuple[Decision, float]] = OrderedDict()

    def get(self, key: tuple[Any, ...], now: float) -> tuple[Decision, float] | None:
        """The decision held for ``key`` and until when it holds, or None."""
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple[Any, ...], decision: Decision, until: float) -> None:
        self._entries[key] = (decision, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

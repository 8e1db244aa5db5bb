"""What authz decides with, in one place: the policy bundle, every principal's roles, the live
consent grants and the decision cache, changed only through the methods here so the cache can
never outlive what it was computed from.

Each change (a policy reload, a role assigned or revoked, a grant made or revoked) swaps in the
new state and clears the cache in the same synchronous step, before the service acknowledges
the change or publishes ``authz.changed``: the very next :meth:`Authority.check` sees it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .deciding import KINDS, Decision, DecisionCache, Facts, Request, decide
from .grants import Grant, GrantIndex
from .policies import PolicyBundle


class Authority:
    """The decision state (see the module docstring). ``declared`` maps ``kind:name`` to the roles
    mesh.toml declares for it; ``assigned`` the roles assigned at run time (the database)."""

    def __init__(self, bundle: PolicyBundle, declared: Mapping[str, tuple[str, ...]], cache_entries: int) -> None:
        self.bundle = bundle
        self.declared = dict(declared)
        self.assigned: dict[str, tuple[str, ...]] = {}
        self.grants = GrantIndex()
        self.cache = DecisionCache(cache_entries)
        self.entities: Any = None
        #: How many changes this authority has seen: a decision made at one count may be stale at another.
        self.changes = 0
        self._rebuild()

    # -- changes (each clears the cache and counts) ----------------------------------------------

    def _changed(self) -> None:
        self.cache.clear()
        self.changes += 1

    def _rebuild(self) -> None:
        principals: dict[tuple[str, str], tuple[str, ...]] = {}
        for source in (self.declared, self.assigned):
            for principal, roles in source.items():
                kind, name = principal.split(":", 1)
                key = (KINDS[kind], name)
                principals[key] = tuple(sorted(set(principals.get(key, ())) | set(roles)))
        self.entities = self.bundle.entities(principals)
        self._changed()

    def use_policies(self, bundle: PolicyBundle) -> None:
        """Decide under ``bundle`` from now on (it was loaded and validated already)."""
        self.bundle = bundle
        self._rebuild()

    def use_roles(self, assigned: Mapping[str, tuple[str, ...]], declared: Mapping[str, tuple[str, ...]] | None = None
                  ) -> None:
        """Replace the assigned roles (and the declared ones, after a configuration change)."""
        self.assigned = dict(assigned)
        if declared is not None:
            self.declared = dict(declared)
        self._rebuild()

    def use_grants(self, grants: list[Grant]) -> None:
        """Replace every live grant (at unseal)."""
        self.grants = GrantIndex(grants)
        self._changed()

    def granted(self, grant: Grant) -> None:
        self.grants.add(grant)
        self._changed()

    def revoked(self, grant: Grant) -> None:
        self.grants.remove(grant)
        self._changed()

    def forget(self) -> None:
        """Drop every grant and role assignment held in memory (sealing)."""
        self.assigned, self.grants = {}, GrantIndex()
        self._rebuild()

    # -- decisions ----------------------------------------------------------------------------

    def roles_of(self, principal: str) -> tuple[str, ...]:
        return tuple(sorted(set(self.declared.get(principal, ())) | set(self.assigned.get(principal, ()))))

    def check(self, request: Request, now: float) -> tuple[Decision, bool]:
        """The decision for ``request`` at wall-clock ``now`` and whether it came from the cache."""
        decision, cached, _ = self.check_until(request, now)
        return decision, cached

    def check_until(self, request: Request, now: float) -> tuple[Decision, bool, float]:
        """As :meth:`check`, with the time until which the decision holds unless something changes
        (the end of the hour, or of the consent grants it relied on)."""
        local = time.localtime(now)
        key = (request, local.tm_hour, local.tm_wday)
        entry = self.cache.get(key, now)
        if entry is not None:
            return entry[0], True, entry[1]
        consented, consent_until = self.grants.covering(request, now)
        decision = decide(self.bundle, self.entities, request, Facts(consented, local.tm_hour, local.tm_wday))
        # Valid until the hour turns (policies may compare hours) or the consent relied on ends.
        hour_ends = now + (60 - local.tm_min) * 60 - local.tm_sec
        until = min(hour_ends, consent_until)
        self.cache.put(key, decision, until)
        return decision, False, until

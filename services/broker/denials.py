"""What the broker says about a deny: a short answer to the caller, the full hint to the operator.

The caller learns only what it may know: its own identity and the target it asked for. The
broker's log (the operator's view) also names the ``mesh.toml`` rule that would allow it,
so fixing a legitimate deny does not need reading the ACL code. Only the deny path comes
here; allowed calls never do.
"""

from __future__ import annotations

from typing import Final

import structlog

log = structlog.get_logger("broker")

#: A repeated deny (same identity, action and target) is logged again only after this long.
LOG_EVERY_S: Final = 60.0
#: Distinct denies remembered for that; beyond it the memory starts afresh (bounded).
_REMEMBERED: Final = 4096


def caller_message(name: str, action: str, target: str) -> str:
    """The ``FORBIDDEN`` text the caller gets: its identity and the target, nothing of the ACL."""
    return f"{name!r} is not allowed to {action} {target!r}: ask an operator (the broker's log names the rule)"


def allow_hint(name: str, role: str, action: str, target: str) -> str:
    """The declaration that would allow this, for the operator's log: a call is allowed by the
    target service's ``expose``, a topic by the caller's own ``publish``/``subscribe`` (or an
    ``[acl.identity]`` rule for an identity that is not a declared service)."""
    if action == "register":
        return (f"a service registers only under its own certificate's name with role service "
                f"(this certificate: {name!r}, role {role!r})")
    if action == "subscribe" and not target:
        return 'a subscription needs a topic prefix ("*" for every topic)'
    if action == "call" and "." in target:
        service, _, method = target.partition(".")
        return (f'add "{method}" = ["{name}"] (or ["{role}"] for every {role}) to [services.{service}.expose] '
                f"where {service} is declared (mesh.toml or <home>/mesh.d/; meshctl service list), then "
                "meshctl config reload")
    return (f'add "{target}" to {action} in [services.{name}] where it is declared (or in '
            f"[acl.identity.{name}] in <home>/mesh.d/ if it is not a declared service), then meshctl config reload")


class DenyLog:
    """Logs each deny with its hint, at most once per :data:`LOG_EVERY_S` for the same identity,
    action and target: a peer looping on a denied call must not flood the broker's log (every
    deny is still counted and audited)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str], float] = {}

    def note(self, name: str, role: str, action: str, target: str, now: float) -> None:
        key = (name, action, target)
        last = self._last.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            return
        if len(self._last) >= _REMEMBERED:
            self._last.clear()
        self._last[key] = now
        log.warning("denied", identity=name, role=role, action=action, target=target,
                    allow_with=allow_hint(name, role, action, target))

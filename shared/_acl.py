"""Mesh ACL evaluation: a pure function of the configuration and the caller.

Deny by default. An identity may do what its own ``acl.identity`` entry and
its role's ``acl.role`` entry allow, together. Call patterns are exact
``svc.method``, ``svc.*`` (every method of one service), ``svc.group.*``
(every method whose name starts with ``group.``, such as ``storage.kv.*``) and
``*.method`` (one method on every service, for ``health``). Topic rules are prefixes, or
``*`` for every topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._declarations import AclConfig, AclRule


@dataclass(frozen=True, slots=True)
class Grant:
    """The compiled rights of one identity."""

    calls: frozenset[str]
    call_services: frozenset[str]
    call_methods: frozenset[str]
    call_groups: tuple[str, ...]
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_call(self, service: str, method: str) -> bool:
        return (
            service in self.call_services
            or method in self.call_methods
            or f"{service}.{method}" in self.calls
            or any(f"{service}.{method}".startswith(group) for group in self.call_groups)
        )

    def may_publish(self, topic: str) -> bool:
        return _matches(self.publish, topic)

    def may_subscribe(self, prefix: str) -> bool:
        """A subscription is allowed only if every topic it can match is allowed."""
        return _matches(self.subscribe, prefix)


def _matches(prefixes: tuple[str, ...], topic: str) -> bool:
    return any(p == "*" or topic.startswith(p) for p in prefixes)


def compile_grant(acl: AclConfig, name: str, role: str) -> Grant:
    """Combine the identity's and its role's rules into one :class:`Grant`."""
    rules: list[AclRule] = [r for r in (acl.role.get(role), acl.identity.get(name)) if r is not None]
    calls: set[str] = set()
    services: set[str] = set()
    methods: set[str] = set()
    groups: set[str] = set()
    for rule in rules:
        for pattern in rule.call:
            service, _, method = pattern.partition(".")
            if method == "*":
                services.add(service)
            elif service == "*":
                methods.add(method)
            elif method.endswith(".*"):
                groups.add(pattern[:-1])  # "storage.kv.*" grants every "storage.kv.<...>"
            else:
                calls.add(pattern)
    return Grant(
        calls=frozenset(calls),
        call_services=frozenset(services),
        call_methods=frozenset(methods),
        call_groups=tuple(sorted(groups)),
        publish=tuple(p for r in rules for p in r.publish),
        subscribe=tuple(p for r in rules for p in r.subscribe),
    )

"""Who is in the mesh and who may do what: ``[services.<name>]`` declarations and ``[acl]`` rules.

Every process of the mesh, ours or a companion's, is declared once (in mesh.toml or a home
fragment ``mesh.d/*.toml``)::

    [services.notes]
    entry = "/home/me/notes/notes.py:Notes"   # or "package.module:Class", or "package.module"
    priority = 100                             # supervisord's start order: lower starts first
    keys = ["sqlcipher"]                       # data keys keyvault releases to it
    publish = ["notes."]                       # topic prefixes it may publish
    subscribe = ["security."]                  # topic prefixes it may subscribe to
    roles = ["user-data"]                      # authz roles (what its policies let it do)
    [services.notes.expose]                    # its methods, and who may call them
    "*" = ["operator"]                         #   every method: any operator
    "get" = ["service", "reminders"]           #   notes.get: any service, and reminders

From the declarations :func:`derive` makes the mesh ACL (an ``expose`` entry becomes a call rule
of each role or identity it names; ``publish``/``subscribe`` become the service's own topic rules)
and keyvault's entitlements (``keys``); :func:`identities` lists the keypairs ``meshctl init``
creates; ``meshctl`` renders supervisord's programs from them. Explicit ``[acl]`` rules and
``[keyvault.entitlements]`` add to what the declarations derive and never take it away: a right is
taken away by changing the declaration that gives it.

The broker declares itself as ``[services.broker]``: it is the mesh's CURVE server, so it has no
role and no certificate on the allow-list, and its methods are addressed as ``mesh.<method>``.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._certs import NAME_RE, ROLES
from ._errors import ConfigError

#: The name the broker is declared (and its keypair, process and log are named) by.
BROKER: Final = "broker"
#: The address of the broker's own methods: ``mesh.<method>``. No service may be named so.
BROKER_ADDRESS: Final = "mesh"
#: What supervisord runs a declaration as: a program, an event listener, or nothing (an identity
#: whose process something else starts, such as a device or a process run by hand).
PROCESS_KINDS: Final = ("program", "eventlistener", "none")

# svc.method, svc.* (every method), svc.group.* (methods under one dotted group), *.method.
CALL_RE: Final = re.compile(r"^(\*|[a-z][a-z0-9_-]*)\.(\*|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*(\.\*)?)$")
TOPIC_RE: Final = re.compile(r"^(\*|[a-z0-9][a-z0-9_.:-]*)$")
# A method pattern relative to its service: "*", "get", "kv.get", "kv.*".
_METHOD_RE: Final = re.compile(r"^(\*|[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*(\.\*)?)$")
# "package.module" (run with -m), "package.module:Class", or "/abs/path/file.py:Class". No spaces,
# quotes or '%': the entry is written into supervisord's program command line as it is.
#: An authz role name (``user-data``); authz's policies give roles their meaning.
AUTHZ_ROLE_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_MODULE_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CLASS_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PATH_RE: Final = re.compile(r"^/[A-Za-z0-9_./+-]*\.py$")
_EVENT_RE: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _empty() -> Mapping[str, Any]:
    return types.MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AclRule:
    """What one identity or role may do. Patterns: ``svc.method``, ``svc.*``, ``*.method``."""

    call: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AclConfig:
    """``[acl]``: deny by default; rules for a role apply to every identity of that role."""

    role: Mapping[str, AclRule] = field(default_factory=_empty)
    identity: Mapping[str, AclRule] = field(default_factory=_empty)


def check_entry(entry: str) -> None:
    """Refuse an entry point that is not ``package.module``, ``package.module:Class`` or
    ``/absolute/path/file.py:Class`` (raises :class:`ConfigError` naming ``entry``)."""
    target, colon, cls = entry.partition(":")
    if colon and not _CLASS_RE.match(cls):
        raise ConfigError(f"entry: {entry!r}: after ':' comes the class name of the service")
    if target.startswith("/"):
        if not colon or not _PATH_RE.match(target) or "/../" in target or "/./" in target:
            raise ConfigError(f"entry: {entry!r} is not /absolute/path/file.py:Class (letters, digits, "
                              "'_', '.', '-', '+' and '/' only)")
    elif target.endswith(".py"):
        raise ConfigError(f"entry: {entry!r}: a file is named by its absolute path (/path/to/file.py:Class)")
    elif not _MODULE_RE.match(target):
        raise ConfigError(f"entry: {entry!r} is not package.module, package.module:Class or "
                          "/absolute/path/file.py:Class")


@dataclass(frozen=True, slots=True)
class ServiceDeclaration:
    """``[services.<name>]``: one process of the mesh (see the module documentation)."""

    entry: str = ""
    role: str = "service"
    process: str = "program"
    events: tuple[str, ...] = ()
    priority: int = field(default=100, metadata={"min": 1, "max": 999})
    expose: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    #: authz roles the service holds (``system``, ``user-data``, ``plugin`` or one the policies name);
    #: ``meshctl roles assign`` adds more at run time.
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.process not in PROCESS_KINDS:
            raise ConfigError(f"process: must be one of {', '.join(PROCESS_KINDS)}")
        if self.process == "none":
            if self.entry:
                raise ConfigError("entry: a declaration with process = \"none\" has no entry point")
        else:
            if not self.entry:
                raise ConfigError("entry: missing; say what runs the service (package.module, "
                                  "package.module:Class or /absolute/path/file.py:Class)")
            check_entry(self.entry)
        if self.role not in ROLES:
            raise ConfigError(f"role: unknown role {self.role!r}; roles are {', '.join(sorted(ROLES))}")
        if self.process != "none" and self.role != "service":
            raise ConfigError("role: a declared process registers as a service, so its role is 'service'")
        if self.process == "eventlistener" and not self.events:
            raise ConfigError("events: an event listener names the supervisord events it takes")
        if self.process != "eventlistener" and self.events:
            raise ConfigError("events: only an event listener (process = \"eventlistener\") takes events")
        for event in self.events:
            if not _EVENT_RE.match(event):
                raise ConfigError(f"events: {event!r} is not a supervisord event name")
        for pattern, callers in self.expose.items():
            if not _METHOD_RE.match(pattern):
                raise ConfigError(f"expose: {pattern!r} is not a method name, group.* or '*'")
            for caller in callers:
                if caller not in ROLES and not NAME_RE.fullmatch(caller):
                    raise ConfigError(f"expose.{pattern}: {caller!r} is neither a role nor an identity name")
        for key in ("publish", "subscribe"):
            for topic in getattr(self, key):
                if not TOPIC_RE.match(topic):
                    raise ConfigError(f"{key}: {topic!r} is not a topic prefix or '*'")
        for role in self.roles:
            if not AUTHZ_ROLE_RE.fullmatch(role):
                raise ConfigError(f"roles: {role!r} is not a role name (a-z, 0-9 and '-', starting with a letter)")


def address(name: str) -> str:
    """The first part of ``<address>.<method>`` for the methods of declaration ``name``."""
    return BROKER_ADDRESS if name == BROKER else name


def check_names(services: Mapping[str, ServiceDeclaration]) -> None:
    """Refuse declaration names that are not identity names, or that would pose as the broker."""
    for name, declaration in services.items():
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"services.{name}: not a valid identity name (a-z, 0-9, '-', '_'; "
                              "starting with a letter)")
        if name == BROKER_ADDRESS:
            raise ConfigError(f"services.{name}: the name of the broker's own methods; choose another")
        module = declaration.entry.rpartition(".")[2]
        if declaration.entry and ":" not in declaration.entry and module != name.replace("-", "_"):
            # A module run with -m picks its identity itself; only a matching name shows that the
            # declaration and the process are the same identity (a Class entry is checked by the runner).
            raise ConfigError(f"services.{name}.entry: {declaration.entry!r} runs as whatever name its "
                              f"__main__ chooses; give the class (module:Class), or declare a module whose last "
                              f"part is {name.replace('-', '_')!r}")
        if name == BROKER and (declaration.keys or declaration.publish or declaration.subscribe
                               or declaration.process != "program"):
            raise ConfigError(f"services.{BROKER}: the broker is the mesh's server: it takes no keys "
                              "and no topics, and runs as a program")


def identities(services: Mapping[str, ServiceDeclaration]) -> dict[str, str]:
    """Every declared identity with its role, the broker excepted (its keypair is the server's)."""
    return {name: d.role for name, d in services.items() if name != BROKER}


def processes(services: Mapping[str, ServiceDeclaration]) -> list[str]:
    """The declarations supervisord runs, in start order: by priority, then as declared."""
    running = [(d.priority, i, name) for i, (name, d) in enumerate(services.items()) if d.process != "none"]
    return [name for _, _, name in sorted(running)]


def derive_acl(explicit: AclConfig, services: Mapping[str, ServiceDeclaration]) -> AclConfig:
    """``explicit`` with every rule the declarations imply added (see the module documentation)."""
    role: dict[str, dict[str, list[str]]] = {}
    identity: dict[str, dict[str, list[str]]] = {}

    def add(table: dict[str, dict[str, list[str]]], who: str, kind: str, values: tuple[str, ...]) -> None:
        rule = table.setdefault(who, {"call": [], "publish": [], "subscribe": []})
        rule[kind] += [v for v in values if v not in rule[kind]]

    for who, rule in explicit.role.items():
        for kind in ("call", "publish", "subscribe"):
            add(role, who, kind, getattr(rule, kind))
    for who, rule in explicit.identity.items():
        for kind in ("call", "publish", "subscribe"):
            add(identity, who, kind, getattr(rule, kind))
    for name, declaration in services.items():
        for pattern, callers in declaration.expose.items():
            for caller in callers:
                add(role if caller in ROLES else identity, caller, "call", (f"{address(name)}.{pattern}",))
        if declaration.publish or declaration.subscribe:
            add(identity, name, "publish", declaration.publish)
            add(identity, name, "subscribe", declaration.subscribe)

    def frozen(table: dict[str, dict[str, list[str]]]) -> Mapping[str, AclRule]:
        return types.MappingProxyType({who: AclRule(tuple(r["call"]), tuple(r["publish"]), tuple(r["subscribe"]))
                                       for who, r in table.items()})

    return AclConfig(role=frozen(role), identity=frozen(identity))


def derive_entitlements(explicit: Mapping[str, tuple[str, ...]],
                        services: Mapping[str, ServiceDeclaration]) -> Mapping[str, tuple[str, ...]]:
    """``explicit`` with each declaration's ``keys`` added to its own name's entry."""
    table = {name: list(purposes) for name, purposes in explicit.items()}
    for name, declaration in services.items():
        have = table.setdefault(name, [])
        have += [p for p in declaration.keys if p not in have]
    return types.MappingProxyType({name: tuple(p) for name, p in table.items() if p})

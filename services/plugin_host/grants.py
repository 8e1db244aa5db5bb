"""What a plugin may ask plugin-host for: its signed, approved capability grants checked against each
request, as plain functions (no I/O).

A plugin asks through its socket for one of the operations in :data:`OPERATIONS`; each needs one
capability, of the forms :func:`shared.plugins.parse_capability` accepts:

==================  ==============================  =============================================
operation           needs                           reaches
==================  ==============================  =============================================
``kv.get``/``scan`` ``storage.kv:read:<category>``  the plugin's own data in storage (``<name>\\0``
``kv.put``          ``storage.kv:write:<category>`` prefixed keys, so no plugin names another's)
``userdata.get``    ``userdata:<category>:read``    the person's data, with their token from the
``userdata.scan``                                   call and their consent grant (authz)
``userdata.put``    ``userdata:<category>:write``
==================  ==============================  =============================================

Events are delivered for topics starting with an ``events:subscribe:<prefix>`` grant. There is no
delete operation at all: plugins never delete a person's data (authz forbids it too).

:func:`check_request` validates the arguments of a request at the boundary (the plugin is
untrusted: every type and size is checked) and raises :class:`CapabilityDenied` when no grant
covers it; it never returns a bool to forget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from shared.plugins import Capability

#: op -> (capability kind, action).
OPERATIONS: Final = {
    "kv.get": ("storage.kv", "read"), "kv.scan": ("storage.kv", "read"), "kv.put": ("storage.kv", "write"),
    "userdata.get": ("userdata", "read"), "userdata.scan": ("userdata", "read"),
    "userdata.put": ("userdata", "write"),
}
#: The fields each operation takes: name -> (type, required).
_FIELDS: Final[dict[str, dict[str, tuple[type, bool]]]] = {
    "get": {"category": (str, True), "key": (bytes, True)},
    "put": {"category": (str, True), "key": (bytes, True), "value": (bytes, True)},
    "scan": {"category": (str, True), "prefix": (bytes, False), "after": (bytes, False), "limit": (int, False)},
}
CATEGORY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_KEY: Final = 1000          # storage takes 1024 bytes; the plugin's own prefix needs the rest
MAX_VALUE: Final = 512 * 1024
MAX_SCAN: Final = 1000


class CapabilityDenied(Exception):
    """The request is not covered by the plugin's grants, or is malformed; ``code`` is the wire code
    the plugin sees (``FORBIDDEN`` or ``BAD_REQUEST``) and the message says which grant it lacks."""

    def __init__(self, code: str, message: str, grant: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.grant = grant


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: ``op`` (``kv.get`` ...), ``kind`` and ``action`` it needs, ``category``,
    and its arguments (``key``, ``value``, ``prefix``, ``after``, ``limit``)."""

    op: str
    kind: str
    action: str
    category: str
    args: dict[str, Any]

    @property
    def grant(self) -> str:
        """The grant that would cover this request, as a manifest writes it."""
        if self.kind == "userdata":
            return f"userdata:{self.category}:{self.action}"
        return f"{self.kind}:{self.action}:{self.category}"


def parse_request(op: Any, args: Any) -> Request:
    """A plugin's request checked for shape: a known ``op`` and exactly its fields, typed and sized."""
    if not isinstance(op, str) or op not in OPERATIONS:
        raise CapabilityDenied("BAD_REQUEST", f"unknown operation; one of {', '.join(sorted(OPERATIONS))}")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CapabilityDenied("BAD_REQUEST", f"{op}: arguments must be a map")
    kind, action = OPERATIONS[op]
    fields = _FIELDS[op.split(".", 1)[1]]
    extra = sorted(set(args) - set(fields))
    if extra:
        raise CapabilityDenied("BAD_REQUEST", f"{op}: unknown argument {extra[0][:40]!r}")
    for name, (tp, required) in fields.items():
        if name not in args:
            if required:
                raise CapabilityDenied("BAD_REQUEST", f"{op}: {name} is required")
            continue
        if type(args[name]) is not tp:
            raise CapabilityDenied("BAD_REQUEST", f"{op}: {name} must be {tp.__name__}")
    category = args["category"]
    if not CATEGORY_RE.fullmatch(category):
        raise CapabilityDenied("BAD_REQUEST", f"{op}: category must match [a-z][a-z0-9_-]{{0,31}}")
    for name in ("key", "prefix", "after"):
        if name in args and len(args[name]) > MAX_KEY:
            raise CapabilityDenied("BAD_REQUEST", f"{op}: {name} is longer than {MAX_KEY} bytes")
    if "value" in args and len(args["value"]) > MAX_VALUE:
        raise CapabilityDenied("BAD_REQUEST", f"{op}: value is larger than {MAX_VALUE} bytes")
    if "limit" in args and not 1 <= args["limit"] <= MAX_SCAN:
        raise CapabilityDenied("BAD_REQUEST", f"{op}: limit from 1 to {MAX_SCAN}")
    rest = {k: v for k, v in args.items() if k != "category"}
    return Request(op, kind, action, category, rest)


def check_request(grants: Iterable[Capability], op: Any, args: Any) -> Request:
    """The validated request when a grant covers it; :class:`CapabilityDenied` otherwise."""
    request = parse_request(op, args)
    for grant in grants:
        if (grant.kind, grant.action, grant.target) == (request.kind, request.action, request.category):
            return request
    raise CapabilityDenied("FORBIDDEN", f"{request.op} on {request.category}: the plugin was not granted "
                                        f"{request.grant}", request.grant)


def event_prefixes(grants: Iterable[Capability]) -> tuple[str, ...]:
    """The topic prefixes the grants let a plugin receive events on."""
    return tuple(sorted({g.target for g in grants if g.kind == "events" and g.action == "subscribe"}))


def may_receive(grants: Iterable[Capability], topic: str) -> bool:
    """Whether an event on ``topic`` is covered by one of the plugin's ``events:subscribe`` grants."""
    return any(topic.startswith(prefix) for prefix in event_prefixes(grants))

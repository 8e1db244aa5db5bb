"""Declaring a service: a class of handlers whose decorators only record metadata.

::

    class Storage(Service):
        name = "storage"

        @handler("put", request=PutRequest, sensitive=("value",))
        async def put(self, ctx: RequestContext, req: PutRequest) -> dict[str, Any]:
            ...

``@handler`` stores a :class:`HandlerSpec` on the function and nothing else.
When the class is defined, its handlers are collected into the explicit
dispatch table :attr:`Service.handlers`; the runtime looks wire names up in
that table only, never with ``getattr``. Names starting with ``_`` cannot be
declared. Every service answers ``health``, which reports its :class:`Readiness`: whether it can
do its job now, and if not, why and which dependency is at fault.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

from ._logging import declare_sensitive
from ._schema import message, sensitive_fields

_WIRE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


#: The states a service reports in ``health``, from best to worst (docs/protocol.md §11.5).
READY: Final = "ready"          # it can do its job now
SEALED: Final = "sealed"        # it waits for the mesh to be unlocked (an operator's choice, not a fault)
DEGRADED: Final = "degraded"    # it serves, but something is lost or only part of its job works
FAILED: Final = "failed"        # it cannot do its job: its own fault, or the dependency it names
READINESS_STATES: Final = (READY, SEALED, DEGRADED, FAILED)


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``<service>.health`` reports: ``state`` (one of :data:`READINESS_STATES`), a one-line
    ``reason`` whenever the state is not ``ready``, and the ``dependency`` at fault when the cause is
    another process (``keyvault``, ``audit``...) rather than this one. Reasons name no secret and no
    user data: they are shown to operators."""

    state: str
    reason: str | None = None
    dependency: str | None = None

    def __post_init__(self) -> None:
        if self.state not in READINESS_STATES:
            raise ValueError(f"readiness state {self.state!r} is not one of {', '.join(READINESS_STATES)}")
        if self.state != READY and not self.reason:
            raise ValueError(f"a {self.state!r} readiness needs a reason")

    def to_wire(self) -> dict[str, str | None]:
        return {"state": self.state, "reason": self.reason, "dependency": self.dependency}


@message
class NoFields:
    """A request without fields."""


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What ``@handler`` recorded about one handler."""

    wire_name: str
    function: Callable[..., Awaitable[Any]]
    request: type[Any]
    reply: type[Any] | None
    concurrent: bool
    sensitive: frozenset[str]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler knows about the call: the caller's identity as stamped by the broker."""

    caller: str
    role: str
    method: str
    deadline: float
    #: SHA-256 (hex) of the caller's CURVE public key, as the broker stamped it: what a token or a
    #: grant bound to this caller's key is checked against (names can be reissued; keys cannot).
    fingerprint: str = ""

    def remaining(self) -> float:
        """Seconds left before the caller's deadline."""
        return max(0.0, self.deadline - time.monotonic())

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run slow or blocking work off the event loop so heartbeats keep flowing."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def handler(name: str | None = None, *, request: type[Any] = NoFields, reply: type[Any] | None = None,
            concurrent: bool = False, sensitive: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Declare a handler. ``name`` is its wire name (default: the function's name).

    ``request`` is the :func:`~shared.message` type the body must match; ``reply``, when
    given, is checked against what the handler returns (a mismatch is the handler's bug
    and answers ``INTERNAL``). ``sensitive`` names fields never to log, beside those the
    request type marks ``sensitive``.
    """

    def record(fn: F) -> F:
        wire = name or fn.__name__
        if not _WIRE_NAME.match(wire):
            raise ValueError(f"handler name {wire!r}: lowercase words separated by dots, no leading '_'")
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"handler {wire!r} must be an async function")
        fields = sensitive_fields(request) | frozenset(sensitive)
        if reply is not None:
            fields |= sensitive_fields(reply)
        declare_sensitive(fields)
        fn.__curvemesh_handler__ = HandlerSpec(wire, fn, request, reply, concurrent, fields)  # type: ignore[attr-defined]
        return typing.cast(F, fn)

    return record


def handler_table(cls: type) -> dict[str, HandlerSpec]:
    """The dispatch table of ``cls``: wire name to the :class:`HandlerSpec` ``@handler`` recorded on
    it and its bases (a subclass's handler replaces a base's of the same wire name). It is built once,
    from declarations, so a wire message can only ever reach a method that was declared a handler."""
    table: dict[str, HandlerSpec] = {}
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            spec = getattr(value, "__curvemesh_handler__", None)
            if isinstance(spec, HandlerSpec):
                table[spec.wire_name] = spec
    return table


class Service:
    """Base class of every mesh service; subclasses set :attr:`name` and declare handlers."""

    name: ClassVar[str] = ""
    handlers: ClassVar[dict[str, HandlerSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.handlers = handler_table(cls)

    def __init__(self) -> None:
        self.started = time.monotonic()
        #: The service's own mesh client, set by the runtime before ``on_start``: handlers
        #: use it to call other services and to publish events.
        self.mesh: Any = None

    async def on_start(self) -> None:
        """Called once before the service registers; open stores here."""

    async def on_stop(self) -> None:
        """Called once after in-flight work finished; close stores here."""

    def readiness(self) -> Readiness:
        """Whether this service can do its job now. A service that holds keys, waits on another
        process or can fail at run time overrides this; it must be cheap and never block."""
        return Readiness(READY)

    @handler("health")
    async def health(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``<service>.health`` → ``{"service", "state", "reason", "dependency", "pid", "uptime_s"}``
        (see :class:`Readiness`); a service may add fields of its own.
        ``meshctl ping SERVICE`` or ``meshctl call SERVICE.health``."""
        return {"service": self.name, **self.readiness().to_wire(), "pid": os.getpid(),
                "uptime_s": round(time.monotonic() - self.started, 3)}

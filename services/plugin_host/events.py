"""Mesh events to plugins: plugin-host subscribes once per granted topic prefix and hands each event
to every running plugin that is granted it (``events:subscribe:<prefix>``) and handles it.

plugin-host's own subscriptions are bounded by the mesh ACL (``subscribe`` in its mesh.toml
declaration): a prefix the broker refuses is reported by ``meshctl plugins show`` (``events``), with
what to add to mesh.toml; it is tried again the next time a plugin granted it starts. Each plugin
takes events through a bounded queue: a slow plugin loses its own events (counted), never anyone
else's, and never blocks plugin-host.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from shared import MeshError, Timeout

from .grants import event_prefixes

if TYPE_CHECKING:
    from shared import AuditRecorder, MeshClient

    from .runner import Runner

log = structlog.get_logger("plugin-host")

WAIT_S: Final = 3600.0
SUBSCRIBE_TIMEOUT_S: Final = 5.0


class EventFeed:
    """The subscriptions, shared by every plugin; ``runners()`` lists the current runners."""

    def __init__(self, runners: Callable[[], list[Runner]]) -> None:
        self.runners = runners
        self.tasks: dict[str, asyncio.Task[None]] = {}
        #: prefix -> why plugin-host may not subscribe to it (the broker's answer).
        self.refused: dict[str, str] = {}

    async def follow(self, mesh: MeshClient, runner: Runner, recorder: AuditRecorder) -> None:
        """Subscribe to every prefix ``runner``'s grants name that is not followed yet."""
        for prefix in event_prefixes(runner.manifest.capabilities):
            if prefix in self.tasks:
                continue
            try:
                subscription = await mesh.subscribe(prefix, timeout=SUBSCRIBE_TIMEOUT_S)
            except MeshError as exc:
                self.refused[prefix] = (f"the mesh does not let plugin-host subscribe to {prefix!r} ({exc.code}); "
                                        f"add it to subscribe in [services.plugin-host] of mesh.toml")
                continue
            self.refused.pop(prefix, None)
            self.tasks[prefix] = asyncio.create_task(self._pump(subscription), name=f"plugin-events-{prefix}")

    def problems(self, runner: Runner) -> list[str]:
        return [self.refused[p] for p in event_prefixes(runner.manifest.capabilities) if p in self.refused]

    async def _pump(self, subscription: Any) -> None:
        while True:
            try:
                event = await subscription.next(WAIT_S)
            except Timeout:
                continue
            for runner in self.runners():
                runner.offer_event(event.topic, event.body)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()

"""meshctl as a mesh peer: ping, call, certs and events, with the operator certificate.

Every request goes through the broker like any peer's and is subject to the
``meshctl`` identity's ACL (mesh.toml, role operator); there is no side door.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from shared import Event, MeshClient, MeshConfig, MeshError, MeshHome, mesh_config

from ._output import CliError
from ._peer import OPERATOR, not_connected, reachable, refused


def home_config(home: MeshHome) -> MeshConfig:
    """The configuration the mesh in ``home`` runs with (its layers, checked as at start); a bad
    file or key becomes the one-line error naming it."""
    try:
        return mesh_config(home.root)
    except MeshError as exc:
        raise CliError(exc.message) from None


@contextlib.asynccontextmanager
async def connected(home: MeshHome, timeout: float = 5.0) -> AsyncIterator[MeshClient]:
    """A client with meshctl's certificate; connection problems become one-line errors."""
    reachable(home)
    try:
        client = await MeshClient.connect(home, OPERATOR, timeout=timeout)
    except MeshError as exc:
        raise not_connected(home, exc) from None
    try:
        yield client
    except MeshError as exc:
        raise refused(exc) from None
    finally:
        await client.close()


async def call(home: MeshHome, target: str, body: Any, timeout: float) -> Any:
    """``meshctl call SERVICE.METHOD [--body JSON]``: the decoded reply."""
    async with connected(home) as client:
        return await client.call(target, body, timeout=timeout)


async def certs(home: MeshHome, action: str, ref: str | None, name: str | None, role: str | None,
                state: str | None) -> Any:
    """``meshctl certs ACTION``: one ``mesh.certs.*`` call."""
    body: dict[str, Any] | None
    if action == "list":
        body = {"state": state} if state else None
    elif action in ("pending", "reload"):
        body = None
    elif action == "accept":
        if not name or not role:
            raise CliError("certs accept needs --name NAME and --role ROLE", status=2)
        body = {"ref": ref, "name": name, "role": role}
    else:
        body = {"ref": ref}
    async with connected(home) as client:
        return await client.call(f"mesh.certs.{action}", body, timeout=10.0)


async def tail_events(home: MeshHome, topic: str | None, follow: bool, wait: float, count: int | None,
                      show: Any) -> int:
    """Print events on ``topic`` (a prefix; default every topic) as they arrive.

    The mesh keeps no event history (the audit service will): without ``follow``
    this listens for ``wait`` seconds (or until ``count`` events), with it until
    interrupted. ``show`` prints one event. Returns how many were shown.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = 0
    async with connected(home) as client:
        # "*" is every topic; the operator role is granted it in mesh.toml.
        queue: asyncio.Queue[Event] = (await client.subscribe(topic or "*")).queue
        deadline = time.monotonic() + wait
        while not stop.is_set() and (count is None or shown < count):
            remaining = 1.0 if follow else deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(queue.get(), min(remaining, 1.0))
            except TimeoutError:
                continue  # wake up at least every second to notice a stop request.
            show(event)
            shown += 1
    return shown

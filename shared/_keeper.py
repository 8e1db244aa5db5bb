"""The loops of a service that holds keys: unseal with back-off, and follow its key source's events.

A service that fetches its keys from another (in this mesh, audit and storage from keyvault) must
keep trying while the mesh is sealed or the key source is away, without hammering it (a key source
rate-limits and audits every fetch), and react at once when the key source announces ``security.*``
events. :func:`keep_unsealed` and :func:`follow_events_of` are those loops, once, and
:func:`watch_key_source` subscribes and starts following; the key source's identity is the caller's
to name, so nothing here names a service.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from ._client import Subscription
from ._errors import MeshError, Timeout
from ._logging import get_logger
from ._service import FAILED, SEALED, Readiness

_log = get_logger("keeper")

#: Events arrive rarely: the wait is long, and a timeout just waits again.
_EVENT_WAIT_S = 3600.0


#: What a key-holding service says while the mesh is locked.
LOCKED_REASON = "the mesh is sealed: run `meshctl security unlock`"


def without_keys(exc: MeshError, *, keys_from: str) -> Readiness:
    """The readiness of a service whose key fetch from the identity ``keys_from`` failed with ``exc``:
    ``sealed`` when the mesh is locked (the operator's choice), otherwise ``failed`` naming the
    dependency and its answer, so that a service stuck behind a broken dependency is never reported
    ready (the answer carries no key: a key source's refusals are one-line reasons)."""
    if exc.code == "SEALED":
        return Readiness(SEALED, LOCKED_REASON, keys_from)
    return Readiness(FAILED, f"cannot fetch its keys: {keys_from} answered {exc.code}: {exc.message}", keys_from)


async def keep_unsealed(wake: asyncio.Event, sealed: Callable[[], bool], try_unseal: Callable[[], Awaitable[bool]],
                        while_unsealed: Callable[[], Awaitable[None]], *, period: float, retry_min: float,
                        retry_max: float) -> None:
    """Run until cancelled. While ``sealed()``, call ``try_unseal()`` (True: no longer sealed) and wait
    a delay doubling from ``retry_min`` to ``retry_max`` between failures; otherwise call
    ``while_unsealed()`` every ``period`` seconds. Setting ``wake`` ends any wait at once."""
    delay = retry_min
    while True:
        wake.clear()  # before the attempt, so a wake-up during it is not lost
        if sealed() and not await try_unseal():
            timeout, delay = delay, min(delay * 2, retry_max)
        else:
            timeout, delay = period, retry_min
            await while_unsealed()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the wake-up and loses a
        # cancellation that arrives in the same turn, and the service's stop then never ends.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()


async def follow_events_of(publisher: str, subscription: Subscription,
                           handle: Callable[[str, Any], Awaitable[None]]) -> None:
    """Run until cancelled: call ``handle(topic, body)`` for every event of ``subscription`` that the
    identity ``publisher`` published (the sender the broker stamped, never a claim in the message).
    Only the key source speaks for the seal state and the keys: events anyone else published on the
    same topics (the broker's ACL should already stop them) are ignored."""
    while True:
        try:
            event = await subscription.next(timeout=_EVENT_WAIT_S)
        except Timeout:
            continue
        if event.sender == publisher:
            await handle(event.topic, event.body)


async def watch_key_source(service: str, key_source: str, subscribe: Callable[..., Awaitable[Subscription]],
                           handle: Callable[[str, Any], Awaitable[None]], *,
                           timeout: float) -> asyncio.Task[None] | None:
    """Subscribe to ``security.`` and follow ``key_source``'s events with ``handle`` in a task of its
    own (returned, for the caller to cancel at stop). Without the right to subscribe, ``service``
    still works (its keeper retries the unseal on its own schedule): the refusal is logged with the
    line of mesh.toml that fixes it, and None is returned."""
    try:
        subscription = await subscribe("security.", timeout=timeout)
    except MeshError as exc:
        _log.warning("no_security_events", reason=exc.code,
                     hint=f'add "security." to subscribe in [services.{service}], then meshctl config reload')
        return None
    return asyncio.create_task(follow_events_of(key_source, subscription, handle), name=f"{service}-watch")

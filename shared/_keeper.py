"""The keeper loop of a service that holds keys: unseal, retry with back-off, do periodic work.

Audit and storage both fetch their keys from keyvault and must keep trying while the mesh is
sealed or keyvault is away, without hammering keyvault (it rate-limits and audits every fetch),
and react at once when told the mesh was unsealed. :func:`keep_unsealed` is that loop, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

"""Mesh calls as the benches make them: every failure a :class:`BenchError` naming the call, every
wait with a deadline. Shared by the sections that run real mesh processes (storage, authn)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from shared import MeshClient, MeshError, MeshHome

from .harness import BenchError, Children

READY_TIMEOUT: Final = 90.0   # a process up, registered and ready
CALL_TIMEOUT: Final = 60.0    # one call (a backup job's start, a login with Argon2 on a busy machine)


async def call(client: MeshClient, target: str, body: Any = None, timeout: float = CALL_TIMEOUT) -> Any:
    try:
        return await client.call(target, body, timeout=timeout)
    except MeshError as exc:
        raise BenchError(f"{target} as {client.name}: {exc.code}: {exc.message}") from None


async def timed(client: MeshClient, target: str, body: Any, count: int, check: Callable[[Any], bool],
                what: str) -> list[float]:
    """``count`` sequential calls of ``target``; each round trip in seconds. The reply is checked after
    the clock stopped: a reply ``check`` refuses is a :class:`BenchError` naming ``what``."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        reply = await call(client, target, body)
        samples[i] = clock() - start
        if not check(reply):
            raise BenchError(f"{target} ({what}): unexpected reply {str(reply)[:200]}")
    return samples


async def pipelined(client: MeshClient, target: str, body: Any, count: int, window: int,
                    check: Callable[[Any], bool], what: str) -> float:
    """``count`` calls of ``target`` from ``window`` concurrent tasks on one client; calls per second.
    Each reply is checked as it comes: one ``check`` refuses is a :class:`BenchError` naming ``what``."""
    requests = iter(range(count))

    async def worker() -> None:
        for _ in requests:  # one shared iterator: every call is made once
            reply = await call(client, target, body)
            if not check(reply):
                raise BenchError(f"{target} ({what}): unexpected reply {str(reply)[:200]}")
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    return count / (time.perf_counter() - start)


async def connect(home: MeshHome, name: str) -> MeshClient:
    try:
        return await MeshClient.connect(home, name, timeout=READY_TIMEOUT)
    except MeshError as exc:
        raise BenchError(f"{name} cannot connect to the broker: {exc.code}: {exc.message}") from None


async def until(kids: Children, what: str, probe: Callable[[], Awaitable[str | None]]) -> None:
    """Poll ``probe`` (None when ready, else what it saw) until ready, with a deadline."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        kids.check_alive()
        try:
            seen = await probe()
        except MeshError as exc:
            if exc.code in ("FORBIDDEN", "UNAUTHENTICATED"):
                raise BenchError(f"{what}: refused: {exc.code}: {exc.message}") from None
            seen = f"{exc.code}: {exc.message}"
        if seen is None:
            return
        last = seen
        await asyncio.sleep(0.1)  # poll interval
    raise BenchError(f"{what} not reached within {READY_TIMEOUT:.0f} s (last: {last})")

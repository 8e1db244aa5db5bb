"""The storage service's life: start, unseal (fetch the keys, open every engine), seal, stop.

Contracts:

- At start the state file is loaded (a damaged one stops storage: :class:`~shared.StateError`),
  each engine starts (the analytics engine refuses to start without DuckDB's secure crypto
  module), storage subscribes to ``security.`` events and tries to unseal once.
- Unsealing fetches the current version of every key purpose, then opens the engines in order;
  an engine may fetch older versions its data still needs. Until that succeeds every data call
  answers ``SEALED``: the keeper retries with a growing delay, and at once on
  ``security.unsealed``. A store that opens damaged leaves storage ``failed``, not sealed: retrying
  would not repair it.
- ``security.sealed`` (the mesh was locked) closes every engine and wipes every key.
  ``security.key_rotated`` fetches the purpose's new current version, so new writes use it at once.
- While unsealed the keeper calls ``after_unseal`` now and then: the service's background work
  (moving the backup lineage off the home, re-encryption after a rotation).
- At stop: background work ends, the last interval's reads are metered, storage seals, each engine
  stops and the worker threads finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import structlog

from shared import FAILED, SEALED, MeshError, Readiness
from shared.keeper import LOCKED_REASON, keep_unsealed, watch_key_source, without_keys

from .context import KEY_CALL_TIMEOUT_S, StorageCore
from .engine import Engine
from .errors import DamagedError
from .keys import PURPOSES
from .state import StorageState

log = structlog.get_logger("storage")

KEY_RETRY_MIN_S: Final = 1.0
KEY_RETRY_MAX_S: Final = 60.0
#: How often the keeper runs ``after_unseal`` while nothing wakes it.
BACKGROUND_PERIOD_S: Final = 60.0


class Keeper:
    """Keeps ``core``'s state and ``engines`` (opened in this order, closed in the reverse) in step
    with the mesh; ``after_unseal`` is the service's background work while unsealed."""

    def __init__(self, core: StorageCore, engines: Sequence[Engine],
                 after_unseal: Callable[[], Awaitable[None]]) -> None:
        self.core = core
        self.engines = tuple(engines)
        self.after_unseal = after_unseal
        self._unseal_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the state, start the engines, try to unseal, then keep retrying in the background."""
        core = self.core
        core.layout.ensure()
        core.stored = StorageState.load(core.layout.state)
        if not core.layout.state.exists():
            core.stored.save(core.layout.state)
        for engine in self.engines:
            await engine.start()
        watch = await watch_key_source("storage", "keyvault", core.mesh.subscribe, self._on_security_event,
                                       timeout=KEY_CALL_TIMEOUT_S)
        self._tasks += [watch] if watch is not None else []
        await self._try_unseal()
        self._tasks.append(asyncio.create_task(self._keep(), name="storage-keeper"))
        self._tasks.append(asyncio.create_task(core.meter.run(), name="storage-read-meter"))

    async def stop(self) -> None:
        """Stop background work, close every store, wipe every key, stop the engines."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.core.meter.flush()  # the last interval's reads, while the mesh is still there
        await self.seal("stopping")
        for engine in self.engines:
            await engine.stop()
        self.core.shutdown_pools()

    async def seal(self, reason: str) -> None:
        """Close the stores and wipe every key; data calls answer ``SEALED`` until unsealed."""
        async with self._unseal_lock:
            await self._close_engines()
            self.core.wipe_keys()
            self.core.state, self.core.problem = "sealed", reason
            self.core.without_keys = Readiness(SEALED, LOCKED_REASON, "keyvault")
            log.info("sealed", reason=reason)

    # -- unsealing ----------------------------------------------------------------------------

    async def _keep(self) -> None:
        await keep_unsealed(self._wake, lambda: self.core.state == "sealed", self._try_unseal, self.after_unseal,
                            period=BACKGROUND_PERIOD_S, retry_min=KEY_RETRY_MIN_S, retry_max=KEY_RETRY_MAX_S)

    async def _try_unseal(self) -> bool:
        """Fetch the keys and open the stores. True when no longer sealed (ok or failed)."""
        core = self.core
        async with self._unseal_lock:
            if core.state != "sealed":
                return True
            fetching = True
            try:
                for purpose in PURPOSES:
                    await core.fetch_key(purpose)
                fetching = False
                for engine in self.engines:
                    await engine.open()
            except MeshError as exc:
                await self._close_engines()
                core.wipe_keys()
                if isinstance(exc, DamagedError):
                    core.fail(exc.message)
                    return True
                # Kept until the next attempt ends, so health does not flicker while one is in flight.
                core.without_keys = without_keys(exc, keys_from="keyvault") if fetching else Readiness(
                    FAILED, f"cannot open its stores: {exc.code}: {exc.message}")
                log.info("sealed", reason=exc.code, detail=exc.message)
                return False
            core.state, core.problem, core.without_keys = "ok", None, None
            log.info("unsealed", versions={p: k.current for p, k in core.keys.items()})
            return True

    async def _close_engines(self) -> None:
        for engine in reversed(self.engines):
            await engine.close()

    # -- security events ----------------------------------------------------------------------

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.sealed":
            await self.seal("security.sealed")
        elif topic in ("security.unsealed", "security.key_rotated"):
            if topic == "security.key_rotated" and self.core.state == "ok":
                await self._refresh_current(body)
            self._wake.set()

    async def _refresh_current(self, body: Any) -> None:
        purpose = body.get("purpose") if isinstance(body, dict) else None
        if purpose in self.core.keys:
            try:
                await self.core.fetch_key(purpose)
            except MeshError as exc:
                log.warning("rotated_key_not_fetched", purpose=purpose, reason=exc.code)

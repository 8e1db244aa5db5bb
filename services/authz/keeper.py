"""authz's database in step with the mesh: opened at unseal, re-keyed on rotation, closed on seal.

Unsealing fetches the ``authz`` key from keyvault, opens ``<home>/data/authz/authz.db`` under it
(re-keying after a rotation, :func:`shared.keeper.open_current`) and hands the role assignments and
live consent grants to the :class:`~.authority.Authority`. Until then every decision on user data
is a deny (no grant and no assigned role is known) and every call needing the database answers
``SEALED``; the keeper retries with a growing delay, at once on ``security.unsealed``.
``security.sealed`` closes the database and forgets the roles and grants held in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import structlog

from shared import FAILED, SEALED, MeshError, Readiness, StateError
from shared.keeper import (
    LOCKED_REASON,
    keep_unsealed,
    open_current,
    rekey_current,
    watch_key_source,
    without_keys,
)

from .store import AuthzDB

log = structlog.get_logger("authz")

KEY_CALL_TIMEOUT_S: Final = 5.0
RETRY_MIN_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
PERIOD_S: Final = 60.0
PURPOSE: Final = "authz"


class Keeper:
    """Holds :attr:`db` while unsealed. ``call`` is the service's mesh call; ``loaded(db)`` runs
    after each open (the service loads roles and grants), ``sealed()`` after each close."""

    def __init__(self, directory: Path, call: Callable[..., Awaitable[Any]], loaded: Callable[[AuthzDB], None],
                 sealed: Callable[[], None]) -> None:
        self.path = directory / "authz.db"
        self.call = call
        self.loaded = loaded
        self.sealed = sealed
        self.db: AuthzDB | None = None
        self.state = "sealed"  # sealed | ok | failed
        self.readiness: Readiness | None = Readiness(SEALED, LOCKED_REASON, "keyvault")
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, subscribe: Callable[..., Awaitable[Any]] | None) -> None:
        if subscribe is not None:
            watch = await watch_key_source("authz", "keyvault", subscribe, self._on_security_event,
                                           timeout=KEY_CALL_TIMEOUT_S)
            self._tasks += [watch] if watch is not None else []
        await self.try_unseal()
        self._tasks.append(asyncio.create_task(keep_unsealed(
            self._wake, lambda: self.state == "sealed", self.try_unseal, self._nothing, period=PERIOD_S,
            retry_min=RETRY_MIN_S, retry_max=RETRY_MAX_S), name="authz-keeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.seal("stopping")

    async def _fetch(self, purpose: str, version: int | None) -> tuple[int, bytearray]:
        body: dict[str, Any] = {"purpose": purpose} if version is None else {"purpose": purpose, "version": version}
        reply = await self.call("keyvault.keys.get", body, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes cannot be wiped (shared/_crypto.py); the copy open_current keeps is wiped.
        return int(reply["version"]), bytearray(reply["key"])

    async def try_unseal(self) -> bool:
        """Open the database and load it. True when no longer sealed (ok or failed)."""
        async with self._lock:
            if self.state != "sealed":
                return True
            try:
                self.db = await open_current(AuthzDB, self.path, PURPOSE, self._fetch)
                self.loaded(self.db)
            except StateError as exc:
                self._close()
                self.state, self.readiness = "failed", Readiness(FAILED, exc.message)
                log.error("authz_unusable", reason=exc.message)
                return True
            except MeshError as exc:
                self._close()
                self.readiness = without_keys(exc, keys_from="keyvault")
                log.info("sealed", reason=exc.code)
                return False
            self.state, self.readiness = "ok", None
            log.info("unsealed")
            return True

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.sealed()

    async def seal(self, reason: str) -> None:
        async with self._lock:
            self._close()
            self.state, self.readiness = "sealed", Readiness(SEALED, LOCKED_REASON, "keyvault")
            log.info("sealed", reason=reason)

    async def _nothing(self) -> None:
        """Nothing periodic: expired grants stop covering requests by their own times."""

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.sealed":
            await self.seal("security.sealed")
        elif topic == "security.unsealed":
            self._wake.set()
        elif topic == "security.key_rotated" and isinstance(body, dict) and body.get("purpose") == PURPOSE:
            try:
                async with self._lock:
                    if self.db is not None:
                        await rekey_current(self.db, self.path, PURPOSE, self._fetch)
            except (MeshError, StateError) as exc:
                # The old version stays in use (and readable): the next unseal tries again.
                log.warning("rotated_key_not_applied", purpose=PURPOSE, reason=exc.code)

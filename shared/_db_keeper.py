"""A service's own encrypted database, kept in step with the mesh's seal state.

:class:`DatabaseKeeper` opens a :class:`~shared.keeper.KeyedDatabase` under the service's purpose
key when the mesh unseals (re-keying after a rotation), hands it to the service (``loaded``),
re-keys it when the key source announces a rotation of that purpose, and closes it on
``security.sealed`` (``sealed``). Until it is open, :attr:`DatabaseKeeper.readiness` says why
(sealed, or failed with the reason), so health reports the truth. The loops are
:func:`~shared.keeper.keep_unsealed` and :func:`~shared.keeper.watch_key_source`; the key source
is named by the caller, so nothing here names a service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from ._errors import MeshError, Sealed, StateError, Unavailable
from ._keeper import LOCKED_REASON, keep_unsealed, watch_key_source, without_keys
from ._keyed_db import KeyedDatabase, open_current, rekey_current
from ._logging import get_logger
from ._service import FAILED, SEALED, Readiness

D = TypeVar("D", bound=KeyedDatabase)

KEY_CALL_TIMEOUT_S: Final = 5.0
RETRY_MIN_S: Final = 1.0
RETRY_MAX_S: Final = 60.0
PERIOD_S: Final = 60.0


class DatabaseKeeper(Generic[D]):
    """Holds :attr:`db` while unsealed.

    ``cls`` is the database class, ``path`` its file, ``purpose`` the data key it is under,
    ``call`` the service's mesh call (``keyvault.keys.get`` goes through it), ``key_source`` the
    identity that releases keys and announces ``security.*``. ``loaded(db)`` runs after each open,
    ``sealed()`` after each close; ``periodic()`` runs every minute while open.
    """

    def __init__(self, cls: type[D], path: Path, purpose: str, call: Callable[..., Awaitable[Any]], *,
                 service: str, key_source: str = "keyvault",
                 loaded: Callable[[D], None] = lambda db: None, sealed: Callable[[], None] = lambda: None,
                 periodic: Callable[[], Awaitable[None]] | None = None) -> None:
        self.cls = cls
        self.path = path
        self.purpose = purpose
        self.call = call
        self.service = service
        self.key_source = key_source
        self.loaded = loaded
        self.sealed = sealed
        self.periodic = periodic
        self.db: D | None = None
        self.state = "sealed"  # sealed | ok | failed
        self.readiness: Readiness | None = Readiness(SEALED, LOCKED_REASON, key_source)
        self._log = get_logger(service)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, subscribe: Callable[..., Awaitable[Any]] | None) -> None:
        """Follow the key source's events (when ``subscribe`` is given), try to open now, and keep trying."""
        if subscribe is not None:
            watch = await watch_key_source(self.service, self.key_source, subscribe, self._on_security_event,
                                           timeout=KEY_CALL_TIMEOUT_S)
            self._tasks += [watch] if watch is not None else []
        await self.try_unseal()
        self._tasks.append(asyncio.create_task(keep_unsealed(
            self._wake, lambda: self.state == "sealed", self.try_unseal, self._periodic, period=PERIOD_S,
            retry_min=RETRY_MIN_S, retry_max=RETRY_MAX_S), name=f"{self.service}-keeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.seal("stopping")

    def require(self) -> D:
        """The open database, or the refusal health gives: :class:`~shared.Sealed` while the mesh is
        locked or the key source away, :class:`~shared.Unavailable` when the database is unusable."""
        if self.db is None:
            reason = self.readiness.reason if self.readiness and self.readiness.reason else LOCKED_REASON
            if self.state == "failed":
                raise Unavailable(f"{self.service} cannot serve: {reason}")
            raise Sealed(reason)
        return self.db

    async def _fetch(self, purpose: str, version: int | None) -> tuple[int, bytearray]:
        body: dict[str, Any] = {"purpose": purpose} if version is None else {"purpose": purpose, "version": version}
        reply = await self.call(f"{self.key_source}.keys.get", body, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes cannot be wiped (shared/_crypto.py); the copy open_current keeps is wiped.
        return int(reply["version"]), bytearray(reply["key"])

    async def try_unseal(self) -> bool:
        """Open the database and load it. True when no longer sealed (ok or failed)."""
        async with self._lock:
            if self.state != "sealed":
                return True
            try:
                self.db = await open_current(self.cls, self.path, self.purpose, self._fetch)
                self.loaded(self.db)
            except StateError as exc:
                self._close()
                self.state, self.readiness = "failed", Readiness(FAILED, exc.message)
                self._log.error("database_unusable", reason=exc.message)
                return True
            except MeshError as exc:
                self._close()
                self.readiness = without_keys(exc, keys_from=self.key_source)
                self._log.info("sealed", reason=exc.code)
                return False
            self.state, self.readiness = "ok", None
            self._log.info("unsealed")
            return True

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.sealed()

    async def seal(self, reason: str) -> None:
        async with self._lock:
            self._close()
            self.state, self.readiness = "sealed", Readiness(SEALED, LOCKED_REASON, self.key_source)
            self._log.info("sealed", reason=reason)

    async def _periodic(self) -> None:
        if self.periodic is not None and self.db is not None:
            await self.periodic()

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.sealed":
            await self.seal("security.sealed")
        elif topic == "security.unsealed":
            self._wake.set()
        elif topic == "security.key_rotated" and isinstance(body, dict) and body.get("purpose") == self.purpose:
            try:
                async with self._lock:
                    if self.db is not None:
                        await rekey_current(self.db, self.path, self.purpose, self._fetch)
            except (MeshError, StateError) as exc:
                # The old version stays in use (and readable): the next unseal tries again.
                self._log.warning("rotated_key_not_applied", purpose=self.purpose, reason=exc.code)

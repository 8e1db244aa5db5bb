"""What the storage engines share while the service runs: keys, worker threads, and whether it can serve.

One :class:`StorageCore` is made by the service and handed to every engine. Contracts:

- Keys (:data:`~.keys.PURPOSES`) come from keyvault only (:meth:`StorageCore.fetch_key`), are held
  in :class:`~.keys.KeySet` bytearrays, and are wiped when the mesh seals and at stop.
- ``state`` is ``sealed`` (no keys: every data call answers ``SEALED``), ``ok``, or ``failed`` (a
  store is damaged: ``UNAVAILABLE`` naming the problem). The keeper (:mod:`.keeper`) moves it;
  handlers check it with :meth:`StorageCore.require` before touching a store.
- Each engine runs its blocking work on worker threads of its own (:meth:`StorageCore.add_pool`,
  :meth:`StorageCore.run`), so a slow engine (a DuckDB query, a SQLCipher rekey) never blocks the
  event loop's heartbeats or another engine. The ``admin`` pool is for whole-store bookkeeping
  (counting what is under an old key version, the backup lineage, archives).
- Namespaces come from :meth:`StorageCore.access` only (:mod:`.access`): a caller's own, or a
  person's with their verified token and authz's decision. No data path skips it.

Nothing here imports an engine: engines are handed this object, never the other way round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import structlog

from shared import (
    FAILED,
    READY,
    SEALED,
    Forbidden,
    MeshConfig,
    MeshHome,
    Readiness,
    RequestContext,
    Sealed,
    mesh_config,
)

from .access import DataRequest, Gate
from .errors import DamagedError
from .keys import PURPOSES, KeySet
from .metering import ReadMeter
from .namespace import Namespace
from .state import Layout, StorageState

log = structlog.get_logger("storage")

#: How long storage waits for keyvault's or audit's answer to one of its own calls.
KEY_CALL_TIMEOUT_S: Final = 5.0
#: The pool whole-store bookkeeping runs on; one thread, so it never competes with itself.
ADMIN_POOL: Final = "admin"

T = TypeVar("T")


class StorageCore:
    """The state the engines share (see the module docstring). ``mesh`` is the service's mesh
    client, set by the service before its first call out (the runtime sets it before ``on_start``)."""

    def __init__(self, home: MeshHome, config: MeshConfig | None = None) -> None:
        self.home = home
        self.config = config or mesh_config(home.root)
        self.layout = Layout.of(home)
        self.stored = StorageState()
        self.mesh: Any = None
        self.state = "sealed"                  # sealed | ok | failed
        self.problem: str | None = None        # why not ok; never holds user data
        #: Why it is sealed: the answer of the last key fetch, or the store that would not open.
        self.without_keys: Readiness | None = None
        self.keys = {purpose: KeySet(purpose) for purpose in PURPOSES}
        self.meter = ReadMeter(self.append_audit)
        self.gate = Gate(self._call)
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self.add_pool(ADMIN_POOL, 1)

    async def _call(self, target: str, body: Any, *, timeout: float) -> Any:
        return await self.mesh.call(target, body, timeout=timeout)

    async def append_audit(self, records: list[dict[str, Any]]) -> None:
        """Send ``records`` to ``audit.append`` and wait until audit says they are durable."""
        await self.mesh.call("audit.append", {"records": records}, timeout=KEY_CALL_TIMEOUT_S)

    # -- running blocking engine work ----------------------------------------------------

    def add_pool(self, name: str, threads: int) -> None:
        """Give ``name`` (an engine, or :data:`ADMIN_POOL`) its own ``threads`` worker threads."""
        if name in self._pools:
            raise ValueError(f"storage already has a worker pool named {name!r}")
        self._pools[name] = ThreadPoolExecutor(threads, thread_name_prefix=f"storage-{name}")

    async def run(self, pool: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread(s) of ``pool``."""
        return await asyncio.get_running_loop().run_in_executor(self._pools[pool], fn, *args)

    def shutdown_pools(self) -> None:
        """Wait for the work already queued on every pool, then stop their threads (at stop only)."""
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    # -- who may do what, now ----------------------------------------------------------------

    async def access(self, ctx: RequestContext, req: DataRequest, action: str) -> Namespace:
        """The namespace ``req`` may ``action`` (read, write, delete) in: the caller's own, or a
        person's after authn and authz said yes (:class:`~.access.Gate`); otherwise the refusal."""
        return await self.gate.namespace(ctx, req, action)

    def readiness(self) -> Readiness:
        """Ready only with every store open under its keys: a write right after ``meshctl up`` succeeds."""
        if self.state == "ok":
            return Readiness(READY)
        if self.state == "sealed":
            return self.without_keys or Readiness(SEALED, "waiting for its keys from keyvault", "keyvault")
        return Readiness(FAILED, self.problem or "storage cannot serve")

    def fail(self, problem: str) -> None:
        """Stop serving because a store cannot be trusted (damaged at unseal, or a failed sync): health
        says ``failed`` with ``problem``, and every data call answers it, until storage restarts.
        ``problem`` names no data. The first reason stays."""
        if self.state == "failed":
            return
        self.state, self.problem = "failed", problem
        log.error("storage_unusable", reason=problem)

    def require(self) -> None:
        """Raise ``SEALED`` (or ``UNAVAILABLE``) unless the stores are open with their keys."""
        if self.state == "ok":
            return
        if self.state == "sealed":
            raise Sealed("storage is sealed: the mesh is locked or keyvault is not reachable")
        raise DamagedError(f"storage cannot serve: {self.problem}")

    def require_operator(self, ctx: RequestContext) -> None:
        """Raise ``FORBIDDEN`` unless the caller holds the operator role."""
        if ctx.role != "operator":
            raise Forbidden(f"{ctx.method} is for operators only")

    # -- keys -----------------------------------------------------------------------------

    async def fetch_key(self, purpose: str, version: int | None = None) -> None:
        """Fetch ``purpose`` (the current version, or ``version``) from keyvault into its KeySet."""
        body: dict[str, Any] = {"purpose": purpose}
        if version is not None:
            body["version"] = version
        reply = await self.mesh.call("keyvault.keys.get", body, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes cannot be wiped (shared/_crypto.py); the copy we keep can.
        key = bytearray(reply["key"])
        self.keys[purpose].add(int(reply["version"]), key, current=version is None)

    def wipe_keys(self) -> None:
        """Wipe and forget every version of every key."""
        for keyset in self.keys.values():
            keyset.wipe()

"""The storage service's core: keys, stores, sealing, and the worker threads the engines run on.

Handlers live in the ``*_api`` modules as mixins over :class:`StorageCore`; this module owns the
state they share. Contracts:

- Keys (purposes ``sqlcipher``, ``duckdb``, ``rocksdb``, ``files``, ``backups``) come from keyvault
  only, are held in :class:`~.keys.KeySet` bytearrays, and are wiped on ``security.sealed`` and at
  stop. Until they are fetched every data call answers ``SEALED``; the service retries with a
  growing delay, and at once on ``security.unsealed``.
- At start DuckDB's secure crypto module must load (:meth:`AnalyticsStore.check_crypto`), or
  storage refuses to start: it never writes DuckDB files unencrypted or with the unsafe fallback.
- Each engine runs on its own worker thread(s), so a slow engine (a DuckDB query, a SQLCipher
  rekey) never blocks the event loop's heartbeats or another engine. One thread for the engines
  whose connection is not thread-safe (SQLCipher, RocksDB's group commits), two for the others.
- Namespaces: the owner is always ``ctx.caller``, the identity the broker authenticated.
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
    MeshError,
    MeshHome,
    Readiness,
    RequestContext,
    Sealed,
    Service,
    StateError,
    mesh_config,
)
from shared.keeper import LOCKED_REASON, follow_events_of, keep_unsealed, without_keys

from ..analytics.store import AnalyticsStore, StartupError
from ..files.store import FileStore
from ..kv.store import KvStore
from ..records.store import RecordStore
from .errors import DamagedError
from .keys import PURPOSES, KeySet
from .metering import ReadMeter
from .namespace import Namespace
from .state import Layout, StorageState

log = structlog.get_logger("storage")

KEY_RETRY_MIN_S: Final = 1.0
KEY_RETRY_MAX_S: Final = 60.0
KEY_CALL_TIMEOUT_S: Final = 5.0
_POOL_THREADS: Final = {"records": 1, "kv": 1, "analytics": 2, "files": 2, "admin": 1}

T = TypeVar("T")


class StorageCore(Service):
    """Shared state of the storage service (see the module docstring)."""

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        self.layout = Layout.of(self.home)
        self.stored = StorageState()
        self.state = "sealed"                  # sealed | ok | failed
        self.problem: str | None = None        # why not ok; never holds user data
        #: Why it is sealed: the answer of the last key fetch, or the store that would not open.
        self.without_keys: Readiness | None = None
        self.keys = {purpose: KeySet(purpose) for purpose in PURPOSES}
        self.kv: KvStore | None = None
        self.records: RecordStore | None = None
        self.records_version = 0               # the key version records.db is encrypted with now
        self.analytics: AnalyticsStore | None = None
        self.files: FileStore | None = None
        self._pools = {name: ThreadPoolExecutor(n, thread_name_prefix=f"storage-{name}")
                       for name, n in _POOL_THREADS.items()}
        self._unseal_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.meter = ReadMeter(self._append_audit)

    async def _append_audit(self, records: list[dict[str, Any]]) -> None:
        await self.mesh.call("audit.append", {"records": records}, timeout=KEY_CALL_TIMEOUT_S)

    # -- running blocking engine work ----------------------------------------------------

    async def run(self, engine: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on ``engine``'s worker thread(s)."""
        return await asyncio.get_running_loop().run_in_executor(self._pools[engine], fn, *args)

    def namespace(self, ctx: RequestContext, subject: str, category: str) -> Namespace:
        """The caller's namespace for ``subject`` and ``category``; the owner is the transport identity."""
        return Namespace(ctx.caller, subject, category)

    def readiness(self) -> Readiness:
        """Ready only with every store open under its keys: a write right after ``meshctl up`` succeeds."""
        if self.state == "ok":
            return Readiness(READY)
        if self.state == "sealed":
            return self.without_keys or Readiness(SEALED, "waiting for its keys from keyvault", "keyvault")
        return Readiness(FAILED, self.problem or "storage cannot serve")

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

    # -- lifecycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Check the crypto module, load the state, try to unseal, then keep retrying in the background."""
        self.layout.ensure()
        self.stored = StorageState.load(self.layout.state)
        if not self.layout.state.exists():
            self.stored.save(self.layout.state)
        analytics = AnalyticsStore(self.layout.analytics)
        try:
            await self.run("analytics", analytics.check_crypto)
        except StartupError as exc:
            # StateError makes the runtime exit with this message (supervisord shows FATAL).
            raise StateError(exc.message) from None
        self.analytics = analytics
        try:
            subscription = await self.mesh.subscribe("security.", timeout=KEY_CALL_TIMEOUT_S)
            self._tasks.append(asyncio.create_task(self._watch(subscription), name="storage-watch"))
        except MeshError as exc:
            log.warning("no_security_events", reason=exc.code, hint="grant subscribe 'security.' to storage")
        await self._try_unseal()
        self._tasks.append(asyncio.create_task(self._keeper(), name="storage-keeper"))
        self._tasks.append(asyncio.create_task(self.meter.run(), name="storage-read-meter"))

    async def on_stop(self) -> None:
        """Stop background work, close every store, wipe every key."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.meter.flush()  # the last interval's reads, while the mesh is still there
        await self.seal("stopping")
        if self.analytics is not None:
            await self.run("analytics", self.analytics.close)
        for pool in self._pools.values():
            pool.shutdown(wait=True)

    async def _keeper(self) -> None:
        await keep_unsealed(self._wake, lambda: self.state == "sealed", self._try_unseal, self.after_unseal,
                            period=60.0, retry_min=KEY_RETRY_MIN_S, retry_max=KEY_RETRY_MAX_S)

    async def after_unseal(self) -> None:
        """Background work while unsealed (rotation); overridden by the service."""

    async def _watch(self, subscription: Any) -> None:
        await follow_events_of("keyvault", subscription, self._on_security_event)

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.sealed":
            await self.seal("security.sealed")
        elif topic in ("security.unsealed", "security.key_rotated"):
            if topic == "security.key_rotated" and self.state == "ok":
                await self._refresh_current(body)
            self._wake.set()

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

    async def _refresh_current(self, body: Any) -> None:
        purpose = body.get("purpose") if isinstance(body, dict) else None
        if purpose in self.keys:
            try:
                await self.fetch_key(purpose)
            except MeshError as exc:
                log.warning("rotated_key_not_fetched", purpose=purpose, reason=exc.code)

    async def _try_unseal(self) -> bool:
        """Fetch the keys and open the stores. True when no longer sealed (ok or failed)."""
        async with self._unseal_lock:
            if self.state != "sealed":
                return True
            fetching = True
            try:
                for purpose in PURPOSES:
                    await self.fetch_key(purpose)
                fetching = False
                await self._open_stores()
            except MeshError as exc:
                await self._close_stores()
                for keyset in self.keys.values():
                    keyset.wipe()
                if isinstance(exc, DamagedError):
                    self.state, self.problem = "failed", exc.message
                    log.error("storage_unusable", reason=exc.message)
                    return True
                # Kept until the next attempt ends, so health does not flicker while one is in flight.
                self.without_keys = without_keys(exc, keys_from="keyvault") if fetching else Readiness(
                    FAILED, f"cannot open its stores: {exc.code}: {exc.message}")
                log.info("sealed", reason=exc.code, detail=exc.message)
                return False
            self.state, self.problem, self.without_keys = "ok", None, None
            log.info("unsealed", versions={p: k.current for p, k in self.keys.items()})
            return True

    async def _open_stores(self) -> None:
        """Open every store; fetch the older key versions that data is still sealed under."""
        retired = self.stored.retired
        self.kv = await self.run("kv", KvStore.open, self.layout.kv)
        self.files = FileStore(self.layout.files)
        assert self.analytics is not None and self.kv is not None
        for purpose, engine in (("rocksdb", self.kv), ("files", self.files), ("duckdb", self.analytics)):
            current = self.keys[purpose].current
            for version in range(1, current):
                if version not in retired.get(purpose, []) and await self.run("admin", engine.count, version) > 0:
                    await self.fetch_key(purpose, version)
        await self._open_records()

    async def _open_records(self) -> None:
        keys, path = self.keys["sqlcipher"], self.layout.records
        if path.exists():
            candidates = {keys.current: keys.key()}
            found = await self.run("records", RecordStore.which_key, path, candidates)
            if found is None:
                # Not the current key: a rotation was interrupted, or has not started yet.
                for version in range(keys.current - 1, 0, -1):
                    await self.fetch_key("sqlcipher", version)
                found = await self.run("records", RecordStore.which_key, path,
                                       {v: keys.key(v) for v in keys.versions() if v != keys.current})
            if found is None:
                raise DamagedError("records.db opens with no key version storage can fetch: it is damaged "
                                   "or not this mesh's")
            self.records_version = found
        else:
            self.records_version = keys.current
        self.records = await self.run("records", RecordStore.open, path, keys.key(self.records_version))

    async def _close_stores(self) -> None:
        if self.records is not None:
            await self.run("records", self.records.close)
        if self.kv is not None:
            await self.run("kv", self.kv.close)
        if self.analytics is not None:
            await self.run("analytics", self.analytics.forget_keys)
        if self.files is not None:
            await self.run("files", self.files.forget_keys)
        self.records = self.kv = self.files = None

    async def seal(self, reason: str) -> None:
        """Close the stores and wipe every key; data calls answer ``SEALED`` until unsealed."""
        async with self._unseal_lock:
            await self._close_stores()
            for keyset in self.keys.values():
                keyset.wipe()
            self.state, self.problem = "sealed", reason
            self.without_keys = Readiness(SEALED, LOCKED_REASON, "keyvault")
            log.info("sealed", reason=reason)


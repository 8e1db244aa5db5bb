"""What an engine is to the rest of storage: one store, its key, its worker threads, its life cycle.

The service makes one object per engine (key-value, records, analytics, files), each a subclass of
:class:`Engine`, and hands them to the parts that work across stores: the keeper opens and closes
them as the mesh unseals and seals (:mod:`.keeper`), rotation re-encrypts them
(:mod:`.rotation`), verify checks them, and backups snapshot and restore them. Those parts see
only this interface, so none of them imports an engine, and each engine's own requests (its
``storage.<engine>.*`` handlers) stay in its package.

Contracts every engine keeps:

- ``name`` names its worker pool (:attr:`Engine.threads` threads), its store in ``storage.verify``
  reports and restore counts, and its place in a backup's snapshot (:meth:`Engine.snapshot`).
- ``purpose`` is the keyvault purpose of its key; :attr:`Engine.keys` is that :class:`~.keys.KeySet`.
- :meth:`Engine.open` runs with the keys fetched and may fetch older versions its data still needs;
  :meth:`Engine.close` forgets every key and may run after a failed or partial ``open``.
- Every other method runs only while the store is open (``state`` is ``ok``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .context import ADMIN_POOL, StorageCore
from .keys import KeySet

T = TypeVar("T")


class Engine(ABC):
    """One store under the service (see the module docstring)."""

    name: ClassVar[str]
    purpose: ClassVar[str]
    #: Worker threads of the engine's pool: one where the store's connection is not thread-safe.
    threads: ClassVar[int] = 1

    def __init__(self, core: StorageCore) -> None:
        self.core = core
        core.add_pool(self.name, self.threads)

    @property
    def keys(self) -> KeySet:
        """The versions of this engine's key held now."""
        return self.core.keys[self.purpose]

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this engine's worker thread(s)."""
        return await self.core.run(self.name, fn, *args)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - an optional hook: most engines start with the service as is
        """Once, when the service starts, before the first unseal. Nothing by default."""

    async def stop(self) -> None:  # noqa: B027 - an optional hook: most engines have nothing left to stop
        """Once, when the service stops, after the last seal. Nothing by default."""

    @abstractmethod
    async def open(self) -> None:
        """Open the store under the keys just fetched (an unseal)."""

    @abstractmethod
    async def close(self) -> None:
        """Close the store and forget every key (a seal, or an unseal that failed). Idempotent."""

    # -- whole store ------------------------------------------------------------------------

    @abstractmethod
    async def verify(self) -> list[str]:
        """Read the whole store back; the problems found (empty: intact), naming no data or key."""

    @abstractmethod
    async def is_empty(self) -> bool:
        """True when the store holds nothing."""

    @abstractmethod
    async def snapshot(self, work: Path) -> None:
        """Copy the store, still encrypted under its keys, into ``work`` (under ``work/<name>``, or
        ``work/<name>.db`` for a single file), consistently for this store."""

    @abstractmethod
    async def restore_from(self, work: Path, source_keys: KeySet) -> int:
        """Re-encrypt a snapshot this engine made into ``work`` (sealed under ``source_keys``) into
        the store under the current key; how many items. The store was empty before the restore."""

    def key_versions(self) -> list[int]:
        """The versions of the key the store's data is under: what a backup must carry."""
        return self.keys.versions()

    def archive_meta(self) -> dict[str, Any]:
        """What this engine adds to a backup archive's manifest ``meta``. Nothing by default."""
        return {}


class StepwiseEngine(Engine):
    """An engine whose data is sealed item by item, each under the key version it was written with
    (key-value entries, file blobs, analytics files): after a rotation it is moved to the current
    version a step at a time, and until then opening it needs every older version still in use."""

    async def open(self) -> None:
        """Open the store, then fetch the older key versions that data is still sealed under."""
        await self.open_store()
        await self.fetch_older_keys()

    @abstractmethod
    async def open_store(self) -> None:
        """Open the store itself (the keys are fetched)."""

    @abstractmethod
    async def count(self, version: int, pool: str | None = None) -> int:
        """How many items are sealed under key ``version``, counted on the worker thread(s) of
        ``pool`` (default: the engine's own)."""

    @abstractmethod
    async def rotate_step(self, version: int) -> int:
        """Move some items from ``version`` to the current version, each move atomic on disk; how
        many moved, 0 when none are left."""

    async def forget_retired(self) -> None:
        """Rotation just retired versions of :attr:`keys`: drop at once anything the engine derived
        from them (their keys are already wiped). Nothing by default."""

    async def fetch_older_keys(self) -> None:
        """Fetch each older version of the key that is not retired and still seals data (counted on
        the admin pool, so requests on the engine's own threads are not held up)."""
        retired = self.core.stored.retired.get(self.purpose, [])
        for version in range(1, self.keys.current):
            if version not in retired and await self.count(version, ADMIN_POOL) > 0:
                await self.core.fetch_key(self.purpose, version)

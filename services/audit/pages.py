"""What one export keeps between its pages: the verified Merkle tree of its checkpoint.

A multi-page ``audit.export`` proves every page against one checkpoint (``tree_size``). The first
page verifies the whole log (:mod:`.scan`) and builds the tree of that checkpoint from the verified
leaf hashes; :data:`TREES` keeps it, so each later page costs its own records only: read them,
check each against its verified leaf hash, prove it with the cached tree (:mod:`.export`).

Why a cached tree stays valid: records are append-only and a checkpoint's tree covers a fixed
prefix, so what was verified for ``tree_size`` stays the truth about those records unless someone
rewrites the database. What a later page still checks, against such a rewrite:

- the checkpoint stored at ``tree_size`` is still exactly the cached one (signature included):
  otherwise (gone, replaced, another database at the same path) the cache is not used, and the
  page verifies the whole log again;
- every record of the page, as read now, hashes to its verified leaf: otherwise the page fails
  with :class:`~.errors.TamperError` naming the record, and the cache is dropped.

What it does not do: re-verify records outside the page (the old O(N)-per-page cost). An edit made
between two pages to a record of an earlier page is not seen by the export: the export still
holds only records proven against the signed checkpoint, and the next ``audit.verify``, unseal or
export start finds the edit. Any failed verification (:mod:`.scan`) and sealing drop the cache.

Bounds: at most :data:`CACHE_ENTRIES` trees (concurrent exports of different checkpoints), each
dropped after :data:`CACHE_IDLE_S` seconds unused; a tree costs 64 bytes per record (every level
packed, no object per hash). Thread-safe: pages run in worker threads.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, overload

from .chain import Checkpoint
from .merkle import HASH_BYTES, MerkleTree

__all__ = ["CACHE_ENTRIES", "CACHE_IDLE_S", "TREES", "PackedTree", "TreeCache", "VerifiedTree"]

CACHE_ENTRIES: Final = 2        #: verified trees kept at once (one per export in progress)
CACHE_IDLE_S: Final = 600.0     #: a tree no page asked for this long is dropped


class _Level(Sequence[bytes]):
    """One level of a tree as one bytes object: node ``i`` is ``data[32 i : 32 i + 32]``."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data) // HASH_BYTES

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):  # not used by MerkleTree; complete the Sequence contract anyway
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._data[index * HASH_BYTES:(index + 1) * HASH_BYTES]


class PackedTree(MerkleTree):
    """A :class:`~.merkle.MerkleTree` (same roots, same RFC 9162 proofs: the proof code is the
    base class's) whose levels are packed bytes: 64 bytes per leaf in all instead of about 150 as
    one Python object per hash. Built in O(n) from the concatenated leaf hashes."""

    __slots__ = ()

    def __init__(self, leaves: bytes | bytearray) -> None:  # the base class builds from a list instead
        if len(leaves) % HASH_BYTES:
            raise ValueError("leaf hashes must be concatenated 32-byte hashes")
        level = bytes(leaves)
        self._levels = [_Level(level)]
        while len(level) > HASH_BYTES:
            view, upper = memoryview(level), bytearray()
            pairs = len(level) // (2 * HASH_BYTES)
            for i in range(pairs):  # left || right are adjacent in the packed level: one slice
                upper += hashlib.sha256(b"\x01" + view[2 * HASH_BYTES * i:2 * HASH_BYTES * (i + 1)]).digest()
            if len(level) // HASH_BYTES & 1:  # an odd last node is carried up unchanged, as in the base
                upper += view[-HASH_BYTES:]
            view.release()
            level = bytes(upper)
            self._levels.append(_Level(level))

    def leaf(self, index: int) -> bytes:
        """The leaf hash of record ``index``."""
        return self._levels[0][index]


@dataclass(slots=True)
class VerifiedTree:
    """The checkpoint an export proves against, and the tree of the records it covers (verified)."""

    checkpoint: Checkpoint
    tree: PackedTree
    used: float = field(default=0.0, compare=False)


class TreeCache:
    """Verified trees by (database, public key, tree size); see the module docstring for why a hit
    is safe and what a caller must still check (the stored checkpoint, the page's leaves)."""

    def __init__(self, entries: int = CACHE_ENTRIES, idle_s: float = CACHE_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries, self._idle_s, self._clock = entries, idle_s, clock
        self._trees: dict[tuple[str, bytes, int], VerifiedTree] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _where(path: Path) -> str:
        return str(path.resolve())

    def _expire(self, now: float) -> None:
        for key in [k for k, v in self._trees.items() if now - v.used > self._idle_s]:
            del self._trees[key]

    def get(self, path: Path, public_key: bytes, tree_size: int) -> VerifiedTree | None:
        """The cached tree for ``tree_size`` of the database at ``path``, or None."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            found = self._trees.get((self._where(path), public_key, tree_size))
            if found is not None:
                found.used = now
            return found

    def put(self, path: Path, public_key: bytes, verified: VerifiedTree) -> None:
        """Keep ``verified`` (replacing one of the same tree size; the least recently used goes
        when the cache is full)."""
        with self._lock:
            now = verified.used = self._clock()
            self._expire(now)
            key = (self._where(path), public_key, verified.checkpoint.tree_size)
            self._trees.pop(key, None)
            while len(self._trees) >= self._entries:
                del self._trees[min(self._trees, key=lambda k: self._trees[k].used)]
            self._trees[key] = verified

    def forget(self, path: Path) -> None:
        """Drop every tree of the database at ``path`` (it failed verification, or audit sealed)."""
        with self._lock:
            where = self._where(path)
            for key in [k for k in self._trees if k[0] == where]:
                del self._trees[key]

    def sizes(self) -> Iterable[int]:
        """The tree sizes cached (for tests and diagnostics)."""
        with self._lock:
            return sorted(k[2] for k in self._trees)


#: The process's cache: one audit service per process, whose export pages run in worker threads.
TREES: Final = TreeCache()

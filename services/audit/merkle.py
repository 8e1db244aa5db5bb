"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing and proofs: plain functions over bytes.

The tree over ``n`` leaves is the one of RFC 9162 section 2.1.1: a leaf hashes as
``SHA-256(0x00 || leaf)``, an interior node as ``SHA-256(0x01 || left || right)``, a tree of more
than one leaf splits at the largest power of two below ``n``, and the empty tree's hash is
``SHA-256("")``. The distinct leaf and node prefixes keep a leaf from passing for a node (second
preimages). Any other implementation of RFC 6962/9162 computes the same roots and checks the same
proofs, so a third party can verify an exported audit log with its own tools.

- :class:`Frontier` keeps a growing tree as one hash per set bit of its size, so the audit service
  appends in O(log n) and knows the current root for a checkpoint at any moment.
- :class:`MerkleTree` keeps every node of a fixed list of leaves, for inclusion proofs (section
  2.1.3) and consistency proofs (section 2.1.4) in O(log n) each after an O(n) build.
- :func:`consistency_path` is the RFC's consistency proof over any source of subtree hashes, so
  a tree that keeps only some of its nodes (:mod:`.witness_tree`) proves exactly as this one does.

The hashing (:func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT`) and the verifiers
(:func:`verify_inclusion`, :func:`verify_consistency`, raising :class:`TamperError`) are the
verification core in :mod:`shared.transparency`, which a paired device runs too; they are
re-exported here. Arguments a caller got wrong (an index past the end) raise :class:`shared.BadRequest`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from shared import BadRequest
from shared.transparency import (
    EMPTY_ROOT,
    HASH_BYTES,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT", "HASH_BYTES",
    "Frontier", "MerkleTree",
    "consistency_path", "fold", "leaf_hash", "merkle_root", "node_hash", "split", "verify_consistency",
    "verify_inclusion",
]


def fold(nodes: Sequence[bytes]) -> bytes:
    # Perfect subtrees, largest (leftmost) first: the RFC's split always puts the largest power of
    # two on the left, so the root is the right-to-left fold of them.
    root = nodes[-1]
    for node in reversed(nodes[:-1]):
        root = node_hash(node, root)
    return root


def merkle_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (not the leaves: hash them with :func:`leaf_hash`)."""
    frontier = Frontier()
    for h in leaf_hashes:
        frontier.append(h)
    return frontier.root()


class Frontier:
    """A growing Merkle tree as its compact range: the roots of its perfect subtrees.

    There is one hash per set bit of ``size``, the largest subtree first, so a tree of a million
    leaves is twenty hashes. Appending merges equal-sized subtrees like a binary counter carries
    (O(log n), one node hash amortised); :meth:`root` folds them (O(log n)). The audit service can
    store ``size`` and ``nodes`` next to its latest checkpoint and restore them after a restart
    instead of rehashing the whole log.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self._size = size
        self._nodes = list(nodes)
        if type(size) is not int or size < 0 or len(self._nodes) != size.bit_count():
            raise BadRequest(f"a frontier of {size!r} leaves needs one hash per set bit of its size")
        if any(type(h) is not bytes or len(h) != HASH_BYTES for h in self._nodes):
            raise BadRequest(f"frontier hashes must be {HASH_BYTES} bytes")

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The perfect subtree roots, largest first; with :attr:`size`, all there is to store."""
        return tuple(self._nodes)

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf, given as its leaf hash."""
        node, n = leaf_hash, self._size
        while n & 1:  # each trailing one bit is a subtree of the new node's size: merge with it
            node = node_hash(self._nodes.pop(), node)
            n >>= 1
        self._nodes.append(node)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves appended so far; :data:`EMPTY_ROOT` when there are none."""
        return fold(self._nodes) if self._nodes else EMPTY_ROOT

    def copy(self) -> Frontier:
        """An independent copy, to try appends that may be rolled back."""
        return Frontier(self._size, self._nodes)


def split(size: int) -> int:
    # The largest power of two strictly below size (size >= 2): RFC 9162's k.
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """Every node of the tree over a fixed list of leaf hashes, for roots and proofs at any size.

    Built bottom-up in O(n): level ``h`` holds the hashes of the subtrees covering leaves
    ``[j * 2**h, min((j + 1) * 2**h, n))``, an odd last node being carried up unchanged; that is
    exactly the RFC's tree. 100k leaves take about 200k hashes and 13 MB.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        level = list(leaf_hashes)
        self._levels: list[Sequence[bytes]] = [level]  # a subclass may pack them (.pages)
        while len(level) > 1:
            upper = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) & 1:
                upper.append(level[-1])
            self._levels.append(upper)
            level = upper

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if type(size) is not int or not 0 <= size <= self.size:
            raise BadRequest(f"tree size {size!r} is outside 0..{self.size}")
        return size

    def _subtree(self, start: int, end: int) -> bytes:
        # MTH(D[start:end]) for a node of the RFC tree over some prefix: start is then a multiple
        # of the smallest power of two >= end - start.
        height = (end - start - 1).bit_length()
        if end == self.size or end - start == 1 << height:
            return self._levels[height][start >> height]
        parts = []  # the right edge of a smaller tree: its perfect subtrees, largest first
        while start < end:
            height = (end - start).bit_length() - 1
            parts.append(self._levels[height][start >> height])
            start += 1 << height
        return fold(parts)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all of them)."""
        size = self._check_size(size)
        return self._subtree(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, nearest the leaf first."""
        size = self._check_size(size)
        if type(index) is not int or not 0 <= index < size:
            raise BadRequest(f"leaf {index!r} is not in a tree of {size} leaves")
        path, start, end = [], 0, size
        while end - start > 1:
            mid = start + split(end - start)
            if index < mid:
                path.append(self._subtree(mid, end))
                end = mid
            else:
                path.append(self._subtree(start, mid))
                start = mid
        path.reverse()  # walked from the root down; the proof lists from the leaf up
        return path

    def consistency_proof(self, first_size: int, size: int | None = None) -> list[bytes]:
        """PROOF(first_size, D[0:size]) of RFC 9162 section 2.1.4.1; empty when either tree is
        empty or both are the same size (there is nothing to prove)."""
        size = self._check_size(size)
        if type(first_size) is not int or not 0 <= first_size <= size:
            raise BadRequest(f"first tree size {first_size!r} is outside 0..{size}")
        return consistency_path(self._subtree, first_size, size)


def consistency_path(subtree: Callable[[int, int], bytes], first_size: int, size: int) -> list[bytes]:
    """PROOF(first_size, D[0:size]) of RFC 9162 section 2.1.4.1 (``0 <= first_size <= size``,
    checked by the caller), with ``subtree(start, end)`` giving MTH(D[start:end]) for the nodes
    the proof needs; empty when either tree is empty or both are the same size."""
    if first_size in (0, size):
        return []
    # SUBPROOF(m, D[start:end], b), unrolled: m is the old tree's size inside [start, end),
    # complete is b (the range is still a prefix of the old tree's own left spine).
    proof, start, end, m, complete = [], 0, size, first_size, True
    while m != end - start:
        k = split(end - start)
        if m <= k:
            proof.append(subtree(start + k, end))
            end = start + k
        else:
            proof.append(subtree(start, start + k))
            start, m, complete = start + k, m - k, False
    if not complete:
        proof.append(subtree(start, end))
    proof.reverse()
    return proof

"""The tree audit proves consistency from: what ``audit.checkpoint`` needs, kept small as the log grows.

A paired device asks, on every connection, for a consistency proof from the checkpoint it kept to
the latest one (RFC 9162 section 2.1.4). A proof is O(log n) subtree hashes, but they lie anywhere
in the tree, so recomputing them means reading the whole log each time, and keeping every node
costs 64 bytes a record for as long as audit runs. :class:`WitnessTree` keeps the middle ground:

- every perfect subtree of at least ``2**floor`` leaves (:data:`FLOOR`: 64), as packed hashes,
  about 1 byte a record in all (a million records: about a megabyte), plus the leaf hashes of
  the last, unfinished block;
- a proof element smaller than a block is computed from that block's leaves, read again from the
  database (``read``: at most ``2**floor`` records a block) and checked against the block's kept
  root first, so a record changed since it was verified raises :class:`TamperError`, never a
  wrong proof.

Contract: feed leaf hashes in log order (:meth:`WitnessTree.append`; the audit service feeds the
ones its unseal verification computes, then the records committed since, read back). Proofs and
roots are those of :class:`.merkle.MerkleTree` over the same leaves (the same RFC algorithm,
:func:`.merkle.consistency_path`). Pure apart from ``read``; not thread-safe: the caller holds a
lock around :meth:`~WitnessTree.extend` and the proofs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final

from shared import BadRequest

from .errors import TamperError
from .merkle import EMPTY_ROOT, HASH_BYTES, consistency_path, fold, node_hash

__all__ = ["FLOOR", "LeafReader", "WitnessTree"]

FLOOR: Final = 6  #: subtrees of fewer than 2**FLOOR leaves are computed from their leaves on demand

#: The leaf hashes of records ``[start, end)`` as the database holds them now.
LeafReader = Callable[[int, int], Sequence[bytes]]


def _perfect_root(leaves: Sequence[bytes]) -> bytes:
    # MTH of a power-of-two number of leaf hashes: pair them up, level by level.
    level = list(leaves)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class WitnessTree:
    """An append-only RFC 9162 tree keeping its perfect subtrees of ``2**floor`` leaves and up."""

    __slots__ = ("_block", "_levels", "_size", "floor")

    def __init__(self, floor: int = FLOOR) -> None:
        if type(floor) is not int or not 0 <= floor <= 16:
            raise BadRequest("the witness tree's floor must be 0 to 16")
        self.floor = floor
        self._levels: list[bytearray] = []  # _levels[i]: the nodes of height floor + i, packed, left to right
        self._block: list[bytes] = []       # the leaf hashes after the last whole block
        self._size = 0

    @property
    def size(self) -> int:
        """The number of leaves appended."""
        return self._size

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash."""
        self._block.append(leaf)
        if len(self._block) == 1 << self.floor:
            node, self._block = _perfect_root(self._block), []
            self._size -= (1 << self.floor) - 1  # its other leaves were counted; _add_block counts them all
            self._add_block(node)
        else:
            self._size += 1

    def state(self) -> tuple[bytes, list[bytes]]:
        """What rebuilds this tree (:meth:`restore`): the roots of its whole blocks (32 bytes each,
        packed) and the leaf hashes after them. The levels above are recomputed from the roots."""
        return bytes(self._levels[0]) if self._levels else b"", list(self._block)

    @classmethod
    def restore(cls, floor: int, blocks: bytes, tail: Sequence[bytes]) -> WitnessTree:
        """The tree :meth:`state` described: its size is ``2**floor`` per block root plus the tail.
        Only the block roots are kept, so the caller checks :meth:`root` against a signed root
        (which every kept node above the blocks feeds) before trusting it."""
        tree = cls(floor)
        if len(blocks) % HASH_BYTES or len(tail) >= 1 << floor or any(len(leaf) != HASH_BYTES for leaf in tail):
            raise BadRequest("a witness tree's state needs whole block roots and less than a block of leaves")
        for i in range(0, len(blocks), HASH_BYTES):
            tree._add_block(blocks[i:i + HASH_BYTES])
        tree._block = [bytes(leaf) for leaf in tail]
        tree._size += len(tail)
        return tree

    def _add_block(self, node: bytes) -> None:
        self._size += 1 << self.floor
        level = 0
        while True:  # a binary counter's carry: two equal subtrees make one of the next height
            if level == len(self._levels):
                self._levels.append(bytearray())
            row = self._levels[level]
            row += node
            if len(row) // HASH_BYTES & 1:
                return
            node = node_hash(bytes(row[-2 * HASH_BYTES:-HASH_BYTES]), bytes(row[-HASH_BYTES:]))
            level += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append each leaf hash in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self, size: int, read: LeafReader) -> bytes:
        """MTH of the first ``size`` leaves."""
        self._check(size)
        return _Query(self, read).range(0, size) if size else EMPTY_ROOT

    def consistency_proof(self, first_size: int, size: int, read: LeafReader) -> list[bytes]:
        """PROOF(first_size, D[0:size]) of RFC 9162 section 2.1.4.1, as :class:`.merkle.MerkleTree` gives it."""
        self._check(size)
        if type(first_size) is not int or not 0 <= first_size <= size:
            raise BadRequest(f"first tree size {first_size!r} is outside 0..{size}")
        return consistency_path(_Query(self, read).range, first_size, size)

    def _check(self, size: int) -> None:
        if type(size) is not int or not 0 <= size <= self._size:
            raise BadRequest(f"tree size {size!r} is outside 0..{self._size}")


class _Query:
    """One root or proof: subtree hashes from the kept nodes, and blocks read (once each) for the rest."""

    def __init__(self, tree: WitnessTree, read: LeafReader) -> None:
        self.tree, self.read = tree, read
        self.blocks: dict[int, Sequence[bytes]] = {}

    def range(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a node of the RFC tree over some prefix: ``start`` is aligned to the
        largest power of two in ``end - start``, so the range is its perfect subtrees, largest first."""
        parts = []
        while start < end:
            height = (end - start).bit_length() - 1
            parts.append(self.node(start, height))
            start += 1 << height
        return fold(parts)

    def node(self, start: int, height: int) -> bytes:
        """The perfect subtree of ``2**height`` leaves from ``start`` (a multiple of its size)."""
        floor = self.tree.floor
        if height >= floor:
            row, i = self.tree._levels[height - floor], start >> height
            return bytes(row[i * HASH_BYTES:(i + 1) * HASH_BYTES])
        offset = start & ((1 << floor) - 1)
        return _perfect_root(self.block(start >> floor)[offset:offset + (1 << height)])

    def block(self, number: int) -> Sequence[bytes]:
        """The leaf hashes of block ``number``: the unfinished one from memory, a whole one read
        from the database and checked against its kept root."""
        tree, size = self.tree, 1 << self.tree.floor
        if number * size >= tree.size - len(tree._block):
            return tree._block
        leaves = self.blocks.get(number)
        if leaves is None:
            start = number * size
            leaves = self.read(start, start + size)
            kept = bytes(tree._levels[0][number * HASH_BYTES:(number + 1) * HASH_BYTES])
            if len(leaves) != size or _perfect_root(leaves) != kept:
                raise TamperError(f"records {start} to {start + size - 1} are not the records audit verified: "
                                  "the log was changed since", sequence=start)
            self.blocks[number] = leaves
        return leaves

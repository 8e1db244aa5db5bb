"""Paging of ``audit.export``: which records go into one verified, size-bounded bundle.

Contract of :func:`export_page`: it opens its own read connection to the database and returns
records ``[from_seq, from_seq + n)`` with inclusion proofs against one signed checkpoint, ``n``
shrunk until the bundle fits the broker's message limit. A log that does not verify is never
exported (:class:`~.errors.TamperError`). Pages of a multi-page export pin the first page's
checkpoint with ``tree_size``. It blocks (SQLite and hashing): the handler runs it off the event loop.

Cost: a page without ``tree_size`` (the first; the service signs a fresh checkpoint for it) and a
pinned page whose tree is not cached verify the whole log in one streamed pass (:mod:`.scan`:
memory for the checkpoint's leaf hashes, 32 bytes a record, and the packed tree built from them,
64 bytes a record) and keep the verified tree (:data:`.pages.TREES`). A pinned page that finds it
reads only its own records from the database, checks each against its verified leaf hash, and
proves it from the tree: O(page x log N), not O(N). :mod:`.pages` says why reusing the tree is
safe and what each page still checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from shared import BadRequest, message
from shared.keystore import Keystore

from .chain import Checkpoint, encode_record
from .errors import TamperError
from .merkle import leaf_hash
from .pages import TREES, PackedTree, VerifiedTree
from .proofs import pack_bundle
from .scan import scan
from .store import AuditStore

EXPORT_MARGIN: Final = 4096             #: envelope and reply framing around an exported bundle
EXPORT_PAGE_RECORDS: Final = 2000       #: records per ``audit.export`` page unless the caller asks fewer
MAX_EXPORT_PAGE_RECORDS: Final = 10_000


@message
class ExportRequest:
    """``audit.export {from_seq?, limit?, tree_size?}``: ``tree_size`` pins the checkpoint a
    multi-page export is proven against (the one the first page named)."""

    from_seq: int = 0
    limit: int = EXPORT_PAGE_RECORDS
    tree_size: int | None = None


def export_page(path: Path, key: bytes | bytearray, public_key: bytes, slot: Keystore, from_seq: int, limit: int,
                tree_size: int | None, max_bytes: int) -> tuple[bytes, Checkpoint, int]:
    """A verified bundle of records ``[from_seq, from_seq + n)``, ``n <= limit`` shrunk until the
    bundle fits in ``max_bytes``, proven against the latest checkpoint (or the one of ``tree_size``).
    Returns the bundle, its checkpoint and ``n``. Raises :class:`TamperError` if the log does not
    verify, :class:`BadRequest` for a range or checkpoint that is not there."""
    with AuditStore.open(path, key) as store:
        try:
            verified = None if tree_size is None else _cached(store, public_key, tree_size)
            if verified is None:
                verified = _verify(store, public_key, slot, tree_size)
            checkpoint, tree = verified.checkpoint, verified.tree
            size = checkpoint.tree_size
            if not 0 <= from_seq < size:
                raise BadRequest(f"from_seq must be 0 to {size - 1}: the checkpoint covers {size} records")
            canonical = _read_page(store, tree, from_seq, min(limit, size - from_seq))
        except TamperError:
            TREES.forget(path)  # whatever failed, no later page is served from a tree verified before
            raise
    proven = [(seq, data, tree.inclusion_proof(seq)) for seq, data in enumerate(canonical, from_seq)]
    count = len(proven)
    while True:
        bundle = pack_bundle(checkpoint, proven[:count])
        if len(bundle) <= max_bytes:
            return bundle, checkpoint, count
        if count == 1:
            raise BadRequest(f"record {from_seq} alone makes a bundle of {len(bundle)} bytes, over the "
                             f"{max_bytes} bytes broker.max_message_bytes allows")
        count = max(1, min(count - 1, count * max_bytes // len(bundle) * 9 // 10))  # strictly fewer each time


def _cached(store: AuditStore, public_key: bytes, tree_size: int) -> VerifiedTree | None:
    """The verified tree of ``tree_size`` if one is cached and the database still stores exactly
    its checkpoint; None means: verify the whole log again."""
    verified = TREES.get(store.path, public_key, tree_size)
    if verified is None:
        return None
    if store.checkpoint_at(tree_size) != verified.checkpoint:  # gone, replaced, or another database
        TREES.forget(store.path)
        return None
    return verified


def _verify(store: AuditStore, public_key: bytes, slot: Keystore, tree_size: int | None) -> VerifiedTree:
    """Verify the whole log (streamed), keeping the leaf hashes of the checkpoint to export against;
    cache and return its tree. The log is judged before a missing checkpoint is: tampering wins."""
    with scan(store, public_key, slot) as verified:
        if tree_size is None:
            checkpoint = verified.latest
        else:  # the scan checks every stored checkpoint; pick the pinned one among them
            checkpoint = next((c for c in verified.checkpoints if c.tree_size == tree_size), None)
        verified.keep_leaves(checkpoint.tree_size if checkpoint is not None else 0)
        verified.finish()
        leaves, verified.leaves = verified.leaves, bytearray()  # the only reference: freed once packed
    if checkpoint is None:
        if tree_size is not None:
            raise BadRequest(f"the log has no checkpoint at tree size {tree_size}")
        raise BadRequest("the log has no checkpoint yet: nothing to export")
    tree = PackedTree(leaves)
    del leaves  # the tree's bottom level is a bytes copy: do not hold the leaves twice
    if tree.size != checkpoint.tree_size or tree.root() != checkpoint.root:  # the scan proved it; belt and braces
        raise TamperError(f"the log's first {checkpoint.tree_size} records do not match the checkpoint at tree "
                          f"size {checkpoint.tree_size}")
    result = VerifiedTree(checkpoint, tree)
    TREES.put(store.path, public_key, result)
    return result


def _read_page(store: AuditStore, tree: PackedTree, from_seq: int, count: int) -> list[bytes]:
    """The canonical bytes of records ``[from_seq, from_seq + count)`` as stored now, each checked
    against its verified leaf hash: a record changed or lost since the tree was verified raises
    :class:`TamperError` naming it (:func:`export_page` then drops the cached tree)."""
    canonical: list[bytes] = []
    for entry in store.entries(from_seq, from_seq + count):
        expected = from_seq + len(canonical)
        if entry.record.seq != expected:
            raise TamperError(f"record {expected} is missing or out of place in the database, which the "
                              "export verified before: the log was changed", sequence=expected)
        data = encode_record(entry.record)
        if leaf_hash(data) != tree.leaf(expected):
            raise TamperError(f"record {expected} no longer matches the log the export verified: it was "
                              "modified", sequence=expected)
        canonical.append(data)
    if len(canonical) != count:
        missing = from_seq + len(canonical)
        raise TamperError(f"record {missing} is missing from the database, which the export verified "
                          "before: the log was cut short", sequence=missing)
    return canonical

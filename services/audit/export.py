"""Paging of ``audit.export``: which records go into one verified, size-bounded bundle.

Contract of :func:`export_page`: it opens its own read connection to the database, re-verifies the
whole log against the trusted checkpoint before exporting anything (a log that does not verify is
never exported: :class:`~.errors.TamperError`), and returns records ``[from_seq, from_seq + n)``
with inclusion proofs against one signed checkpoint, ``n`` shrunk until the bundle fits the
broker's message limit. Pages of a multi-page export pin the first page's checkpoint with
``tree_size``. It blocks (SQLite and hashing): the handler runs it off the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from shared import BadRequest, message
from shared._keystore import Keystore

from .chain import Checkpoint
from .proofs import export_bundle
from .store import AuditStore, verify_store

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
        _, latest, _, entries = verify_store(store, public_key, slot)
        checkpoint = latest
        if tree_size is not None and (latest is None or latest.tree_size != tree_size):
            # verify_store checked every stored checkpoint; pick the pinned one among them.
            checkpoint = next((c for c in store.load()[1] if c.tree_size == tree_size), None)
            if checkpoint is None:
                raise BadRequest(f"the log has no checkpoint at tree size {tree_size}")
    if checkpoint is None:
        raise BadRequest("the log has no checkpoint yet: nothing to export")
    size = checkpoint.tree_size
    if not 0 <= from_seq < size:
        raise BadRequest(f"from_seq must be 0 to {size - 1}: the checkpoint covers {size} records")
    records = [e.record for e in entries]
    count = min(limit, size - from_seq)
    while True:
        bundle = export_bundle(records, checkpoint, only=range(from_seq, from_seq + count))
        if len(bundle) <= max_bytes:
            return bundle, checkpoint, count
        if count == 1:
            raise BadRequest(f"record {from_seq} alone makes a bundle of {len(bundle)} bytes, over the "
                             f"{max_bytes} bytes broker.max_message_bytes allows")
        count = max(1, min(count - 1, count * max_bytes // len(bundle) * 9 // 10))  # strictly fewer each time

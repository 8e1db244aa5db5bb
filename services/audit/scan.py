"""One verification pass over the stored log, streamed: every check of :func:`.verifier.verify_log`
against the trusted checkpoint, in memory that does not grow with the log.

Contract of :func:`scan` (a context manager yielding a :class:`LogScan`):

- The trusted latest checkpoint is read from its slot first, then everything else inside one read
  snapshot of the database (:meth:`.store.AuditStore.snapshot`): a commit racing the pass can only
  make the log longer than the trusted copy, never shorter, and never shows a checkpoint without
  its records.
- The stored checkpoints (few) are loaded at once; the records are read in batches of
  :data:`.store.BATCH_ROWS` rows and go through :class:`.verifier.LogVerifier` one at a time. What
  the pass keeps: the chain head, the Merkle frontier, the checkpoints and, only when asked
  (:meth:`LogScan.keep_leaves`, for an export), 32 bytes per record: the Merkle leaf hashes.
- :meth:`LogScan.entries` / :meth:`LogScan.records` stream the records as they pass their own
  checks, so one read of the log can also feed a consumer (the alert rebuild at unseal). The
  stream ends only after the end-of-log checks (truncation, rollback) passed; a failure anywhere
  raises :class:`~.errors.TamperError` out of the consumer's loop before it finished, so a consumer
  that commits its result after its loop never commits from a bad log.
- :meth:`LogScan.finish` reads whatever the consumer left (it stopped early, or failed itself),
  so the whole log is always verified; it returns the verified :class:`~.chain.LogHead`.
- Any :class:`~.errors.TamperError` out of the pass drops the export cache for that database
  (:data:`.pages.TREES`), so no later export page is served from a tree verified before.

Whole-log forms over the same pass: :func:`verify_head` (the head and checkpoints),
:func:`verify_report` (``audit.verify``'s reply, a damaged database included) and
:func:`verify_store` (everything in memory, for tests and tools over small logs).

Blocking (SQLite and hashing): the service runs it off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shared import BadRequest
from shared.keystore import Keystore

from .chain import Checkpoint, LogEntry, LogHead, Record
from .errors import TamperError
from .pages import TREES
from .proofs import decode_checkpoint, encode_checkpoint
from .store import AuditStore, DamagedError
from .verifier import LogVerifier

__all__ = ["Cancelled", "LogScan", "PinnedSlot", "read_trusted", "scan", "verify_head", "verify_report", "verify_store"]


class PinnedSlot:
    """A read-only stand-in for the trusted checkpoint's slot, holding the checkpoint a start verified
    against: the background pass checks the log against that one. (The live slot moves forward only
    after a checkpoint is durable, so a pass reading it before its snapshot could see the database
    one checkpoint ahead of the slot: for an empty slot, "signed history but no trusted copy".)"""

    name = "pinned trusted checkpoint"

    def __init__(self, checkpoint: Checkpoint | None) -> None:
        self._blob = None if checkpoint is None else encode_checkpoint(checkpoint)

    def get(self) -> bytearray | None:
        return None if self._blob is None else bytearray(self._blob)

    def put(self, secret: bytearray) -> None:
        raise RuntimeError("a pinned slot is read-only")

    def delete(self) -> None:
        raise RuntimeError("a pinned slot is read-only")


class Cancelled(Exception):
    """A pass stopped because its ``cancel`` event was set (audit stopping or sealing)."""


def read_trusted(slot: Keystore) -> Checkpoint | None:
    """The trusted latest checkpoint kept in ``slot``, or None when the slot is empty.
    A slot holding something that is not a checkpoint raises :class:`TamperError`."""
    blob = slot.get()
    if blob is None:
        return None
    try:
        return decode_checkpoint(bytes(blob))
    except BadRequest as exc:
        raise TamperError(f"the trusted latest checkpoint is corrupt: {exc.message}") from None


class LogScan:
    """The pass :func:`scan` yields. Read the records once (:meth:`entries` or :meth:`records`), or
    not at all, then call :meth:`finish`. ``checkpoints`` are the stored ones, in tree-size order;
    each is proven only once :meth:`finish` returned."""

    def __init__(self, store: AuditStore, public_key: bytes, trusted: Checkpoint | None,
                 checkpoints: list[Checkpoint]) -> None:
        self.trusted = trusted
        self.checkpoints = checkpoints
        #: Leaf hashes of records ``[0, n)`` (32 bytes each, concatenated) when :meth:`keep_leaves` asked.
        self.leaves = bytearray()
        self._store = store
        self._verifier = LogVerifier(checkpoints, public_key, trusted)
        self._keep = 0
        self._feed: Callable[[bytes], None] | None = None
        self._stream: Iterator[LogEntry] | None = None
        self._error: Exception | None = None
        self._head: LogHead | None = None
        #: Set it to stop the pass (:class:`Cancelled`) at the next record: audit is stopping or sealing.
        self.cancel: threading.Event | None = None

    @property
    def latest(self) -> Checkpoint | None:
        """The latest checkpoint stored in the log, if any."""
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def failed(self) -> bool:
        """True once the stream itself raised (the log, or reading it, failed; not its consumer)."""
        return self._error is not None

    def keep_leaves(self, count: int) -> None:
        """Keep the Merkle leaf hashes of records ``[0, count)`` in :attr:`leaves` (for proofs)."""
        if self._stream is not None:
            raise RuntimeError("keep_leaves must be called before the records are read")
        self._keep = count

    def feed(self, sink: Callable[[bytes], None]) -> None:
        """Pass the Merkle leaf hash of every record, in order, to ``sink`` as the pass computes it."""
        if self._stream is not None:
            raise RuntimeError("feed must be called before the records are read")
        self._feed = sink

    def entries(self) -> Iterator[LogEntry]:
        """The log's entries in order, each yielded once it passed its own checks; the one stream
        of this pass (calling again continues it)."""
        if self._stream is None:
            self._stream = self._run()
        return self._stream

    def records(self) -> Iterator[Record]:
        """:meth:`entries`, as records (what the alert rebuild reads)."""
        return (entry.record for entry in self.entries())

    def _run(self) -> Iterator[LogEntry]:
        source = self._store.entries()
        cancel = self.cancel
        try:
            for entry in source:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                leaf = self._verifier.add(entry, source)  # a deletion's lookahead reads on from source
                if entry.record.seq < self._keep:
                    self.leaves += leaf
                if self._feed is not None:
                    self._feed(leaf)
                yield entry
            # Before the stream ends, so that no consumer sees a clean end of a cut-off log.
            self._head = self._verifier.finish()
        except Exception as exc:
            self._error = exc
            raise

    def finish(self) -> LogHead:
        """Verify what was not read yet, and the end of the log; return the verified head. Raises
        :class:`TamperError` (again, if the stream already raised it)."""
        for _ in self.entries():
            pass
        if self._error is not None:
            raise self._error
        assert self._head is not None  # the stream ended without an error: _run set it
        return self._head


@contextmanager
def scan(store: AuditStore, public_key: bytes, slot: Keystore) -> Iterator[LogScan]:
    """One streamed verification pass over ``store`` against the trusted checkpoint in ``slot``."""
    try:
        trusted = read_trusted(slot)
        with store.snapshot():
            checkpoints = store.checkpoints()
            if trusted is None and checkpoints:
                # Signed history but no trusted copy: the slot was wiped, or this log was planted.
                # Nothing then vouches against a rollback, so refuse rather than guess.
                raise TamperError(f"the trusted latest checkpoint is missing but the log holds {store.size()} "
                                  "records and signed checkpoints: the slot was cleared or the log was replaced")
            yield LogScan(store, public_key, trusted, checkpoints)
    except TamperError:
        TREES.forget(store.path)
        raise


def verify_head(store: AuditStore, public_key: bytes, slot: Keystore, cancel: threading.Event | None = None,
                ) -> tuple[LogHead, Checkpoint | None, Checkpoint | None]:
    """Verify the whole log in ``store``; return its head, the latest stored checkpoint and the
    trusted one. Raises :class:`TamperError` naming the first bad record, :class:`Cancelled` once
    ``cancel`` is set."""
    with scan(store, public_key, slot) as verified:
        verified.cancel = cancel
        return verified.finish(), verified.latest, verified.trusted


# -- the whole log at once, for audit.verify, tests and tools ---------------------------------
#
# verify_store takes an open store, verify_report opens its own; both run the pass above to its
# end. They live here, not in .store, because the store only reads and writes rows and this module
# is what judges them: the store never imports the verification built on it.


def verify_store(store: AuditStore, public_key: bytes,
                 slot: Keystore) -> tuple[LogHead, Checkpoint | None, Checkpoint | None, list[LogEntry]]:
    """Verify everything in ``store`` against the trusted copy in ``slot``; return the log head,
    the latest checkpoint in the log, the trusted one, and the entries. Raises :class:`TamperError`.

    This form returns (so holds) every entry: for tests and tools over small logs. The service's
    own paths (unseal, ``audit.verify``, ``audit.export``) stream with :func:`scan` instead, which
    runs the very same checks in constant memory.
    """
    with scan(store, public_key, slot) as verified:
        entries = list(verified.entries())
        head = verified.finish()
        return head, verified.latest, verified.trusted, entries


def verify_report(path: Path, key: bytes | bytearray, public_key: bytes, slot: Keystore,
                  cancel: threading.Event | None = None) -> dict[str, object]:
    """``{ok, size, checkpoint_size, first_bad?, error?, damaged?}`` for the database at ``path``: the
    reply of ``audit.verify``, and the background pass after a start. Streams the log
    (:func:`verify_head`): memory does not grow with the log. :class:`Cancelled` once ``cancel`` is set."""
    with AuditStore.open(path, key) as store:
        try:
            # Every page first (SQLCipher's C code, about ten times faster than the records): a byte
            # changed on disk anywhere is named by page before the record pass would stumble on it.
            store.check_pages(structure=True)
            if cancel is not None and cancel.is_set():
                raise Cancelled
            size = store.size()
            head, latest, trusted = verify_head(store, public_key, slot, cancel)
        except DamagedError as exc:
            return {"ok": False, "size": None, "checkpoint_size": None, "first_bad": None, "error": exc.message,
                    "damaged": {"file": str(exc.path), "pages": exc.pages, "problems": exc.problems[:10]}}
        except TamperError as exc:
            return {"ok": False, "size": size, "checkpoint_size": None, "first_bad": exc.sequence,
                    "error": exc.message}
    sizes = [c.tree_size for c in (latest, trusted) if c is not None]
    return {"ok": True, "size": head.size, "checkpoint_size": max(sizes, default=0)}

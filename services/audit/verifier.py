"""Verification of a whole stored log, one record at a time: :func:`verify_log` and its engine.

:class:`LogVerifier` runs exactly the checks :func:`verify_log` documents, in the same order and
with the same messages, but takes the records one by one (:meth:`LogVerifier.add`) and keeps only
what the checks need: the chain head, the Merkle frontier (one hash per set bit of the size), the
checkpoints (few: one per :data:`~.writer.CHECKPOINT_EVERY_RECORDS` records at most) and three
counters. So a log of any length verifies in constant memory, whether its records come from a list
(:func:`verify_log`) or from the database in batches (:mod:`.scan`).

This module sits on top of :mod:`.chain` (records, chain hashes, checkpoints, the log head) and
:mod:`.merkle`; neither of them imports it.

Contract of the streaming form: a record passed to :meth:`LogVerifier.add` without an exception
matches its sequence number and its chain hash, but a checkpoint further on may still convict it
(a rewritten chain); only :meth:`LogVerifier.finish` returning proves the whole log. Consumers of a
stream therefore keep nothing they act on until the stream ended without :class:`TamperError`.

Pure: no storage, no clock. Raises :class:`TamperError` (with ``sequence`` when a record is at
fault) and :class:`shared.BadRequest` for a malformed public key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from shared import BadRequest

from .chain import GENESIS, Checkpoint, LogEntry, LogHead, chain_hash, encode_record, verify_checkpoint
from .errors import TamperError
from .merkle import Frontier, leaf_hash

__all__ = ["LogVerifier", "verify_log"]


def _cut_or_restored(size: int, covered: int, what: str) -> TamperError:
    return TamperError(f"the log has {size} records but {what} covers {covered}: records {size} to {covered - 1} "
                       "were cut off, or an older copy of the log was restored", sequence=size)


class LogVerifier:
    """The state of one verification pass: feed entries in log order to :meth:`add`, then call
    :meth:`finish`. ``checkpoints`` are the log's own, in stored (tree size) order."""

    __slots__ = ("_checkpoints", "_frontier", "_head", "_pending", "_previous", "_public_key", "_trusted",
                 "_vouched")

    def __init__(self, checkpoints: Sequence[Checkpoint], public_key: bytes,
                 trusted_latest: Checkpoint | None = None, *, resume: tuple[Checkpoint, LogHead] | None = None,
                 ) -> None:
        if trusted_latest is not None:
            verify_checkpoint(public_key, trusted_latest)  # a forged "trusted" checkpoint vouches for nothing
        self._checkpoints, self._public_key, self._trusted = checkpoints, public_key, trusted_latest
        self._frontier, self._head = Frontier(), GENESIS
        self._vouched, self._pending = 0, 0  # records [0, vouched) match a verified checkpoint
        self._previous: Checkpoint | None = None  # the last stored checkpoint judged
        if resume is not None:
            # Go on from a signed checkpoint whose log head (frontier and chain head) is known: the
            # records before it are not read. The head must be the checkpoint's: its signed root and
            # chain head (a frontier with the same root but other nodes would be a hash collision).
            anchor, head = resume
            verify_checkpoint(public_key, anchor)
            if (head.size != anchor.tree_size or head.frontier.root() != anchor.root
                    or head.chain_head != anchor.chain_head):
                raise TamperError(f"the verified anchor does not match its signed checkpoint at tree size "
                                  f"{anchor.tree_size}")
            self._frontier, self._head = head.frontier.copy(), head.chain_head
            self._vouched, self._previous = anchor.tree_size, anchor
        self._settle()  # checkpoints of the empty log (tree size 0) are checked before record 0

    @property
    def size(self) -> int:
        """How many records passed so far, and so the sequence number the next one must carry."""
        return self._frontier.size

    def _check(self, cp: Checkpoint, what: str) -> None:
        frontier, vouched = self._frontier, self._vouched
        if cp.root == frontier.root() and cp.chain_head == self._head:
            return
        if frontier.size == vouched:  # no record to blame: two signed statements disagree
            forked = ", which an earlier signed checkpoint vouches for: the log was forked" if self._previous else ""
            raise TamperError(f"{what} at tree size {cp.tree_size} contradicts the first {vouched} records{forked}")
        raise TamperError(f"records {vouched} to {frontier.size - 1} do not match {what} at tree size {cp.tree_size}: "
                          "a record was modified, deleted or reordered and the hash chain after it rewritten",
                          sequence=vouched)

    def _settle(self) -> None:
        # Every checkpoint that covers exactly the records seen so far (or fewer: a stored one out
        # of order) is judged now, while the frontier and chain head are those of its tree size.
        size, checkpoints = self.size, self._checkpoints
        while self._pending < len(checkpoints) and checkpoints[self._pending].tree_size <= size:
            cp = checkpoints[self._pending]
            verify_checkpoint(self._public_key, cp)
            previous = self._previous
            if previous is not None and (cp.tree_size < previous.tree_size or cp.time < previous.time):
                raise TamperError(f"the checkpoint at tree size {cp.tree_size} follows one at tree size "
                                  f"{previous.tree_size}: checkpoints were reordered or an older one restored")
            self._check(cp, "the signed checkpoint")
            self._vouched, self._previous, self._pending = size, cp, self._pending + 1
        if self._trusted is not None and self._trusted.tree_size == size:
            self._check(self._trusted, "the trusted latest checkpoint")

    def add(self, entry: LogEntry, rest: Iterable[LogEntry] = ()) -> bytes:
        """Check the next entry; return its Merkle leaf hash. ``rest`` is the remainder of the log
        (an iterator positioned after ``entry``); it is read only when ``entry`` is out of place, to
        tell a deletion (the expected record is nowhere further on) from a reordering."""
        size, seq = self.size, entry.record.seq
        if seq != size:
            if seq > size and all(e.record.seq != size for e in rest):
                raise TamperError(f"record {size} is missing: it was deleted", sequence=size)
            raise TamperError(f"record {size} is out of place, record {seq} stands in its position: the log was "
                              "reordered or a record duplicated", sequence=size)
        try:
            canonical = encode_record(entry.record)
        except BadRequest as exc:
            raise TamperError(f"record {size} is corrupt: {exc.message}", sequence=size) from None
        if entry.chain_hash != chain_hash(self._head, canonical):
            also = f" (or record {size - 1} was, along with its chain hash)" if size else ""
            raise TamperError(f"record {size} does not match its chain hash: it was modified{also}", sequence=size)
        leaf = leaf_hash(canonical)
        self._frontier.append(leaf)
        self._head = entry.chain_hash
        self._settle()
        return leaf

    def finish(self) -> LogHead:
        """The end of the log: check that nothing a checkpoint covers is missing, and return the
        verified log's head (ready to append to). Call once, after the last :meth:`add`."""
        size = self.size
        if self._pending < len(self._checkpoints):
            cp = self._checkpoints[self._pending]
            verify_checkpoint(self._public_key, cp)
            raise _cut_or_restored(size, cp.tree_size, "a signed checkpoint in the log")
        if self._trusted is not None and self._trusted.tree_size > size:
            raise _cut_or_restored(size, self._trusted.tree_size, "the trusted latest checkpoint")
        return LogHead(size, self._head, self._frontier)


def verify_log(entries: Iterable[LogEntry], checkpoints: Sequence[Checkpoint], public_key: bytes,
               trusted_latest: Checkpoint | None = None) -> LogHead:
    """Verify a whole stored log, in order, and raise at the first thing that is wrong.

    Checks that sequence numbers run 0, 1, 2 ... (a gap is a deletion, a number out of place a
    reordering); that each stored chain hash matches (an edit); that every checkpoint is validly
    signed, follows the one before it (size and time never decrease), and matches the Merkle root
    and chain head of the records it covers (an edit with the chain rewritten after it); and that
    the log still holds everything a checkpoint covers. ``trusted_latest`` is the latest checkpoint
    as kept outside the log: the log must contain its records exactly, or it was cut short, rolled
    back or rewritten. Raises :class:`TamperError` with the first bad ``sequence`` where a record
    is at fault, and :class:`BadRequest` for a malformed public key. Returns the verified log's
    :class:`~.chain.LogHead`, ready to append to: the service need not hash its log twice at startup.

    ``entries`` may be any iterable read once, in order (a list, or records streamed from the
    database): the checks run one record at a time in :class:`LogVerifier`, which holds the chain
    head, the Merkle frontier and the checkpoints only, never the records.
    """
    verifier = LogVerifier(checkpoints, public_key, trusted_latest)
    stream: Iterator[LogEntry] = iter(entries)
    for entry in stream:
        verifier.add(entry, stream)  # the lookahead for a deletion reads on from the same iterator
    return verifier.finish()

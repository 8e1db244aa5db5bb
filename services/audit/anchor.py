"""The verified anchor: where a start takes up verification instead of reading the whole log again.

The anchor is one row of audit's own SQLCipher database (:meth:`.store.AuditStore.anchor`): a signed
checkpoint of tree size ``N`` that audit had verified or written itself, with what it takes to go
on from there without reading records ``[0, N)``:

- the log head at ``N``: the Merkle frontier (one hash per set bit of ``N``) and the chain head;
- the witness tree at ``N`` (:class:`.witness_tree.WitnessTree`: one root per 64 records and the
  leaves of the last, unfinished block), which ``audit.checkpoint`` proves consistency from;
- the open alerts as the log up to ``N`` says them (:class:`.alert_engine.Replay`).

Nothing in it is taken on trust: the checkpoint's signature is checked, the frontier must fold to
its signed root and carry its chain head, the witness tree (every kept node above the blocks is
recomputed from the block roots) must have the same root. An anchor that fails any of these is
*unusable* (:class:`AnchorUnusable`): the start then verifies the whole log, as before anchors.

:func:`resume` is the start's check (blocking; one read snapshot):

1. the trusted latest checkpoint (kept off the home) is read, as the full pass reads it; signed
   history without it is refused (:class:`~.errors.TamperError`) as the full pass refuses it;
2. the log must still reach ``N`` with record ``N - 1`` carrying the anchor's chain head (an index
   lookup, ``max(seq)``, and one stored chain hash): a log cut or rolled back below the anchor fails;
3. a trusted checkpoint older than ``N`` must be a prefix of the anchor's tree (RFC 9162
   consistency: its root recomputed from the witness tree, reading at most one 64-record block)
   and carry the chain hash stored at its size;
4. the records from ``N`` on go through :class:`.verifier.LogVerifier` resumed at the anchor: sequence
   numbers, chain hashes, every stored checkpoint from ``N`` on (signature, order, root and chain
   head), the trusted checkpoint when it is at or past ``N`` (so a log cut or rolled back below it
   fails, as in the full pass), and the end-of-log checks.

It also reports the last ``audit.verify_failed`` record among those (:attr:`Resumed.failed_at`): a
whole-log verification failed after the anchor, and the caller verifies the whole log before it
trusts the anchor again (docs/security.md). Only audit writes that record (producers are refused
the type), and an anchor is saved only while the log is ok, so an anchor past such a record means
a whole verification passed after it.

What it does not check: records ``[0, N)`` themselves (an edit there with the chain rewritten, a
deleted or swapped old record, a damaged old page). That is the background pass's job
(:func:`.scan.verify_report` over the whole log, started once audit is ready).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final

from shared import AlertRule, BadRequest, decode_body, encode_body

from .alert_engine import Replay
from .alerts import ALERT_ACTOR, VERIFY_FAILED_EVENT
from .chain import GENESIS, Checkpoint, LogHead, encode_record, verify_checkpoint
from .errors import TamperError
from .merkle import Frontier, leaf_hash
from .pages import TREES
from .proofs import decode_checkpoint, encode_checkpoint
from .scan import Cancelled, read_trusted
from .store import AuditStore
from .verifier import LogVerifier, _cut_or_restored
from .witness_tree import WitnessTree

__all__ = ["ANCHOR_EVERY_RECORDS", "ANCHOR_VERSION", "Anchor", "AnchorUnusable", "Cancelled", "Resumed",
           "StartReport", "decode_anchor", "encode_anchor", "resume"]

ANCHOR_VERSION: Final = 1
#: The keeper saves a new anchor once the log grew this much since the last (and a clean stop saves one),
#: so a start after a crash reads at most about this many records plus what one run wrote since.
ANCHOR_EVERY_RECORDS: Final = 10_000
_MAX_ANCHOR_BYTES: Final = 1 << 30


class AnchorUnusable(Exception):
    """The saved anchor cannot be used (malformed, or not matching its own signed checkpoint): the
    start verifies the whole log instead."""


@dataclass(frozen=True, slots=True)
class Anchor:
    checkpoint: Checkpoint
    frontier: tuple[bytes, ...]
    witness_floor: int
    witness_blocks: bytes
    witness_tail: tuple[bytes, ...]
    alerts: list[dict[str, Any]]

    @property
    def tree_size(self) -> int:
        return self.checkpoint.tree_size


def encode_anchor(anchor: Anchor) -> bytes:
    return encode_body({"v": ANCHOR_VERSION, "checkpoint": encode_checkpoint(anchor.checkpoint),
                        "frontier": list(anchor.frontier), "floor": anchor.witness_floor,
                        "blocks": anchor.witness_blocks, "tail": list(anchor.witness_tail),
                        "alerts": anchor.alerts})


def decode_anchor(blob: bytes) -> Anchor:
    """The anchor in ``blob``; :class:`AnchorUnusable` when it is not one this version wrote."""
    try:
        value = decode_body(blob, _MAX_ANCHOR_BYTES)
        if not isinstance(value, dict) or value.get("v") != ANCHOR_VERSION:
            raise AnchorUnusable("the saved anchor is of an unknown version")
        frontier, tail, alerts = value["frontier"], value["tail"], value["alerts"]
        if not (isinstance(frontier, list) and isinstance(tail, list) and isinstance(alerts, list)
                and isinstance(value["blocks"], bytes) and type(value["floor"]) is int):
            raise AnchorUnusable("the saved anchor is malformed")
        return Anchor(decode_checkpoint(value["checkpoint"]), tuple(frontier), value["floor"], value["blocks"],
                      tuple(tail), alerts)
    except (BadRequest, KeyError, TypeError) as exc:
        raise AnchorUnusable(f"the saved anchor is malformed ({type(exc).__name__})") from None


@dataclass(frozen=True, slots=True)
class StartReport:
    """What a start verified: records ``[from_seq, size)`` were read and checked (``records_read``
    counts every record row the start read, the few a trusted-checkpoint check reads included);
    ``full`` when there was no usable anchor and the whole log was verified at start;
    ``pages_checked`` when the start also checked every page's HMAC (a small enough database)."""

    from_seq: int
    size: int
    records_read: int
    full: bool
    pages_checked: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"from_seq": self.from_seq, "size": self.size, "records_read": self.records_read, "full": self.full,
                "pages_checked": self.pages_checked}


@dataclass(frozen=True, slots=True)
class Resumed:
    head: LogHead
    latest: Checkpoint | None
    trusted: Checkpoint | None
    tree: WitnessTree
    replay: Replay
    report: StartReport
    #: The sequence number of the last ``audit.verify_failed`` record after the anchor, if any.
    failed_at: int | None = None


def _no_read(start: int, end: int) -> list[bytes]:
    raise TamperError("the anchor's witness tree needed records to compute its own root")


def anchored_state(anchor: Anchor, public_key: bytes) -> tuple[LogHead, WitnessTree]:
    """The log head and witness tree the anchor describes, each checked against its signed checkpoint
    (signature, root, chain head). :class:`AnchorUnusable` when they do not match."""
    cp = anchor.checkpoint
    try:
        verify_checkpoint(public_key, cp)
        head = LogHead(cp.tree_size, cp.chain_head, Frontier(cp.tree_size, anchor.frontier))
        tree = WitnessTree.restore(anchor.witness_floor, anchor.witness_blocks, anchor.witness_tail)
        if head.frontier.root() != cp.root or tree.size != cp.tree_size or tree.root(cp.tree_size, _no_read) != cp.root:
            raise AnchorUnusable(f"the saved anchor does not match its signed checkpoint at tree size {cp.tree_size}")
    except (BadRequest, TamperError) as exc:
        raise AnchorUnusable(f"the saved anchor cannot be used: {exc.message}") from None
    return head, tree


def resume(store: AuditStore, public_key: bytes, trusted_slot: Any, rules: dict[str, AlertRule],
           cancel: threading.Event | None = None) -> Resumed:
    """The start's check (module doc): verify the records after the saved anchor and their consistency
    with the trusted checkpoint. :class:`AnchorUnusable` when there is no usable anchor (the caller
    verifies the whole log), :class:`~.errors.TamperError` when the log fails."""
    try:
        trusted = read_trusted(trusted_slot)
        with store.snapshot():
            blob = store.anchor()
            if blob is None:
                raise AnchorUnusable("no saved anchor")
            anchor = decode_anchor(blob)
            head, tree = anchored_state(anchor, public_key)
            try:
                replay = Replay.from_wire(rules, anchor.alerts)
            except (KeyError, TypeError, ValueError):
                raise AnchorUnusable("the saved anchor's open alerts are malformed") from None
            size, checkpoints = anchor.tree_size, store.checkpoints(since=anchor.tree_size)
            if trusted is None and size:
                raise TamperError(f"the trusted latest checkpoint is missing but the log holds signed checkpoints "
                                  f"(up to tree size {size} at least): the slot was cleared or the log was replaced")
            read, failed_at = [0], None
            if trusted is not None:
                verify_checkpoint(public_key, trusted)  # a forged "trusted" checkpoint vouches for nothing
            _reaches_anchor(store, anchor, trusted)
            if trusted is not None and trusted.tree_size < size:
                _trusted_is_a_prefix(store, tree, trusted, read)
            verifier = LogVerifier(checkpoints, public_key, trusted, resume=(anchor.checkpoint, head))
            source = store.entries(size)
            for entry in source:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                read[0] += 1
                tree.append(verifier.add(entry, source))
                record = entry.record
                replay.feed((record,))
                if record.event == VERIFY_FAILED_EVENT and record.actor == ALERT_ACTOR:
                    failed_at = record.seq
            final = verifier.finish()
            latest = checkpoints[-1] if checkpoints else anchor.checkpoint
            report = StartReport(from_seq=size, size=final.size, records_read=read[0], full=False)
            return Resumed(final, latest, trusted, tree, replay, report, failed_at)
    except TamperError:
        TREES.forget(store.path)
        raise


def _reaches_anchor(store: AuditStore, anchor: Anchor, trusted: Checkpoint | None) -> None:
    size = anchor.tree_size
    if not size:
        return
    end = store.max_seq() + 1
    if end < size:
        covered = max(size, trusted.tree_size if trusted is not None else 0)
        raise _cut_or_restored(end, covered, "the verified anchor (and the trusted latest checkpoint)"
                               if covered == size else "the trusted latest checkpoint")
    if store.chain_hash_at(size - 1) != anchor.checkpoint.chain_head:
        raise TamperError(f"record {size - 1} no longer carries the chain hash audit verified at tree size {size}: "
                          "the log was rewritten or replaced", sequence=size - 1)


def _trusted_is_a_prefix(store: AuditStore, tree: WitnessTree, trusted: Checkpoint, read: list[int]) -> None:
    """A trusted checkpoint older than the anchor must be consistent with it (RFC 9162 section 2.1.4:
    the anchor's tree at the trusted size has the trusted root) and carry the stored chain hash."""
    def leaves(start: int, end: int) -> list[bytes]:
        got = [leaf_hash(encode_record(entry.record)) for entry in store.entries(start, end)]
        read[0] += len(got)
        return got

    size = trusted.tree_size
    root = tree.root(size, leaves)
    stored = store.chain_hash_at(size - 1) if size else GENESIS
    if root != trusted.root or stored != trusted.chain_head:
        raise TamperError(f"the trusted latest checkpoint at tree size {size} is not a prefix of the log audit "
                          f"verified up to tree size {tree.size}: the log was forked or replaced", sequence=size)


"""Audit records, their hash chain and signed checkpoints: the core every other audit module builds on.

Three layers of evidence, each catching what the one before cannot:

- **The hash chain.** Record ``i`` is stored with ``SHA-256(chain[i-1] || canonical(record i))``,
  starting from 32 zero bytes, so an edit, deletion or reordering done without rewriting every
  later hash is caught at the first record it touches.
- **The Merkle tree** (:mod:`.merkle`, RFC 9162) over the canonical records, so a single record can
  be proven to a third party with a logarithmic proof.
- **Signed checkpoints**: tree size, Merkle root and chain head, signed with the audit Ed25519 key
  (keyvault purpose ``audit-signing``). Whoever rewrites a record and every hash after it still
  cannot sign, so the first checkpoint covering the change fails. The latest checkpoint is also
  kept outside the log (``trusted_latest``), so cutting off the tail or restoring an older copy
  of the database fails too: either leaves less than, or other than, what was signed last.

Everything here is pure: bytes and objects in, objects out, no storage and no clock. Failed
verification raises :class:`TamperError`; malformed arguments raise :class:`shared.BadRequest`.
What a party outside audit needs to check a checkpoint (:class:`Checkpoint`,
:func:`checkpoint_message`, :func:`verify_checkpoint`) is in :mod:`shared.transparency`, so a
paired device verifies as audit does; it is re-exported here, and signing stays here.
Verifying a whole stored log against these pieces is :func:`.verifier.verify_log`, one layer up:
this module imports no other audit module but :mod:`.merkle`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import BadRequest, encode_body
from shared.transparency import Checkpoint, checkpoint_message, verify_checkpoint

from .merkle import HASH_BYTES, Frontier, leaf_hash

__all__ = [
    "GENESIS", "MAX_RECORD_BYTES", "RECORD_VERSION", "Checkpoint", "LogEntry", "LogHead", "Record", "chain_hash",
    "checkpoint_message", "encode_record", "public_key_of", "sign_checkpoint", "verify_checkpoint",
]

GENESIS: Final = bytes(HASH_BYTES)  # the chain hash "before" record 0
RECORD_VERSION: Final = 1
#: A record larger than this, in canonical form, is refused at append; verifiers refuse it too.
MAX_RECORD_BYTES: Final = 64 << 10


def _text(value: object, name: str, optional: bool = False) -> None:
    if not (type(value) is str and value) and not (optional and value is None):
        raise BadRequest(f"record field {name!r} must be a non-empty string{' or None' if optional else ''}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One audit event. ``seq`` counts from 0 with no gaps; ``actor`` is the identity the broker
    authenticated, never one the producer claimed; ``details`` holds msgpack-safe values only
    (str, bytes, int, float, bool, None, lists, maps with string keys), already passed through the
    event's schema so that no secret is in it."""

    seq: int
    time: float
    actor: str
    event: str
    outcome: str
    on_behalf_of: str | None = None
    target: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.seq) is not int or self.seq < 0:
            raise BadRequest("record field 'seq' must be an integer from 0")
        if type(self.time) not in (int, float) or not math.isfinite(self.time):
            raise BadRequest("record field 'time' must be a finite number")
        object.__setattr__(self, "time", float(self.time))  # one encoding for 5 and 5.0
        _text(self.actor, "actor")
        _text(self.event, "event")
        _text(self.outcome, "outcome")
        _text(self.on_behalf_of, "on_behalf_of", optional=True)
        _text(self.target, "target", optional=True)
        if not isinstance(self.details, Mapping):
            raise BadRequest("record field 'details' must be a map")


def _sorted(value: Any, depth: int = 0) -> Any:
    # Maps in key order at every level: the same record always encodes to the same bytes.
    if depth > 32:
        raise BadRequest("record details are nested too deeply")
    if isinstance(value, Mapping):
        if any(type(k) is not str for k in value):
            raise BadRequest("record details map keys must be strings")
        return {k: _sorted(value[k], depth + 1) for k in sorted(value)}
    if type(value) is list:
        return [_sorted(v, depth + 1) for v in value]
    return value


def encode_record(record: Record) -> bytes:
    """The canonical bytes of a record: a msgpack map with sorted keys at every level, including a
    format version. This is what the chain and the Merkle tree hash, and what a bundle carries."""
    value = {"actor": record.actor, "details": _sorted(record.details), "event": record.event,
             "on_behalf_of": record.on_behalf_of, "outcome": record.outcome, "seq": record.seq,
             "target": record.target, "time": record.time, "v": RECORD_VERSION}
    try:
        data = encode_body(value)
    except BadRequest as exc:
        raise BadRequest(f"record {record.seq} cannot be encoded: {exc.message}") from None
    if len(data) > MAX_RECORD_BYTES:
        raise BadRequest(f"record {record.seq} is {len(data)} bytes; the limit is {MAX_RECORD_BYTES}")
    return data


def chain_hash(prev_chain_hash: bytes, canonical: bytes) -> bytes:
    """The chain hash of a record: ``SHA-256(previous chain hash || canonical bytes)``."""
    return hashlib.sha256(prev_chain_hash + canonical).digest()


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A record as the log stores it, with its chain hash."""

    record: Record
    chain_hash: bytes


def _private_key(private_key: bytes | bytearray) -> Ed25519PrivateKey:
    # The keyvault hands out a wipeable bytearray; never turn it into bytes here.
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != 32:
        raise BadRequest("the audit signing key must be 32 bytes (an Ed25519 seed)")
    return Ed25519PrivateKey.from_private_bytes(private_key)


def public_key_of(private_key: bytes | bytearray) -> bytes:
    """The 32-byte Ed25519 public key that verifies what ``private_key`` signs."""
    return _private_key(private_key).public_key().public_bytes_raw()


def sign_checkpoint(private_key: bytes | bytearray, *, tree_size: int, root: bytes, chain_head: bytes,
                    time: float) -> Checkpoint:
    """A checkpoint signed with the 32-byte Ed25519 seed ``private_key``."""
    time = float(time) if type(time) is int else time
    signature = _private_key(private_key).sign(checkpoint_message(tree_size, root, chain_head, time))
    return Checkpoint(tree_size, root, chain_head, time, signature)


class LogHead:
    """The growing end of a log: next sequence number, chain head, and Merkle frontier.

    The audit service keeps one in memory and appends through it, so each record costs one
    encoding, two hashes and an amortised node hash; :meth:`checkpoint` signs the current state.
    :func:`.verifier.verify_log` returns the head of the log it verified; a service can also store
    ``size``, ``chain_head`` and ``frontier.nodes`` and rebuild the head from them. To undo a batch
    whose write failed, keep a :meth:`copy` from before it.
    """

    def __init__(self, size: int = 0, chain_head: bytes = GENESIS, frontier: Frontier | None = None) -> None:
        self.frontier = Frontier() if frontier is None else frontier
        self.chain_head = chain_head
        if self.frontier.size != size or type(chain_head) is not bytes or len(chain_head) != HASH_BYTES:
            raise BadRequest(f"a log head needs a frontier of {size} leaves and a {HASH_BYTES}-byte chain head")

    @property
    def size(self) -> int:
        """The number of records so far, and so the next record's sequence number."""
        return self.frontier.size

    def copy(self) -> LogHead:
        """An independent copy."""
        return LogHead(self.size, self.chain_head, self.frontier.copy())

    def append(self, *, time: float, actor: str, event: str, outcome: str, on_behalf_of: str | None = None,
               target: str | None = None, details: Mapping[str, Any] | None = None) -> LogEntry:
        """Number, encode and chain the next record; the caller stores the entry durably."""
        record = Record(seq=self.size, time=time, actor=actor, event=event, outcome=outcome,
                        on_behalf_of=on_behalf_of, target=target, details=dict(details or {}))
        canonical = encode_record(record)
        entry = LogEntry(record, chain_hash(self.chain_head, canonical))
        self.frontier.append(leaf_hash(canonical))
        self.chain_head = entry.chain_hash
        return entry

    def checkpoint(self, private_key: bytes | bytearray, time: float) -> Checkpoint:
        """A signed checkpoint of everything appended so far."""
        return sign_checkpoint(private_key, tree_size=self.size, root=self.frontier.root(),
                               chain_head=self.chain_head, time=time)


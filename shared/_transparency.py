"""The verification core of the audit log's transparency: RFC 9162 hashing and proofs, and signed
checkpoints. Pure: bytes and objects in, objects out, no storage and no clock.

Everything a party outside the audit service needs to check the log is here, so a paired device
(which runs ``shared`` only) verifies exactly as the audit service does:

- RFC 9162 (Certificate Transparency v2) Merkle hashing, section 2.1.1: a leaf hashes as
  ``SHA-256(0x00 || leaf)``, an interior node as ``SHA-256(0x01 || left || right)``, the empty
  tree as ``SHA-256("")``; the distinct prefixes keep a leaf from passing for a node.
- :func:`verify_inclusion` (section 2.1.3.2) and :func:`verify_consistency` (section 2.1.4.2,
  plus the trivial cases it leaves out), step by step as the RFC writes them.
- :class:`Checkpoint`: a signed statement that the log's first ``tree_size`` records have Merkle
  root ``root`` and chain head ``chain_head``; :func:`checkpoint_message` is the exact bytes the
  Ed25519 signature covers, :func:`verify_checkpoint` checks it, and :func:`encode_checkpoint` /
  :func:`decode_checkpoint` are its msgpack form (on the wire, in the audit database, in the
  trusted slot and in a device's witness file).

Failed verification raises :class:`TamperError`; an argument the caller got wrong (a key of the
wrong length) raises :class:`~shared.BadRequest`. Producing proofs and signing is the audit
service's business, not this module's.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._codec import decode_body, encode_body
from ._errors import BadRequest, MeshError

__all__ = [
    "EMPTY_ROOT", "HASH_BYTES", "Checkpoint", "TamperError", "checkpoint_message", "decode_checkpoint",
    "encode_checkpoint", "leaf_hash", "node_hash", "verify_checkpoint", "verify_consistency", "verify_inclusion",
]

HASH_BYTES: Final = 32
#: The hash of the tree with no leaves: SHA-256 of the empty string.
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
#: Domain separation for checkpoint signatures: the audit key signs nothing else with this prefix.
_CHECKPOINT_CONTEXT: Final = b"curvemesh-audit-checkpoint/v1\x00"
_CHECKPOINT_FIELDS: Final = struct.Struct(">Q32s32sd")  # tree size, root, chain head, time
_CHECKPOINT_VERSION: Final = 1
_CHECKPOINT_KEYS: Final = frozenset({"v", "tree_size", "root", "chain_head", "time", "signature"})
_REWRITTEN: Final = "the log was rewritten or rolled back"


class TamperError(MeshError):
    """Verification failed: the log, a proof or a checkpoint does not match what was signed.

    Who is at fault: whoever changed the log, the proof or the checkpoint (or the disk under
    them), never the caller who asked for verification. ``sequence`` is the first record that
    fails when a record can be named, else None (a forged signature, a malformed proof). On the
    wire it travels as ``INTERNAL``: the audit service failed to vouch for its log.
    """

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, sequence: int | None = None) -> None:
        super().__init__(message)
        self.sequence = sequence


# -- RFC 9162 hashing and proof verification ---------------------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    """The hash of one leaf: ``SHA-256(0x00 || leaf)``."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hash(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise TamperError(f"{what} is not a {HASH_BYTES}-byte hash")


def _shift_to_odd(fn: int, sn: int) -> tuple[int, int]:
    # "right-shift both fn and sn equally until either LSB(fn) is set or fn is 0"
    while fn and not fn & 1:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` leaves with ``root``.

    RFC 9162 section 2.1.3.2. Returns nothing; raises :class:`TamperError` naming what failed.
    """
    _check_hash(leaf_hash, "the leaf hash")
    _check_hash(root, "the root")
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {i}")
    if type(index) is not int or type(tree_size) is not int or not 0 <= index < tree_size:
        raise TamperError(f"an inclusion proof cannot place leaf {index!r} in a tree of {tree_size!r}")
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise TamperError(f"inclusion proof for leaf {index} of {tree_size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _shift_to_odd(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise TamperError(f"inclusion proof for leaf {index} of {tree_size} is too short")
    if r != root:
        raise TamperError(f"inclusion proof for leaf {index} of {tree_size} does not match the root: "
                          "the leaf or the proof was altered")


def verify_consistency(first_size: int, second_size: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of ``first_size`` leaves with ``first_root`` is a prefix of the tree of
    ``second_size`` leaves with ``second_root``: the log only grew in between.

    RFC 9162 section 2.1.4.2, plus the trivial cases it leaves out: equal sizes need equal roots
    and an empty proof; an empty first tree needs :data:`EMPTY_ROOT` and an empty proof.
    Returns nothing; raises :class:`TamperError` naming what failed.
    """
    _check_hash(first_root, "the first root")
    _check_hash(second_root, "the second root")
    for i, c in enumerate(proof):
        _check_hash(c, f"consistency proof element {i}")
    if type(first_size) is not int or type(second_size) is not int or not 0 <= first_size <= second_size:
        raise TamperError(f"a consistency proof cannot go from {first_size!r} records to {second_size!r}: "
                          f"{_REWRITTEN}")
    if first_size == second_size or first_size == 0:
        expected = second_root if first_size else EMPTY_ROOT
        if proof or first_root != expected:
            raise TamperError(f"consistency proof from {first_size} to {second_size} records does not match: "
                              f"{_REWRITTEN}")
        return
    if not proof:
        raise TamperError(f"consistency proof from {first_size} to {second_size} records is empty")
    path = list(proof)
    if first_size & (first_size - 1) == 0:  # the old tree is a perfect subtree: its root starts the path
        path.insert(0, first_root)
    fn, sn = first_size - 1, second_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise TamperError(f"consistency proof from {first_size} to {second_size} records is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                fn, sn = _shift_to_odd(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != first_root or sr != second_root:
        raise TamperError(f"consistency proof from {first_size} to {second_size} records does not match: "
                          f"{_REWRITTEN}")


# -- signed checkpoints ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: the log's first ``tree_size`` records have Merkle root ``root`` and
    chain head ``chain_head`` (the chain hash of record ``tree_size - 1``; 32 zero bytes for an
    empty log), as of ``time``."""

    tree_size: int
    root: bytes
    chain_head: bytes
    time: float
    signature: bytes


def checkpoint_message(tree_size: int, root: bytes, chain_head: bytes, time: float) -> bytes:
    """The exact bytes a checkpoint signature covers: a versioned context string, then the tree
    size (8 bytes, big-endian), root (32), chain head (32) and time (IEEE 754 double, 8). Every
    field has a fixed width, so no two checkpoints share a message."""
    if type(tree_size) is not int or not 0 <= tree_size < 1 << 63:
        raise BadRequest("checkpoint tree size must be an integer from 0")
    for name, value in (("root", root), ("chain head", chain_head)):
        if type(value) is not bytes or len(value) != HASH_BYTES:
            raise BadRequest(f"checkpoint {name} must be {HASH_BYTES} bytes")
    if type(time) is not float or not math.isfinite(time):
        raise BadRequest("checkpoint time must be a finite float")
    return _CHECKPOINT_CONTEXT + _CHECKPOINT_FIELDS.pack(tree_size, root, chain_head, time)


def verify_checkpoint(public_key: bytes, checkpoint: Checkpoint) -> None:
    """Check the checkpoint's signature under the 32-byte Ed25519 ``public_key``. Returns nothing;
    raises :class:`TamperError` if it does not verify (forged, altered, or another key's)."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise BadRequest("the audit public key must be 32 bytes (raw Ed25519)")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        message = checkpoint_message(checkpoint.tree_size, checkpoint.root, checkpoint.chain_head, checkpoint.time)
        key.verify(checkpoint.signature, message)
    except (InvalidSignature, BadRequest, TypeError, ValueError):
        raise TamperError(f"the checkpoint at tree size {checkpoint.tree_size!r} has a bad signature: "
                          "it was forged, altered, or signed by another key") from None


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """A checkpoint as msgpack bytes, signature included."""
    return encode_body({"v": _CHECKPOINT_VERSION, "tree_size": checkpoint.tree_size, "root": checkpoint.root,
                        "chain_head": checkpoint.chain_head, "time": checkpoint.time,
                        "signature": checkpoint.signature})


def decode_checkpoint(data: bytes) -> Checkpoint:
    """The checkpoint :func:`encode_checkpoint` wrote. Raises :class:`~shared.BadRequest` if ``data``
    is not one; the signature is *not* checked here (that is :func:`verify_checkpoint`)."""
    value = decode_body(data, 1024)
    if type(value) is not dict or value.keys() != _CHECKPOINT_KEYS or value["v"] != _CHECKPOINT_VERSION:
        raise BadRequest("not an audit checkpoint of a known version")
    kinds = {"tree_size": int, "root": bytes, "chain_head": bytes, "time": float, "signature": bytes}
    for key, kind in kinds.items():
        if type(value[key]) is not kind:
            raise BadRequest(f"checkpoint field {key!r} must be {kind.__name__}")
    return Checkpoint(value["tree_size"], value["root"], value["chain_head"], value["time"], value["signature"])

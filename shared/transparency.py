"""The audit log's transparency, for whoever checks it from outside the audit service.

A paired device runs ``shared`` only; with this module it verifies the mesh's audit log exactly as
the audit service does, and keeps its own copy of the latest checkpoint as a witness (DESIGN.md
invariant 12):

- RFC 9162 Merkle hashing and proofs: :func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT`,
  :data:`HASH_BYTES`, :func:`verify_inclusion`, :func:`verify_consistency`;
- signed checkpoints: :class:`Checkpoint`, :func:`checkpoint_message`, :func:`verify_checkpoint`,
  and their msgpack form :func:`encode_checkpoint` / :func:`decode_checkpoint`;
- :class:`TamperError`, what every failed verification raises (the audit service's own);
- the device's witness: :class:`Witness` (the kept checkpoint, verified and updated atomically),
  :class:`WitnessMismatch` (``shrunk``, ``forked`` or ``bad_signature``) and
  :func:`witness_check` (``audit.checkpoint``, observe, and ``audit.witness_report`` on a mismatch).

The code and the full contracts are in :mod:`shared._transparency` and :mod:`shared._witness`.
"""

from __future__ import annotations

from ._transparency import (
    EMPTY_ROOT,
    HASH_BYTES,
    Checkpoint,
    TamperError,
    checkpoint_message,
    decode_checkpoint,
    encode_checkpoint,
    leaf_hash,
    node_hash,
    verify_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from ._witness import PROBLEMS, Problem, Witness, WitnessMismatch, witness_check

__all__ = [
    "EMPTY_ROOT", "HASH_BYTES", "PROBLEMS",
    "Checkpoint", "Problem", "TamperError", "Witness", "WitnessMismatch",
    "checkpoint_message", "decode_checkpoint", "encode_checkpoint", "leaf_hash", "node_hash", "verify_checkpoint",
    "verify_consistency", "verify_inclusion", "witness_check",
]

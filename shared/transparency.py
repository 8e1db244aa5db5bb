"""The audit log's transparency, for whoever checks it from outside the audit service.

A paired device runs ``shared`` only; with this module it verifies the mesh's audit log exactly as
the audit service does (DESIGN.md invariant 12):

- RFC 9162 Merkle hashing and proofs: :func:`leaf_hash`, :func:`node_hash`, :data:`EMPTY_ROOT`,
  :data:`HASH_BYTES`, :func:`verify_inclusion`, :func:`verify_consistency`;
- signed checkpoints: :class:`Checkpoint`, :func:`checkpoint_message`, :func:`verify_checkpoint`,
  and their msgpack form :func:`encode_checkpoint` / :func:`decode_checkpoint`;
- :class:`TamperError`, what every failed verification raises (the audit service's own).

The code and the full contracts are in :mod:`shared._transparency`.
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

__all__ = [
    "EMPTY_ROOT", "HASH_BYTES", "Checkpoint", "TamperError",
    "checkpoint_message", "decode_checkpoint", "encode_checkpoint", "leaf_hash", "node_hash", "verify_checkpoint",
    "verify_consistency", "verify_inclusion",
]

"""curvemesh's cryptographic recipes: the safe way to seal data, derive keys and wipe them.

This is the module services use. Every recipe picks its own nonce, binds the format version,
validates labels, salts and Argon2id cost profiles, and fails by raising (:class:`IntegrityError`
for sealed data that does not check out, :class:`~shared.ConfigError` for a profile below the
floor): nothing returns ``False``. Keys are ``bytearray`` so :func:`wipe` can zero them; read the
key-handling notes of :mod:`shared._crypto` for what that does and does not promise.

- :func:`random_key`, :func:`derive_subkey` (HKDF-SHA256 with a purpose label) and
  :func:`derive_from_password` (Argon2id, checked by :func:`check_profile`) make keys;
- :func:`seal` / :func:`open_sealed` (AES-256-GCM, associated data bound) protect data, and
  :func:`open_sealed_secret` opens a sealed key straight into a wipeable ``bytearray``;
  :class:`Sealer` does both under one key many times, keying AES-GCM once (optionally behind a
  header of the caller's that it checks and binds);
- :class:`KeyedHash` is HMAC-SHA256 keyed once (with a fixed prefix) for many messages;
- :func:`wipe` zeroes a key in place.

The raw primitives under these recipes are in :mod:`shared.hazmat`, for the people building new
storage formats; nothing here is a primitive.
"""

from __future__ import annotations

from ._crypto import (
    KEY_BYTES,
    SALT_MIN_BYTES,
    SEAL_OVERHEAD,
    SEAL_VERSION,
    IntegrityError,
    Sealer,
    check_profile,
    derive_from_password,
    derive_subkey,
    open_sealed,
    open_sealed_secret,
    random_key,
    seal,
    wipe,
)
from ._keyed_hash import KeyedHash

__all__ = [
    "KEY_BYTES",
    "SALT_MIN_BYTES",
    "SEAL_OVERHEAD",
    "SEAL_VERSION",
    "IntegrityError",
    "KeyedHash",
    "Sealer",
    "check_profile",
    "derive_from_password",
    "derive_subkey",
    "open_sealed",
    "open_sealed_secret",
    "random_key",
    "seal",
    "wipe",
]

"""Raw cryptographic primitives: hazardous materials.

Like ``cryptography.hazmat``, this module is for the people who build the safe
recipes (:mod:`shared.crypto`) and the storage formats on top of them, not for
services. Nothing here picks a nonce, checks a format version, enforces a cost
floor or turns a failure into a curvemesh error: the caller must get every one of
those right. Services use the recipes.

What each function does guarantee: it implements exactly one named primitive
(AES-256-GCM, HKDF-SHA256, Argon2id, constant-time comparison) through the
``cryptography`` library, refuses inputs that would silently select a different
primitive (an AES-128 key, a non-96-bit GCM nonce), and returns derived keys as
``bytearray`` so the caller can wipe them.
"""

from __future__ import annotations

import hmac
from typing import Final, TypeAlias, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "AES_KEY_BYTES",
    "GCM_NONCE_BYTES",
    "GCM_TAG_BYTES",
    "HKDF_SHA256_MAX_LENGTH",
    "InvalidTag",
    "AESGCM",
    "HMAC",
    "aes256gcm",
    "aes256gcm_decrypt",
    "aes256gcm_encrypt",
    "argon2id",
    "bytes_eq",
    "hkdf_sha256",
    "hmac_sha256",
]

#: Anything holding bytes that ``cryptography`` reads without copying into a Python object.
BytesLike: TypeAlias = bytes | bytearray | memoryview

AES_KEY_BYTES: Final = 32
#: 96-bit nonces: the only GCM nonce length without an extra GHASH step, and the
#: length whose random-collision bound (NIST SP 800-38D, 2**32 messages per key) we rely on.
GCM_NONCE_BYTES: Final = 12
GCM_TAG_BYTES: Final = 16
#: RFC 5869: at most 255 blocks of the hash output.
HKDF_SHA256_MAX_LENGTH: Final = 255 * 32


def _check_aes256gcm(key: BytesLike, nonce: BytesLike) -> None:
    # AESGCM would accept a 16- or 24-byte key and any nonce of 8-128 bytes; each
    # of those is a different primitive from the one the formats promise.
    if len(key) != AES_KEY_BYTES:
        raise ValueError(f"AES-256-GCM needs a {AES_KEY_BYTES}-byte key, got {len(key)} bytes")
    if len(nonce) != GCM_NONCE_BYTES:
        raise ValueError(f"AES-256-GCM needs a {GCM_NONCE_BYTES}-byte nonce, got {len(nonce)} bytes")


def aes256gcm(key: BytesLike) -> AESGCM:
    """An AES-256-GCM context keyed once with ``key``, for a caller that seals or opens many
    values under one key: its ``encrypt``/``decrypt`` skip the per-call key schedule of
    :func:`aes256gcm_encrypt`, and check nothing (the nonce length is the caller's job).

    The context keeps its own copy of the key (``cryptography`` copies it on creation, so wiping
    ``key`` afterwards does not change the context): drop the object when the key is wiped.
    """
    if len(key) != AES_KEY_BYTES:
        raise ValueError(f"AES-256-GCM needs a {AES_KEY_BYTES}-byte key, got {len(key)} bytes")
    return AESGCM(key)


def hmac_sha256(key: BytesLike) -> HMAC:
    """An HMAC-SHA256 context (``cryptography``'s) keyed with ``key``: feed it a common prefix
    once, then ``copy()`` it per message, which costs less than keying a new one each time.
    Like :func:`aes256gcm`, it holds its own copy of the key until it is dropped."""
    # The stub types the key as bytes; the binding reads any buffer, and a bytes copy could not be wiped.
    return HMAC(cast(bytes, key), hashes.SHA256())


def aes256gcm_encrypt(key: BytesLike, nonce: BytesLike, plaintext: BytesLike, aad: BytesLike) -> bytes:
    """Encrypt with AES-256-GCM; return ``ciphertext || 16-byte tag``.

    The caller owns nonce uniqueness: a nonce used twice under one key leaks the
    XOR of the two plaintexts and lets anyone forge tags for that key.
    """
    _check_aes256gcm(key, nonce)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aes256gcm_decrypt(key: BytesLike, nonce: BytesLike, ciphertext: BytesLike, aad: BytesLike) -> bytes:
    """Check the tag and decrypt ``ciphertext || tag`` from :func:`aes256gcm_encrypt`.

    Raises :class:`InvalidTag` (``cryptography.exceptions.InvalidTag``) when the key,
    nonce or associated data is wrong or a byte was changed; no plaintext is
    released in that case.
    """
    _check_aes256gcm(key, nonce)
    return AESGCM(key).decrypt(nonce, ciphertext, aad)


def aes256gcm_decrypt_into(key: BytesLike, nonce: BytesLike, ciphertext: BytesLike, aad: BytesLike) -> bytearray:
    """Like :func:`aes256gcm_decrypt`, but into a fresh ``bytearray`` that the caller can
    wipe: no immutable copy of the plaintext is made."""
    _check_aes256gcm(key, nonce)
    if len(ciphertext) < GCM_TAG_BYTES:
        raise InvalidTag()
    out = bytearray(len(ciphertext) - GCM_TAG_BYTES)
    AESGCM(key).decrypt_into(nonce, ciphertext, aad, out)
    return out


def hkdf_sha256(ikm: BytesLike, *, salt: bytes | None, info: bytes, length: int) -> bytearray:
    """HKDF-SHA256 (RFC 5869), extract then expand, into a new ``bytearray``.

    ``salt=None`` means the RFC's default salt (32 zero bytes), which gives the
    same output as an empty salt.
    """
    out = bytearray(length)
    # derive_into writes straight into our buffer, so no immutable copy of the key exists.
    HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive_into(ikm, out)
    return out


def argon2id(
    password: BytesLike,
    *,
    salt: bytes,
    length: int,
    iterations: int,
    lanes: int,
    memory_kib: int,
    secret: bytes | None = None,
    ad: bytes | None = None,
) -> bytearray:
    """Argon2id (RFC 9106, version 0x13) into a new ``bytearray``.

    ``memory_kib`` is the memory cost in KiB (at least ``8 * lanes``), ``lanes`` the
    parallelism. ``secret`` (the RFC's K, a pepper) and ``ad`` (its X, associated
    data) are optional. Only ``cryptography``'s own minimums are enforced (salt of
    8 bytes, output of 4 bytes); cost floors and salt policy belong to the recipes.
    """
    out = bytearray(length)
    kdf = Argon2id(
        salt=salt, length=length, iterations=iterations, lanes=lanes, memory_cost=memory_kib, ad=ad, secret=secret
    )
    # The stub types key_material as bytes, but the binding takes any buffer; copying a
    # password into bytes to please the type checker would leave a copy nobody can wipe.
    kdf.derive_into(cast(bytes, password), out)
    return out


def bytes_eq(a: BytesLike, b: BytesLike) -> bool:
    """Compare two byte strings in time that depends only on their lengths.

    The one function here that returns a bool: it is the comparison primitive that
    verifying code builds on, and such code must raise when it returns ``False``.
    """
    return hmac.compare_digest(a, b)

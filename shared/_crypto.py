"""curvemesh's cryptographic recipes: the safe way to seal data and derive keys.

Every service uses these, never :mod:`shared.hazmat` directly. The recipes choose
the nonces, bind the format version, validate labels and salts, and report every
failure the same way: a check that fails raises, nothing returns ``False``.

Key handling. Keys are ``bytearray`` so :func:`wipe` can zero them when the mesh
locks (DESIGN.md invariant 6). Python gives weaker guarantees than C here, and the
callers must know the limits:

- an immutable ``bytes`` object cannot be wiped, so never turn a key into one
  (``bytes(key)``, ``key[:]`` of a ``bytes``, ``key.hex()``, f-strings, msgpack);
- a ``bytearray`` that grows may be moved, leaving its old contents in freed memory;
  keys here are created at their final size and never resized;
- ``cryptography`` and OpenSSL keep their own short-lived copies (the AES key
  schedule); OpenSSL cleanses those when the context is freed, which we cannot force;
- ``random_key`` briefly holds the OS's random bytes in a ``bytes`` object before
  copying them (the standard library has no way to fill a buffer in place);
- swap and core dumps are the operating system's business, not this module's.

Wiping narrows the window in which a key is readable from a memory image; it is
not a guarantee that no copy remains.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Final, NoReturn

from . import hazmat
from ._argon2 import Argon2Profile, check_profile
from ._errors import MeshError

__all__ = [
    "KEY_BYTES",
    "SALT_MIN_BYTES",
    "SEAL_VERSION",
    "SEAL_OVERHEAD",
    "IntegrityError",
    "KeyedHash",
    "Sealer",
    "check_profile",
    "derive_from_password",
    "derive_subkey",
    "open_sealed",
    "random_key",
    "seal",
    "wipe",
]

KEY_BYTES: Final = 32
#: RFC 9106 recommends 128-bit salts; cryptography alone would accept 8 bytes.
SALT_MIN_BYTES: Final = 16
#: The first byte of every sealed blob.
SEAL_VERSION: Final = 0x01
_SEAL_HEADER: Final = bytes([SEAL_VERSION])
#: Bytes a sealed blob adds to its plaintext: version, nonce and tag.
SEAL_OVERHEAD: Final = 1 + hazmat.GCM_NONCE_BYTES + hazmat.GCM_TAG_BYTES

_NONCE_END: Final = 1 + hazmat.GCM_NONCE_BYTES
_HKDF_INFO_PREFIX: Final = b"curvemesh/v1/"
_LABEL_RE: Final = re.compile(r"[a-z0-9._-]{1,64}")
# Derived keys shorter than 128 bits are too weak to be worth offering.
_SUBKEY_MIN_BYTES: Final = 16

class IntegrityError(MeshError):
    """Sealed data failed its check: it was tampered with, truncated, or the key or
    associated data is wrong. A local error; its message never carries key or
    plaintext bytes (and should it ever escape a handler, it answers ``INTERNAL``)."""

    code = "INTERNAL"


def _check_key(key: bytes | bytearray) -> None:
    # A key of the wrong length is a bug in the caller, not a sign of tampering.
    if len(key) != KEY_BYTES:
        raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(key)}")


def random_key() -> bytearray:
    """Return a new random 256-bit key from the operating system's CSPRNG."""
    return bytearray(secrets.token_bytes(KEY_BYTES))


def seal(key: bytes | bytearray, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` with AES-256-GCM under a fresh random nonce.

    Returns ``0x01 || nonce (12 bytes) || ciphertext || tag (16 bytes)``. ``aad`` is
    authenticated but not stored: :func:`open_sealed` needs the same ``aad`` (for
    example the record's namespace and key) to open the blob. The version byte is
    authenticated too, so it cannot be changed to make a reader try another format.

    A random 96-bit nonce is safe for up to 2**32 seals under one key (NIST SP
    800-38D); rotate keys well before that.
    """
    _check_key(key)
    nonce = secrets.token_bytes(hazmat.GCM_NONCE_BYTES)
    return _SEAL_HEADER + nonce + hazmat.aes256gcm_encrypt(key, nonce, plaintext, _SEAL_HEADER + aad)


def open_sealed(key: bytes | bytearray, blob: bytes, aad: bytes) -> bytes:
    """Check and decrypt a blob made by :func:`seal` with the same ``key`` and ``aad``.

    Raises :class:`IntegrityError` when the blob is truncated, has an unknown version,
    was changed in any bit, or the key or ``aad`` is wrong. Raises ``ValueError`` for a
    key that is not 32 bytes long (a caller bug).
    """
    return bytes(_open(key, blob, aad, into=False))


def open_sealed_secret(key: bytes | bytearray, blob: bytes, aad: bytes) -> bytearray:
    """:func:`open_sealed` for key material: the plaintext comes back in a ``bytearray``
    that :func:`wipe` can zero, with no immutable copy left behind."""
    result = _open(key, blob, aad, into=True)
    assert isinstance(result, bytearray)
    return result


class Sealer:
    """:func:`seal` and :func:`open_sealed` under one key, whose AES-256-GCM context is made once.

    For a store that seals and opens many small values under the same key: keying AES-GCM costs
    about as much as sealing a 200-byte value. The blobs are exactly those of :func:`seal` (same
    format, same random nonce, same associated data) and open either way.

    The context holds its own copy of the key (OpenSSL's key schedule), which wiping the caller's
    ``bytearray`` does not reach: :meth:`close` drops it when the key is wiped; after that the
    sealer refuses to work (``ValueError``). See the module notes for what dropping guarantees.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes | bytearray) -> None:
        _check_key(key)
        self._aead: hazmat.AESGCM | None = hazmat.aes256gcm(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Like :func:`seal` with this sealer's key."""
        if self._aead is None:
            raise ValueError("this sealer is closed: its key was wiped")
        nonce = secrets.token_bytes(hazmat.GCM_NONCE_BYTES)
        return _SEAL_HEADER + nonce + self._aead.encrypt(nonce, plaintext, _SEAL_HEADER + aad)

    def seal_many(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        """:meth:`seal` of each ``(plaintext, aad)`` of ``items``, in order: the same blobs, each under
        its own random nonce, with every nonce of the call drawn from the operating system's CSPRNG in
        one read (one system call costs about what sealing a 200-byte value does). Nothing is kept
        for a later call, so no two calls, and no forked child, can ever be handed the same bytes."""
        aead = self._aead
        if aead is None:
            raise ValueError("this sealer is closed: its key was wiped")
        size = hazmat.GCM_NONCE_BYTES
        nonces = secrets.token_bytes(size * len(items))
        encrypt = aead.encrypt
        out = []
        at = 0
        for plaintext, aad in items:
            nonce = nonces[at:at + size]
            at += size
            out.append(_SEAL_HEADER + nonce + encrypt(nonce, plaintext, _SEAL_HEADER + aad))
        return out

    def open(self, blob: bytes, aad: bytes, start: int = 0) -> bytes:
        """Like :func:`open_sealed` with this sealer's key (the same :class:`IntegrityError`).

        ``start``: the sealed blob is ``blob[start:]`` (after a header of the caller's, which this does
        not check), read in place rather than copied out first."""
        aead = self._aead
        if aead is None:
            raise ValueError("this sealer is closed: its key was wiped")
        if start < 0 or len(blob) - start < SEAL_OVERHEAD or blob[start] != SEAL_VERSION:
            _refuse_framing(blob, start)
        nonce_end = start + _NONCE_END
        try:
            return aead.decrypt(blob[start + 1:nonce_end], blob[nonce_end:], _SEAL_HEADER + aad)
        except hazmat.InvalidTag:
            raise IntegrityError(
                "sealed data failed its integrity check: it was tampered with, or the key or associated data is wrong"
            ) from None

    def close(self) -> None:
        """Drop the AES-GCM context (and with it its copy of the key). Idempotent."""
        self._aead = None

    @property
    def closed(self) -> bool:
        return self._aead is None


class KeyedHash:
    """HMAC-SHA256 under one key, keyed once: :meth:`digest` of ``data`` is
    ``HMAC-SHA256(key, prefix + data)``, the same bytes as ``hmac.digest``.

    :meth:`extend` makes another one with a longer prefix (a namespace label fed once, then one
    name per digest), copying the keyed state instead of keying again. Like :class:`Sealer`, each
    holds OpenSSL's copy of the keyed state until :meth:`close` drops it. The key is at least 32 bytes.
    """

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes | bytearray, prefix: bytes = b"") -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"an HMAC key is at least {KEY_BYTES} bytes, got {len(key)}")
        ctx = hazmat.hmac_sha256(key)
        ctx.update(prefix)
        self._ctx: hazmat.HMAC | None = ctx

    def _live(self) -> hazmat.HMAC:
        if self._ctx is None:
            raise ValueError("this keyed hash is closed: its key was wiped")
        return self._ctx

    def extend(self, prefix: bytes) -> KeyedHash:
        """A keyed hash of ``self``'s prefix followed by ``prefix``."""
        ctx = self._live().copy()
        ctx.update(prefix)
        out = KeyedHash.__new__(KeyedHash)
        out._ctx = ctx
        return out

    def digest(self, data: bytes = b"") -> bytes:
        """``HMAC-SHA256(key, prefix + data)``, 32 bytes."""
        ctx = self._ctx  # _live(), inlined: this is on every keyed lookup
        if ctx is None:
            raise ValueError("this keyed hash is closed: its key was wiped")
        ctx = ctx.copy()
        ctx.update(data)
        return ctx.finalize()

    def close(self) -> None:
        """Drop the keyed state. Idempotent."""
        self._ctx = None

    @property
    def closed(self) -> bool:
        return self._ctx is None


def _refuse_framing(blob: bytes, start: int) -> NoReturn:
    """Why ``blob[start:]`` cannot be a sealed blob (:meth:`Sealer.open` found that it is not)."""
    if start < 0:
        raise ValueError("a sealed blob starts at a position >= 0")
    if len(blob) - start < SEAL_OVERHEAD:
        raise IntegrityError(f"sealed data is truncated: {max(len(blob) - start, 0)} bytes, a sealed blob has at "
                             f"least {SEAL_OVERHEAD}")
    raise IntegrityError(f"sealed data has unknown format version {blob[start]}: tampered with, or not ours")


def _open(key: bytes | bytearray, blob: bytes, aad: bytes, *, into: bool) -> bytes | bytearray:
    _check_key(key)
    if len(blob) < SEAL_OVERHEAD:
        raise IntegrityError(f"sealed data is truncated: {len(blob)} bytes, a sealed blob has at least {SEAL_OVERHEAD}")
    if blob[0] != SEAL_VERSION:
        # Fail closed: never guess at a format we do not know.
        raise IntegrityError(f"sealed data has unknown format version {blob[0]}: tampered with, or not ours")
    header, nonce, ciphertext = blob[:1], blob[1 : 1 + hazmat.GCM_NONCE_BYTES], blob[1 + hazmat.GCM_NONCE_BYTES :]
    try:
        if into:
            return hazmat.aes256gcm_decrypt_into(key, nonce, ciphertext, header + aad)
        return hazmat.aes256gcm_decrypt(key, nonce, ciphertext, header + aad)
    except hazmat.InvalidTag:
        # `from None`: the context adds nothing, and the message must stand alone.
        raise IntegrityError(
            "sealed data failed its integrity check: it was tampered with, or the key or associated data is wrong"
        ) from None


def derive_subkey(master: bytes | bytearray, label: str, length: int = KEY_BYTES) -> bytearray:
    """Derive the purpose key named ``label`` from a master key with HKDF-SHA256.

    No salt (the master key is already uniformly random); ``info`` is
    ``b"curvemesh/v1/" + label``, so each label gives an independent key and a new
    derivation scheme can take a new prefix. ``label`` is 1-64 characters of
    ``a-z 0-9 . _ -``; ``master`` is at least 32 bytes; ``length`` is 16 to 8160 bytes.
    Raises ``ValueError`` otherwise.
    """
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise ValueError(f"subkey label must be 1-64 characters of a-z, 0-9, '.', '_' and '-', got {label!r:.80}")
    if len(master) < KEY_BYTES:
        raise ValueError(f"master key must be at least {KEY_BYTES} bytes, got {len(master)}")
    if not _SUBKEY_MIN_BYTES <= length <= hazmat.HKDF_SHA256_MAX_LENGTH:
        raise ValueError(f"subkey length must be {_SUBKEY_MIN_BYTES} to {hazmat.HKDF_SHA256_MAX_LENGTH} bytes")
    return hazmat.hkdf_sha256(master, salt=None, info=_HKDF_INFO_PREFIX + label.encode("ascii"), length=length)


def derive_from_password(password: bytes | bytearray, salt: bytes, profile: Argon2Profile) -> bytearray:
    """Derive a 256-bit key from a human secret with Argon2id at ``profile``'s cost.

    ``salt`` is random, at least 16 bytes, stored beside what the key protects.
    The profile is not checked against the cost floor here: the caller checks it
    once, where it is configured, with :func:`check_profile`. Raises ``ValueError``
    for a short salt or a profile Argon2 cannot run (memory below 8 KiB per lane).
    """
    if len(salt) < SALT_MIN_BYTES:
        raise ValueError(f"salt must be at least {SALT_MIN_BYTES} bytes, got {len(salt)}")
    if profile.memory_kib < 8 * profile.parallelism:
        raise ValueError("Argon2 needs at least 8 KiB of memory per lane (memory_kib >= 8 * parallelism)")
    return hazmat.argon2id(
        password,
        salt=salt,
        length=KEY_BYTES,
        iterations=profile.iterations,
        lanes=profile.parallelism,
        memory_kib=profile.memory_kib,
    )


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place; its length is unchanged.

    Only a ``bytearray`` can be wiped (see the module notes for what this does and
    does not erase); anything else raises ``TypeError`` rather than pretend.
    """
    if not isinstance(buf, bytearray):
        raise TypeError(f"only a bytearray can be wiped, not {type(buf).__name__}")
    # Same-length slice assignment writes into the existing storage; it never reallocates.
    buf[:] = bytes(len(buf))

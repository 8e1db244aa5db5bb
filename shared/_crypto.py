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
#: A Sealer frame is a short header (a format byte and a key version, say), not a second payload.
_FRAME_MAX_BYTES: Final = 64

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
    about as much as sealing a 200-byte value. With no ``frame`` the blobs are exactly those of
    :func:`seal` (same format, same random nonce, same associated data) and open either way.

    ``frame`` (at most 64 bytes, default none) is a header of the caller's that every blob starts
    with, ahead of the sealed part, and that is authenticated with it: a blob is
    ``frame || seal(plaintext, aad = frame || aad)``, i.e. ``frame || 0x01 || nonce || ciphertext
    || tag`` with ``0x01 || frame || aad`` as associated data. :meth:`open` refuses a blob that does
    not start with the frame, so a store that prefixes its records with a format and key-version
    header checks and binds it in one step.

    The context holds its own copy of the key (OpenSSL's key schedule), which wiping the caller's
    ``bytearray`` does not reach: :meth:`close` drops it when the key is wiped; after that the
    sealer refuses to work (``ValueError``). See the module notes for what dropping guarantees.
    """

    __slots__ = ("_aad_lead", "_aead", "_lead", "_min")

    def __init__(self, key: bytes | bytearray, frame: bytes = b"") -> None:
        _check_key(key)
        if not isinstance(frame, bytes) or len(frame) > _FRAME_MAX_BYTES:
            raise ValueError(f"a sealer's frame is bytes, at most {_FRAME_MAX_BYTES} of them")
        self._aead: hazmat.AESGCM | None = hazmat.aes256gcm(key)
        #: What every blob starts with, and what its associated data starts with.
        self._lead = frame + _SEAL_HEADER
        self._aad_lead = _SEAL_HEADER + frame
        self._min = len(frame) + SEAL_OVERHEAD

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Like :func:`seal` with this sealer's key (and frame)."""
        if self._aead is None:
            raise ValueError("this sealer is closed: its key was wiped")
        nonce = secrets.token_bytes(hazmat.GCM_NONCE_BYTES)
        return self._lead + nonce + self._aead.encrypt(nonce, plaintext, self._aad_lead + aad)

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
        encrypt, lead, aad_lead = aead.encrypt, self._lead, self._aad_lead
        out = []
        at = 0
        for plaintext, aad in items:
            nonce = nonces[at:at + size]
            at += size
            out.append(lead + nonce + encrypt(nonce, plaintext, aad_lead + aad))
        return out

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Like :func:`open_sealed` with this sealer's key (the same :class:`IntegrityError`), for a
        blob that starts with this sealer's frame (:class:`IntegrityError` when it does not)."""
        aead = self._aead
        if aead is None:
            raise ValueError("this sealer is closed: its key was wiped")
        lead = self._lead
        if len(blob) < self._min or not blob.startswith(lead):
            _refuse_framing(blob, lead, self._min)
        at = len(lead)
        try:
            return aead.decrypt(blob[at:at + hazmat.GCM_NONCE_BYTES], blob[at + hazmat.GCM_NONCE_BYTES:],
                                self._aad_lead + aad)
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


def _refuse_framing(blob: bytes, lead: bytes, least: int) -> NoReturn:
    """Why ``blob`` cannot be a sealed blob framed by ``lead`` (:meth:`Sealer.open` found that it is not)."""
    if len(blob) < least:
        raise IntegrityError(f"sealed data is truncated: {len(blob)} bytes, a sealed blob here has at least {least}")
    if not blob.startswith(lead[:-1]):
        raise IntegrityError("sealed data does not start with its expected header: tampered with, or not ours")
    raise IntegrityError(f"sealed data has unknown format version {blob[len(lead) - 1]}: tampered with, or not ours")


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

"""Refresh tokens: opaque 256-bit random values that authn stores only as keyed hashes.

A token is ``rt.<version>.<unpadded base64url of 32 random bytes>``::

    digest key = HKDF-SHA256(token-signing seed of <version>, salt=None,
                             info=b"curvemesh authn refresh-token digest v1")     32 bytes
    digest     = HMAC-SHA256(digest key, the 32 random bytes)                      what the DB keeps

``version`` names the token-signing key version whose seed the digest key came from, so after a
rotation the tokens hashed under an older version stay checkable for as long as authn holds that
version's seed. That is the refresh-token lifetime, longer than the access-token overlap after
which :class:`~shared.tokens.SigningKeys` retires the version: keep the digest keys apart.
The HKDF label separates this key from the signing use of the same seed; a leaked digest table
without the seed gives nobody a token, since the digest is keyed and the random part is 256 bits.

Lookup is by digest (an indexed column), so the comparison that finds a token is the database's,
not constant-time; that is safe because a timing probe can only learn about digests of values
the prober chose, which says nothing about anyone else's token. :func:`check_digest` is the
constant-time comparison for checks made in memory. Like :mod:`.tokens`, nothing here does I/O,
and a refusal raises :class:`~shared.tokens.InvalidToken`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.tokens import SEED_BYTES, InvalidToken, b64url, b64url_decode, check_version

__all__ = [
    "DIGEST_INFO", "DIGEST_KEY_BYTES", "MAX_REFRESH_CHARS", "REFRESH_BYTES", "check_digest", "digest_key",
    "lookup_digest", "new_refresh", "parse_refresh", "refresh_digest",
]

#: The HKDF info label: a new label (v2) means a new key, never a reinterpretation of old digests.
DIGEST_INFO: Final = b"curvemesh authn refresh-token digest v1"
REFRESH_BYTES: Final = 32
DIGEST_KEY_BYTES: Final = 32
#: A well-formed token is at most 53 characters; anything past the cap is refused before matching.
MAX_REFRESH_CHARS: Final = 128
# 43 base64url characters are exactly 32 bytes (with 2 unused bits, checked by b64url_decode).
# [0-9] rather than \d (any script's digits) and fullmatch rather than "$" (a trailing newline).
_REFRESH_RE: Final = re.compile(r"rt\.([1-9][0-9]{0,5})\.([A-Za-z0-9_-]{43})")


def digest_key(seed: bytes | bytearray) -> bytes:
    """The refresh-token digest key of a token-signing seed (32 bytes in, 32 bytes out)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a token-signing seed is {SEED_BYTES} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=DIGEST_KEY_BYTES, salt=None, info=DIGEST_INFO).derive(seed)


def refresh_digest(raw: bytes, key: bytes) -> bytes:
    """HMAC-SHA256 of a token's 32 random bytes under a digest key: what the database stores."""
    if len(raw) != REFRESH_BYTES:
        raise ValueError(f"a refresh token's random part is {REFRESH_BYTES} bytes")
    if len(key) != DIGEST_KEY_BYTES:
        raise ValueError(f"a digest key is {DIGEST_KEY_BYTES} bytes")
    return hmac.new(key, raw, hashlib.sha256).digest()


def new_refresh(version: int, key: bytes) -> tuple[str, bytes]:
    """A new refresh token hashed under ``key`` (the digest key of ``version``), and its digest.

    The token goes to the client and nowhere else; only the digest is stored.
    """
    check_version(version)
    raw = secrets.token_bytes(REFRESH_BYTES)
    return f"rt.{version}.{b64url(raw)}", refresh_digest(raw, key)


def parse_refresh(token: object) -> tuple[int, bytes]:
    """The key version and the 32 random bytes of a presented token.

    Raises ``InvalidToken("malformed")`` for anything but a str of exactly the issued shape: no
    padding, no standard-alphabet base64, no leading zero or version outside 1..999999, no
    unused bits set, no surrounding whitespace.
    """
    # The length of a str is known without reading it, so the cap comes before the regex.
    if type(token) is not str or len(token) > MAX_REFRESH_CHARS:
        raise InvalidToken("malformed")
    match = _REFRESH_RE.fullmatch(token)
    raw = b64url_decode(match.group(2), REFRESH_BYTES) if match else None
    if match is None or raw is None:
        raise InvalidToken("malformed")
    return int(match.group(1)), raw


def lookup_digest(token: object, keys: Mapping[int, bytes]) -> tuple[int, bytes]:
    """Parse a presented token and compute the digest to look it up by; return (version, digest).

    ``keys`` maps each token-signing version still held to its digest key. A token naming a
    version that is not held raises ``InvalidToken("kid_unknown")``: it can never be checked.
    """
    version, raw = parse_refresh(token)
    key = keys.get(version)
    if key is None:
        raise InvalidToken("kid_unknown")
    return version, refresh_digest(raw, key)


def check_digest(expected: bytes, actual: bytes) -> None:
    """Raise ``InvalidToken("digest_mismatch")`` unless the digests are equal (constant time)."""
    if not hmac.compare_digest(expected, actual):
        raise InvalidToken("digest_mismatch")

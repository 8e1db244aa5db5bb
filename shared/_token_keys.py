"""Token-signing keys: the Ed25519 versions that sign access tokens, and their public JWKs.

:class:`SigningKeys` holds the ``token-signing`` versions keyvault hands out (32-byte Ed25519
seeds): the newest signs, older ones verify until they retire. :class:`PublicKeys` is the same
lookup built from the published JWKs (:meth:`SigningKeys.public_jwks`), for a service that verifies
tokens locally. A key id is ``token-signing-v<N>``; nothing else is accepted as one.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG: Final = "EdDSA"
#: Rotation keeps a replaced key this long after its successor took over: no token may outlive that.
MAX_ACCESS_LIFETIME_S: Final = 900
SEED_BYTES: Final = 32
MAX_VERSION: Final = 999_999
# fullmatch throughout: "$" also matches before a trailing newline. [0-9], not \d, which takes any
# script's digits.
KID_RE: Final = re.compile(r"token-signing-v([1-9][0-9]{0,5})")


def check_version(version: int) -> int:
    """Return ``version`` if it is a key version (an int from 1 to 999999), else raise ValueError."""
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        raise ValueError(f"a key version is an int from 1 to {MAX_VERSION}")
    return version


def kid_for(version: int) -> str:
    return f"token-signing-v{check_version(version)}"


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, length: int | None = None) -> bytes | None:
    """Decode canonical unpadded base64url (of exactly ``length`` bytes if given), else None."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Decoding skips stray characters and unused low bits; re-encoding gives each value one spelling.
    return data if length in (None, len(data)) and b64url(data) == text else None


class SigningKeys:
    """The token-signing versions authn holds: the newest signs, older ones verify for a while.

    Add versions in ascending order. A newer version becomes current and gives every older one
    ``retire_after`` (when the newer key took over plus :data:`MAX_ACCESS_LIFETIME_S`) unless it
    retires earlier already; it is required then, ignored for the first version. From
    ``retire_after`` on a version verifies nothing, even before :meth:`prune` drops it.
    """

    def __init__(self) -> None:
        self._private: dict[int, Ed25519PrivateKey] = {}
        self._public: dict[int, Ed25519PublicKey] = {}
        self._retire: dict[int, float] = {}

    def add(self, version: int, seed: bytes | bytearray, retire_after: float | None = None) -> None:
        """Hold ``version``; the seed is copied into the key, so the caller may wipe its buffer."""
        check_version(version)
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a token-signing seed is {SEED_BYTES} bytes")
        if self._private and version <= self.current_version:
            # Refusing an older version also keeps a pruned (retired) key from coming back.
            raise ValueError(f"version {version} is not newer than the current version {self.current_version}")
        if self._private and (retire_after is None or not math.isfinite(retire_after)):
            raise ValueError("a newer version needs retire_after for the versions it replaces")
        for older in self._private:
            self._retire[older] = min(self._retire.get(older, math.inf), retire_after or 0.0)
        self._private[version] = Ed25519PrivateKey.from_private_bytes(seed)
        # Derived once: every verification looks it up, and deriving costs as much as a lookup of
        # the session behind the token.
        self._public[version] = self._private[version].public_key()

    @property
    def current_version(self) -> int:
        if not self._private:
            raise LookupError("no token-signing key has been added")
        return max(self._private)

    def signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        """The current version's kid and private key."""
        return kid_for(self.current_version), self._private[self.current_version]

    def public_key(self, version: int, now: float) -> Ed25519PublicKey | None:
        """The public key of ``version`` if it is held and not retired at ``now``."""
        public = self._public.get(version)
        return None if public is None or now >= self._retire.get(version, math.inf) else public

    def prune(self, now: float) -> list[int]:
        """Drop the versions retired at ``now``; return them, for the audit log."""
        retired = sorted(v for v, at in self._retire.items() if now >= at)
        for version in retired:
            del self._private[version], self._public[version], self._retire[version]
        return retired

    def public_jwks(self) -> list[dict[str, str]]:
        """The OKP/Ed25519 JWKs of every version held, oldest first; :meth:`prune` first."""
        return [_jwk(v, self._public[v]) for v in sorted(self._public)]


class PublicKeys:
    """Keys from :meth:`SigningKeys.public_jwks`, for a service verifying locally (same lookup).

    Raises ValueError on an empty set, a duplicate kid, a private ``d`` or any JWK we do not write.
    """

    def __init__(self, jwks: Iterable[Mapping[str, object]]) -> None:
        parsed = [_parse_jwk(jwk) for jwk in jwks]
        self._keys: dict[int, Ed25519PublicKey] = dict(parsed)
        if not parsed or len(self._keys) != len(parsed):
            raise ValueError("a JWK set has at least one key and one JWK per kid")

    def public_key(self, version: int, now: float) -> Ed25519PublicKey | None:
        # authn publishes only the versions still valid: retiring one is its call, not ours.
        return self._keys.get(version)


def _jwk(version: int, public: Ed25519PublicKey) -> dict[str, str]:
    x = b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid_for(version), "alg": ALG, "use": "sig"}


def _parse_jwk(jwk: Mapping[str, object]) -> tuple[int, Ed25519PublicKey]:
    if not isinstance(jwk, Mapping) or "d" in jwk:
        raise ValueError("a verification JWK is a JSON object without a private key")
    kid, x = jwk.get("kid"), jwk.get("x")
    match = KID_RE.fullmatch(kid) if isinstance(kid, str) else None
    raw = b64url_decode(x, SEED_BYTES) if isinstance(x, str) else None
    key = Ed25519PublicKey.from_public_bytes(raw) if raw is not None else None
    # Exactly the members we write: a JWK for another curve, algorithm or use is not ours.
    if match is None or key is None or dict(jwk) != _jwk(int(match.group(1)), key):
        raise ValueError("not an Ed25519 token-signing JWK")
    return int(match.group(1)), key



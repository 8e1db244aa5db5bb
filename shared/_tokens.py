"""Access tokens: EdDSA-signed JWTs (RFC 9068 profile) bound to the presenter's CURVE key.

:class:`SigningKeys` holds the ``token-signing`` versions keyvault hands out (32-byte Ed25519
seeds): the newest signs, older ones verify until they retire. :func:`issue_access` signs;
:func:`verify_access` returns :class:`AccessClaims` or raises :class:`InvalidToken`, whose
``reason`` is a short code for the audit log (no check here answers with a bool). A service
verifying locally builds :class:`PublicKeys` from :meth:`SigningKeys.public_jwks` (``authn.keys``).

Header ``{"alg": "EdDSA", "typ": "at+jwt", "kid": "token-signing-v<N>"}``; claims iss, aud (one
string), sub, sid, jti, iat, nbf, exp, auth_time, amr, ``cnf: {"ckt": ...}``, ``token_use:
"access"``. ``ckt``, the "CURVE key thumbprint", is the lowercase hex SHA-256 of the raw 32-byte
CURVE public key of the peer the token is bound to (:func:`shared.certs.fingerprint`), modelled on
``x5t#S256`` (RFC 8705) in RFC 7800's ``cnf``: the token is good only over that peer's connection.

Clock: PyJWT 2.15 reads the wall clock itself and takes no clock argument, so PyJWT checks the
signature, iss, aud and that every claim is present, with its time checks off, and this module
checks iat, nbf and exp against the injected ``now``. Nothing here does I/O.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from ._token_keys import (
    ALG,
    KID_RE,
    MAX_ACCESS_LIFETIME_S,
    SEED_BYTES,
    PublicKeys,
    SigningKeys,
    b64url,
    b64url_decode,
    check_version,
    kid_for,
)

__all__ = ["MAX_ACCESS_LIFETIME_S", "MAX_TOKEN_BYTES", "REASONS", "SEED_BYTES", "AccessClaims", "InvalidToken",
           "PublicKeys", "SigningKeys", "VerifiedTokens", "b64url", "b64url_decode", "check_version", "issue_access",
           "kid_for", "verify_access"]

#: RFC 9068 also allows "application/at+jwt"; we are the only issuer, so one spelling is accepted.
TYP: Final = "at+jwt"
TOKEN_USE: Final = "access"  # noqa: S105 (a claim value, not a password)
MAX_TOKEN_BYTES: Final = 4096
#: The audience of tokens for the mesh's own services (what authn issues when a login names none,
#: and what storage and authz verify against).
MESH_AUDIENCE: Final = "curvemesh"
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "auth_time", "amr", "cnf",
                          "token_use")
REASONS: Final = frozenset({
    "malformed", "too_large", "alg", "typ", "kid_format", "kid_unknown", "header", "signature", "expired",
    "not_yet_valid", "issuer", "audience", "claims_missing", "claims_invalid", "token_use", "wrong_presenter",
    "digest_mismatch", "revoked"})
# fullmatch throughout: "$" also matches before a trailing newline.
# An empty signature is let through to the header checks, so "alg": "none" is refused as "alg".
_COMPACT_JWS_RE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HEX_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_HEADER_MEMBERS: Final = frozenset({"alg", "typ", "kid"})


class InvalidToken(Exception):
    """A token was refused; ``reason`` (one of :data:`REASONS`) says why, for the audit log.

    The message is the reason alone, never the token or a claim, so logging it leaks no credential.
    """

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The claims of a verified (or just issued) access token; ``token_use`` is always "access"."""

    issuer: str
    audience: str
    subject: str
    session_id: str
    token_id: str
    issued_at: int
    not_before: int
    expires_at: int
    auth_time: int
    amr: tuple[str, ...]
    confirmation: str


def issue_access(keys: SigningKeys, *, issuer: str, audience: str, subject: str, session_id: str,
                 auth_time: float, amr: list[str], confirmation: str, now: float,
                 lifetime_s: int = MAX_ACCESS_LIFETIME_S) -> tuple[str, AccessClaims]:
    """Sign an access token with the current key; return it and its claims.

    ``confirmation`` is the presenter's CURVE key thumbprint (64 lowercase hex). Bad arguments
    raise ValueError: they are the caller's bug, never a client's input.
    """
    if not all(isinstance(s, str) and s for s in (issuer, audience, subject, session_id)):
        raise ValueError("issuer, audience, subject and session_id are non-empty strings")
    if not isinstance(amr, list) or not amr or not all(isinstance(m, str) and m for m in amr):
        raise ValueError("amr is a non-empty list of method names")
    if not isinstance(confirmation, str) or not _HEX_SHA256_RE.fullmatch(confirmation):
        raise ValueError("confirmation is a lowercase hex SHA-256 thumbprint")
    if type(lifetime_s) is not int or not 0 < lifetime_s <= MAX_ACCESS_LIFETIME_S:
        raise ValueError(f"lifetime_s is 1 to {MAX_ACCESS_LIFETIME_S} seconds")
    if not math.isfinite(now) or not math.isfinite(auth_time) or auth_time > now:
        raise ValueError("now and auth_time are finite and authentication is not in the future")
    iat = int(now)
    payload = {"iss": issuer, "aud": audience, "sub": subject, "sid": session_id, "jti": secrets.token_urlsafe(16),
               "iat": iat, "nbf": iat, "exp": iat + lifetime_s, "auth_time": int(auth_time), "amr": list(amr),
               "cnf": {"ckt": confirmation}, "token_use": TOKEN_USE}
    kid, private = keys.signing_key()
    token = jwt.encode(payload, private, algorithm=ALG, headers={"typ": TYP, "kid": kid})
    if len(token) > MAX_TOKEN_BYTES:
        raise ValueError("these claims make a token larger than verifiers accept")
    # The verifier's own reading of the claims, so what we return is what it will see.
    return token, _claims(payload)


# PyJWT's errors, most specific first (InvalidSignatureError is a DecodeError).
_PYJWT_REASONS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.InvalidSignatureError, "signature"), (jwt.InvalidAlgorithmError, "alg"),
    (jwt.MissingRequiredClaimError, "claims_missing"), (jwt.InvalidIssuerError, "issuer"),
    (jwt.InvalidAudienceError, "audience"), (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"), (jwt.InvalidIssuedAtError, "claims_invalid"),
    (InvalidSubjectError, "claims_invalid"), (InvalidJTIError, "claims_invalid"))


class VerifiedTokens:
    """Tokens whose signature, header and claims were verified, with their claims, until they expire.

    A client presents the same access token many times in its 15 minutes; verifying it again costs
    a signature check and two parses, finding it here a dict lookup. Only what does not depend on
    the call is remembered: issuer, audience, presenter, the clock and the key version (still held,
    not retired) are checked again on every hit. At most ``capacity`` tokens are kept; when full,
    the expired go first, then the oldest.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity is at least 1")
        self.capacity = capacity
        self._items: dict[str, tuple[AccessClaims, int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, token: str) -> tuple[AccessClaims, int] | None:
        return self._items.get(token)

    def put(self, token: str, claims: AccessClaims, version: int, now: float) -> None:
        if len(self._items) >= self.capacity:
            self._items = {t: v for t, v in self._items.items() if v[0].expires_at > now}
            while len(self._items) >= self.capacity:
                del self._items[next(iter(self._items))]  # dicts keep insertion order: the oldest
        self._items[token] = (claims, version)


def verify_access(token: object, keys: SigningKeys | PublicKeys, *, issuer: str, audience: str, presenter: str,
                  now: float, leeway_s: float = 0, cache: VerifiedTokens | None = None) -> AccessClaims:
    """Verify an access token presented by the peer whose CURVE thumbprint is ``presenter``.

    Returns its claims or raises :class:`InvalidToken`. Checks, in order: a str of at most
    :data:`MAX_TOKEN_BYTES` ASCII; the header (alg, typ, kid shape, no other member); a known,
    unretired kid; signature, iss, aud and all claims present (PyJWT); claim types; token_use; iss
    and aud again; iat and nbf not after ``now + leeway_s``, exp after ``now - leeway_s``; cnf.ckt ==
    presenter. With ``cache``, a token verified before skips the signature and parsing only.
    """
    if not all(isinstance(s, str) and s for s in (issuer, audience, presenter)):
        raise ValueError("issuer, audience and presenter are non-empty strings")
    if not (math.isfinite(now) and math.isfinite(leeway_s) and leeway_s >= 0):
        raise ValueError("now and leeway_s are finite and leeway_s is not negative")
    # A str's length is known without reading it, so the cap comes before any pass over the text.
    if type(token) is not str:
        raise InvalidToken("malformed")
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken("too_large")
    hit = cache.get(token) if cache is not None else None
    if hit is not None:
        claims, version = hit
        if keys.public_key(version, now) is None:
            raise InvalidToken("kid_unknown")  # its key retired since: the token goes with it
    else:
        claims, version = _verify_signed(token, keys, issuer, audience, now)
        if cache is not None:
            cache.put(token, claims, version, now)
    return _check_call(claims, issuer, audience, presenter, now, leeway_s)


def _verify_signed(token: str, keys: SigningKeys | PublicKeys, issuer: str, audience: str,
                   now: float) -> tuple[AccessClaims, int]:
    if not token.isascii() or not _COMPACT_JWS_RE.fullmatch(token):
        raise InvalidToken("malformed")
    version = _check_header(_unverified_header(token))
    public = keys.public_key(version, now)
    if public is None:
        raise InvalidToken("kid_unknown")
    try:
        # EdDSA only, with a key object: an HS256 token is refused by name, and HMAC could not take
        # this key as its secret even if the list were wrong (raw public-key bytes it would).
        payload = jwt.decode(token, public, algorithms=[ALG], audience=audience, issuer=issuer, options={
            "require": list(REQUIRED_CLAIMS), "verify_signature": True, "verify_aud": True, "verify_iss": True,
            "strict_aud": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False})
    except jwt.PyJWTError as exc:
        # "from None": PyJWT's messages may quote pieces of the token, and a chained cause is logged.
        raise InvalidToken(next((r for cls, r in _PYJWT_REASONS if isinstance(exc, cls)), "malformed")) from None
    claims = _claims(payload)
    if payload["token_use"] != TOKEN_USE:
        raise InvalidToken("token_use")
    return claims, version


def _check_call(claims: AccessClaims, issuer: str, audience: str, presenter: str, now: float,
                leeway_s: float) -> AccessClaims:
    """What depends on the call, not on the token: checked on every verification, cached or not."""
    if claims.issuer != issuer:
        raise InvalidToken("issuer")
    if claims.audience != audience:
        raise InvalidToken("audience")
    if claims.issued_at > now + leeway_s or claims.not_before > now + leeway_s:
        raise InvalidToken("not_yet_valid")
    if claims.expires_at <= now - leeway_s:
        raise InvalidToken("expired")
    if not hmac.compare_digest(claims.confirmation.encode(), presenter.encode()):
        raise InvalidToken("wrong_presenter")
    return claims


def claimed_subject(token: object) -> str | None:
    """The ``sub`` a token *claims*, unverified: for routing work that runs beside the verification
    (an enforcing service asks authz about the claimed user while authn verifies the token), never
    for a decision. The caller must compare it with the verified subject before using any result
    that depends on it. None when the token does not even have the shape of one."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_BYTES or not _COMPACT_JWS_RE.fullmatch(token):
        return None
    raw = b64url_decode(token.split(".")[1])
    try:
        payload = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        return None
    subject = payload.get("sub") if isinstance(payload, dict) else None
    return subject if isinstance(subject, str) and 0 < len(subject) <= 64 else None


def _unverified_header(token: str) -> dict[str, Any]:
    # Read here rather than with jwt.get_unverified_header, which parses the whole token a second
    # time (jwt.decode parses it once more): the shape regex has vouched for the characters, and a
    # header that does not decode to one JSON object is malformed whoever reads it.
    raw = b64url_decode(token.split(".", 1)[0])
    try:
        header = json.loads(raw) if raw is not None else None
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise InvalidToken("malformed")
    return header


def _check_header(header: dict[str, Any]) -> int:
    if header.get("alg") != ALG:
        raise InvalidToken("alg")
    # typ keeps a refresh token, an ID token or any other JWT we might sign from passing as access.
    if header.get("typ") != TYP:
        raise InvalidToken("typ")
    kid = header.get("kid")
    match = KID_RE.fullmatch(kid) if isinstance(kid, str) else None
    if match is None:
        raise InvalidToken("kid_format")
    # crit, b64, jku, jwk, x5u...: we never write them, and some change how PyJWT reads the token.
    if not header.keys() <= _HEADER_MEMBERS:
        raise InvalidToken("header")
    return int(match.group(1))


def _claims(payload: dict[str, Any]) -> AccessClaims:
    # Strict JSON types: PyJWT would take "123" or 1.5 for a time, and NaN compares false to all.
    strings = [payload[n] for n in ("iss", "aud", "sub", "sid", "jti")]
    times = [payload[n] for n in ("iat", "nbf", "exp", "auth_time")]
    amr, cnf = payload["amr"], payload["cnf"]
    ckt = cnf.get("ckt") if isinstance(cnf, dict) else None
    if (not all(isinstance(s, str) for s in strings) or not all(type(t) is int for t in times)
            or not isinstance(amr, list) or not all(isinstance(m, str) for m in amr)
            or not isinstance(ckt, str) or not _HEX_SHA256_RE.fullmatch(ckt)):
        raise InvalidToken("claims_invalid")
    iss, aud, sub, sid, jti = strings
    iat, nbf, exp, auth_time = times
    return AccessClaims(iss, aud, sub, sid, jti, iat, nbf, exp, auth_time, tuple(amr), ckt)

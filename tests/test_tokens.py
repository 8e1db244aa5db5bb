"""authn's token core: access tokens (EdDSA JWT) and refresh tokens. Pure: no mesh, no clock.

Every refusal asserts its exact reason, since the reason is what the audit log records.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from services.authn.refresh import (
    DIGEST_INFO,
    check_digest,
    digest_key,
    lookup_digest,
    new_refresh,
    parse_refresh,
    refresh_digest,
)
from shared.tokens import (
    MAX_ACCESS_LIFETIME_S,
    REASONS,
    InvalidToken,
    PublicKeys,
    SigningKeys,
    VerifiedTokens,
    b64url,
    issue_access,
    verify_access,
)

NOW = 1_750_000_000.0
ISSUER = "authn"
AUDIENCE = "storage"
PRESENTER = hashlib.sha256(b"the peer's 32-byte CURVE public key").hexdigest()
SEED1 = bytes(range(32))
SEED2 = bytes(range(100, 132))
REQUIRED = ("iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp", "auth_time", "amr", "cnf", "token_use")
HEADER = {"alg": "EdDSA", "typ": "at+jwt", "kid": "token-signing-v1"}


def keys_v1() -> SigningKeys:
    keys = SigningKeys()
    keys.add(1, SEED1)
    return keys


def issue(keys: SigningKeys, **overrides: Any) -> str:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "subject": "user-42", "session_id": "sess-1",
                            "auth_time": NOW - 5, "amr": ["pwd", "otp"], "confirmation": PRESENTER, "now": NOW}
    return issue_access(keys, **{**args, **overrides})[0]


def verify(token: object, keys: SigningKeys | PublicKeys, **overrides: Any) -> Any:
    args: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "presenter": PRESENTER, "now": NOW + 1}
    return verify_access(token, keys, **{**args, **overrides})


def refusal(token: object, keys: SigningKeys | PublicKeys | None = None, **overrides: Any) -> str:
    with pytest.raises(InvalidToken) as caught:
        verify(token, keys if keys is not None else keys_v1(), **overrides)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def good_claims(**changes: Any) -> dict[str, Any]:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "sid": "sess-1", "jti": "AAAAAAAAAAAAAAAAAAAAAA",
              "iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 900, "auth_time": int(NOW) - 5, "amr": ["pwd"],
              "cnf": {"ckt": PRESENTER}, "token_use": "access"}
    claims.update(changes)
    return claims


def jws(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, seed: bytes = SEED1) -> str:
    """A compact JWS with exactly this header and payload, Ed25519-signed with ``seed``."""
    h = b64url(header if isinstance(header, bytes) else json.dumps(header).encode())
    p = b64url(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(f"{h}.{p}".encode())
    return f"{h}.{p}.{b64url(signature)}"


def public_bytes(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# Round trip, header and claims.

def test_round_trip_returns_the_issued_claims() -> None:
    keys = keys_v1()
    token, issued = issue_access(keys, issuer=ISSUER, audience=AUDIENCE, subject="user-42", session_id="sess-1",
                                 auth_time=NOW - 5, amr=["pwd", "otp"], confirmation=PRESENTER, now=NOW + 0.7)
    claims = verify(token, keys)
    assert claims == issued
    assert (claims.subject, claims.session_id, claims.amr, claims.confirmation) == (
        "user-42", "sess-1", ("pwd", "otp"), PRESENTER)
    assert (claims.issued_at, claims.not_before, claims.expires_at) == (int(NOW), int(NOW), int(NOW) + 900)
    assert jwt.get_unverified_header(token) == HEADER
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == set(REQUIRED)
    assert payload["cnf"] == {"ckt": PRESENTER} and payload["token_use"] == "access"


def test_jti_is_128_random_bits() -> None:
    keys = keys_v1()
    ids = {verify(issue(keys), keys).token_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)


@pytest.mark.parametrize("bad", [
    {"lifetime_s": MAX_ACCESS_LIFETIME_S + 1}, {"lifetime_s": 0}, {"lifetime_s": 1.5}, {"confirmation": "AB" * 32},
    {"confirmation": "ab"}, {"amr": []}, {"amr": "pwd"}, {"subject": ""}, {"auth_time": NOW + 1},
    {"now": float("nan")}, {"subject": "x" * 4000},
])
def test_issue_refuses_bad_arguments(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        issue(keys_v1(), **bad)


def test_issue_without_a_key_is_refused() -> None:
    with pytest.raises(LookupError):
        issue(SigningKeys())


@pytest.mark.parametrize("bad", [{"now": float("nan")}, {"leeway_s": -1}, {"presenter": ""}, {"audience": None}])
def test_verify_refuses_bad_arguments(bad: dict[str, Any]) -> None:
    keys = keys_v1()
    with pytest.raises(ValueError):
        verify(issue(keys), keys, **bad)


# JWKS and local verification.

def test_public_jwks_and_local_verification() -> None:
    keys = keys_v1()
    keys.add(2, SEED2, retire_after=NOW + 900)
    jwks = keys.public_jwks()
    assert jwks == [
        {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(SEED1)), "kid": "token-signing-v1", "alg": "EdDSA",
         "use": "sig"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(SEED2)), "kid": "token-signing-v2", "alg": "EdDSA",
         "use": "sig"},
    ]
    local = PublicKeys(json.loads(json.dumps(jwks)))
    token = issue(keys)
    assert jwt.get_unverified_header(token)["kid"] == "token-signing-v2"
    assert verify(token, local) == verify(token, keys)
    assert refusal(issue(keys, confirmation="0" * 64), local) == "wrong_presenter"
    assert refusal(jws(HEADER | {"kid": "token-signing-v3"}, good_claims()), local) == "kid_unknown"


def test_public_keys_refuse_what_we_do_not_publish() -> None:
    good = keys_v1().public_jwks()[0]
    bad_sets: list[list[Any]] = [
        [], [good, good], [good | {"d": b64url(SEED1)}], [good | {"crv": "Ed448"}], [good | {"kty": "EC"}],
        [good | {"alg": "HS256"}], [good | {"use": "enc"}], [good | {"key_ops": ["verify"]}],
        [good | {"x": b64url(b"\x01" * 31)}], [good | {"x": good["x"] + "="}], [good | {"kid": "../../etc/passwd"}],
        [{k: v for k, v in good.items() if k != "alg"}], ["not a jwk"],
    ]
    for jwks in bad_sets:
        with pytest.raises(ValueError):
            PublicKeys(jwks)


# Rotation.

def test_previous_key_verifies_during_the_overlap_and_not_after() -> None:
    keys = keys_v1()
    old = issue(keys)
    keys.add(2, SEED2, retire_after=NOW + 10 + MAX_ACCESS_LIFETIME_S)
    assert verify(old, keys, now=NOW + 600).subject == "user-42"
    assert keys.prune(NOW + 600) == []
    # Retired from retire_after on, even before prune drops it.
    assert refusal(old, keys, now=NOW + 10 + MAX_ACCESS_LIFETIME_S) == "kid_unknown"
    assert keys.prune(NOW + 10 + MAX_ACCESS_LIFETIME_S) == [1]
    assert [j["kid"] for j in keys.public_jwks()] == ["token-signing-v2"]
    assert refusal(old, keys, now=NOW + 600) == "kid_unknown"
    assert refusal(old, PublicKeys(keys.public_jwks())) == "kid_unknown"


def test_retired_key_refuses_a_token_that_has_not_expired() -> None:
    # An early retirement (a compromised key) must win over the token's own exp.
    keys = keys_v1()
    old = issue(keys)
    keys.add(2, SEED2, retire_after=NOW + 30)
    keys.prune(NOW + 30)
    assert refusal(old, keys, now=NOW + 60) == "kid_unknown"


def test_rotation_rules() -> None:
    keys = keys_v1()
    with pytest.raises(ValueError):
        keys.add(2, SEED2)  # a newer version without the retirement of the older ones
    keys.add(2, SEED2, retire_after=NOW + 100)
    keys.add(3, bytearray(SEED1[::-1]), retire_after=NOW + 500)
    assert keys.current_version == 3
    assert keys.public_key(1, NOW + 99) is not None and keys.public_key(1, NOW + 100) is None  # kept its earlier date
    assert keys.public_key(2, NOW + 499) is not None and keys.public_key(2, NOW + 500) is None
    assert keys.prune(NOW + 500) == [1, 2]
    for version, seed in [(1, SEED1), (3, SEED1), (0, SEED1), (1_000_000, SEED1), (True, SEED1), (4, SEED1[:31])]:
        with pytest.raises(ValueError):
            keys.add(version, seed, retire_after=NOW)


# The attack suite on verify_access.

@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "..", "a..c", "a.b.c=", "é.b.c", "a\u200b.b.c", "a!.b.c", " a.b.c", "a.b.c\n",
    b64url(b"not json") + "." + b64url(b"{}") + ".AAAA",
    b64url(b"[1, 2]") + "." + b64url(b"{}") + ".AAAA",
    b64url(b"\xff\xfe") + "." + b64url(b"{}") + ".AAAA",
    "A.b.c",  # one base64 character is not a whole byte
    None, 17, 3.5, ["a.b.c"], b"a.b.c",
])
def test_malformed(token: object) -> None:
    assert refusal(token) == "malformed"


def test_bytes_of_a_real_token_are_malformed() -> None:
    keys = keys_v1()
    assert refusal(issue(keys).encode(), keys) == "malformed"


def test_signed_payload_that_is_not_a_json_object_is_malformed() -> None:
    assert refusal(jws(HEADER, b"[1]")) == "malformed"
    assert refusal(jws(HEADER, b"not json")) == "malformed"


def test_oversized_token() -> None:
    keys = keys_v1()
    assert refusal("a" * 5000) == "too_large"
    token = issue(keys)
    head, body, sig = token.split(".")
    assert refusal(f"{head}.{body + 'A' * (5000 - len(token))}.{sig}", keys) == "too_large"


def test_alg_none() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "at+jwt", "kid": "token-signing-v1"}).encode())
    body = b64url(json.dumps(good_claims()).encode())
    assert refusal(f"{header}.{body}.") == "alg"
    assert refusal(f"{header}.{body}.AAAA") == "alg"
    assert refusal(jws(HEADER | {"alg": "None"}, good_claims())) == "alg"
    assert refusal(jws({"typ": "at+jwt", "kid": "token-signing-v1"}, good_claims())) == "alg"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    raw_public = public_bytes(SEED1)
    for secret in (raw_public, b64url(raw_public).encode()):
        forged = jwt.encode(good_claims(), secret, algorithm="HS256",
                            headers={"typ": "at+jwt", "kid": "token-signing-v1"})
        assert refusal(forged) == "alg"
    # The same forgery with a header claiming EdDSA only has an HMAC for a signature.
    head = b64url(json.dumps(HEADER).encode())
    body = b64url(json.dumps(good_claims()).encode())
    mac = hmac.new(raw_public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert refusal(f"{head}.{body}.{b64url(mac)}") == "signature"


def test_pyjwt_itself_refuses_hs256_when_only_eddsa_is_allowed() -> None:
    # The layer under our own header check: the allow-list plus a key object, not bytes.
    public = Ed25519PrivateKey.from_private_bytes(SEED1).public_key()
    forged = jwt.encode({"sub": "admin"}, public_bytes(SEED1), algorithm="HS256")
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(forged, public, algorithms=["EdDSA"])


def test_hs256_keyed_with_the_public_key_and_alg_none_are_refused_as_alg() -> None:
    # Our header check refuses them first; the test above shows PyJWT's allow-list refuses them too.
    forged = jwt.encode(good_claims(), public_bytes(SEED1), algorithm="HS256", headers={"typ": "at+jwt"})
    assert refusal(forged) == "alg"
    header = b64url(json.dumps({"alg": "none"}).encode())
    assert refusal(f"{header}.{b64url(json.dumps(good_claims()).encode())}.") == "alg"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256", "PS256", "Ed25519", "eddsa", "EdDSA ", ""])
def test_other_alg_with_an_eddsa_signature(alg: str) -> None:
    assert refusal(jws(HEADER | {"alg": alg}, good_claims())) == "alg"


@pytest.mark.parametrize("typ", [None, "JWT", "refresh+jwt", "id_token+jwt", "AT+JWT", "application/at+jwt", 1])
def test_typ_must_be_exactly_at_jwt(typ: object) -> None:
    header = {k: v for k, v in HEADER.items() if k != "typ"}
    if typ is not None:
        header["typ"] = typ
    assert refusal(jws(header, good_claims())) == "typ"


@pytest.mark.parametrize("kid", [
    "../../etc/passwd", "token-signing-v1/../x", "", "token-signing-v01", "token-signing-v0", "token-signing-v1\n",
    "token-signing-v1234567", "TOKEN-SIGNING-V1", "token-signing-v\uff11", "token-signing-v\u0661",
    " token-signing-v1", "audit-signing-v1", 17, 1.0, None, ["token-signing-v1"], {"v": 1}, True,
])
def test_kid_format(kid: object) -> None:
    assert refusal(jws(HEADER | {"kid": kid}, good_claims())) == "kid_format"


def test_kid_missing() -> None:
    assert refusal(jws({"alg": "EdDSA", "typ": "at+jwt"}, good_claims())) == "kid_format"


def test_unknown_kid() -> None:
    assert refusal(jws(HEADER | {"kid": "token-signing-v2"}, good_claims(), seed=SEED2)) == "kid_unknown"
    assert refusal(jws(HEADER | {"kid": "token-signing-v999999"}, good_claims())) == "kid_unknown"


@pytest.mark.parametrize("extra", [
    {"crit": ["exp"]}, {"crit": ["b64"]}, {"b64": True}, {"jku": "http://evil/jwks"}, {"x5u": "http://evil"},
    {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(public_bytes(SEED2))}}, {"cty": "JWT"},
])
def test_header_members_we_never_write(extra: dict[str, Any]) -> None:
    assert refusal(jws(HEADER | extra, good_claims())) == "header"


def test_detached_payload_header_is_refused_by_its_members() -> None:
    # "b64": false (RFC 7797) changes what is signed; we read the header ourselves and refuse any
    # member we never write, before PyJWT sees the token.
    assert refusal(jws(HEADER | {"crit": ["b64"], "b64": False}, good_claims())) == "header"


def test_signature() -> None:
    keys = keys_v1()
    token = issue(keys)
    head, _, sig = token.split(".")
    tampered = b64url(json.dumps(good_claims(sub="admin")).encode())
    assert refusal(f"{head}.{tampered}.{sig}", keys) == "signature"
    assert refusal(jws(HEADER, good_claims(), seed=SEED2), keys) == "signature"
    assert refusal(f"{head}.{token.split('.')[1]}.", keys) == "signature"
    assert refusal(f"{head}.{token.split('.')[1]}.{sig[:80]}", keys) == "signature"  # 60 of its 64 bytes


def test_expiry_against_the_injected_clock() -> None:
    keys = keys_v1()
    token = issue(keys)
    exp = int(NOW) + 900
    assert verify(token, keys, now=exp - 0.5).expires_at == exp
    assert refusal(token, keys, now=exp) == "expired"
    assert verify(token, keys, now=exp + 29, leeway_s=30).subject == "user-42"
    assert refusal(token, keys, now=exp + 30, leeway_s=30) == "expired"
    assert refusal(token, keys, now=NOW + 10**9) == "expired"


def test_not_yet_valid() -> None:
    keys = keys_v1()
    token = issue(keys)
    assert refusal(token, keys, now=NOW - 1) == "not_yet_valid"
    assert verify(token, keys, now=NOW - 5, leeway_s=5).subject == "user-42"
    assert refusal(token, keys, now=NOW - 6, leeway_s=5) == "not_yet_valid"
    assert refusal(jws(HEADER, good_claims(nbf=int(NOW) + 60))) == "not_yet_valid"


def test_iat_in_the_future_beyond_leeway() -> None:
    ahead = jws(HEADER, good_claims(iat=int(NOW) + 100, nbf=int(NOW) - 10))
    assert refusal(ahead, leeway_s=30) == "not_yet_valid"
    assert verify(jws(HEADER, good_claims(iat=int(NOW) + 20, nbf=int(NOW) - 10)), keys_v1(), leeway_s=30)


def test_issuer_and_audience() -> None:
    keys = keys_v1()
    assert refusal(issue(keys, issuer="evil-authn"), keys) == "issuer"
    assert refusal(jws(HEADER, good_claims(iss=["authn"]))) == "issuer"
    assert refusal(issue(keys, audience="audit"), keys) == "audience"
    assert refusal(jws(HEADER, good_claims(aud=["audit", "authz"]))) == "audience"
    # Strict: one audience per token, so even a list that names us is refused.
    assert refusal(jws(HEADER, good_claims(aud=["storage", "audit"]))) == "audience"
    assert refusal(jws(HEADER, good_claims(aud=["storage"]))) == "audience"


@pytest.mark.parametrize("claim", REQUIRED)
def test_each_required_claim(claim: str) -> None:
    claims = good_claims()
    del claims[claim]
    assert refusal(jws(HEADER, claims)) == "claims_missing"
    assert refusal(jws(HEADER, good_claims(**{claim: None}))) == "claims_missing"


@pytest.mark.parametrize("changes", [
    {"exp": str(int(NOW) + 900)}, {"exp": NOW + 900.5}, {"iat": True}, {"auth_time": "yesterday"},
    {"nbf": [int(NOW)]}, {"sub": 42}, {"jti": 7}, {"sid": {"a": 1}}, {"amr": "pwd"}, {"amr": [1]},
    {"cnf": PRESENTER}, {"cnf": {"x5t#S256": PRESENTER}}, {"cnf": {"ckt": PRESENTER.upper()}},
    {"cnf": {"ckt": PRESENTER + "\n"}},
])
def test_claim_types(changes: dict[str, Any]) -> None:
    assert refusal(jws(HEADER, good_claims(**changes))) == "claims_invalid"


def test_token_use() -> None:
    assert refusal(jws(HEADER, good_claims(token_use="refresh"))) == "token_use"
    assert refusal(jws(HEADER, good_claims(token_use=["access"]))) == "token_use"


def test_wrong_presenter() -> None:
    keys = keys_v1()
    token = issue(keys)
    assert refusal(token, keys, presenter=hashlib.sha256(b"another peer").hexdigest()) == "wrong_presenter"
    assert refusal(token, keys, presenter=PRESENTER.upper()) == "wrong_presenter"
    assert refusal(token, keys, presenter="é") == "wrong_presenter"


def test_refusals_never_carry_the_token_or_its_claims() -> None:
    keys = keys_v1()
    secret = "planted-secret-9f1c2e"
    cases = [
        (issue(keys, subject=secret), {"presenter": "0" * 64}),
        (issue(keys, subject=secret), {"now": NOW + 10**6}),
        (jws(HEADER | {"kid": secret}, good_claims(sub=secret)), {}),
        (jws(HEADER | {"kid": 17, "x": secret}, good_claims(sub=secret)), {}),
        (jws(HEADER, good_claims(sub=secret, exp=secret)), {}),
        (b64url(json.dumps({"alg": secret}).encode()) + ".e30.", {}),
        (jws(HEADER, b'{"sub": "' + secret.encode() + b'", '), {}),
        (secret, {}),
    ]
    for token, overrides in cases:
        with pytest.raises(InvalidToken) as caught:
            verify(token, keys, **overrides)
        exc = caught.value
        assert exc.reason in REASONS
        for text in (str(exc), repr(exc), str(exc.args)):
            assert secret not in text and token not in text
        assert exc.__cause__ is None


def test_invalid_token_takes_only_known_reasons() -> None:
    with pytest.raises(ValueError):
        InvalidToken("the token was eyJhbGciOi...")


# Refresh tokens.

def test_refresh_round_trip() -> None:
    key = digest_key(SEED1)
    token, digest = new_refresh(7, key)
    version, raw = parse_refresh(token)
    assert token.startswith("rt.7.") and len(token) == len("rt.7.") + 43
    assert version == 7 and len(raw) == 32 and token == f"rt.7.{b64url(raw)}"
    assert refresh_digest(raw, key) == digest == hmac.new(key, raw, hashlib.sha256).digest()
    assert lookup_digest(token, {7: key}) == (7, digest)
    check_digest(digest, refresh_digest(raw, key))
    assert new_refresh(7, key)[0] != token


def test_digest_key_is_hkdf_with_its_own_label() -> None:
    # RFC 5869 by hand: extract with the default all-zero salt, then one expand block.
    prk = hmac.new(bytes(32), SEED1, hashlib.sha256).digest()
    assert digest_key(SEED1) == hmac.new(prk, DIGEST_INFO + b"\x01", hashlib.sha256).digest()
    assert digest_key(bytearray(SEED1)) == digest_key(SEED1) != digest_key(SEED2)
    assert digest_key(SEED1) != SEED1
    with pytest.raises(ValueError):
        digest_key(SEED1[:16])


def test_refresh_digest_differs_with_another_key() -> None:
    token, digest = new_refresh(1, digest_key(SEED1))
    _, raw = parse_refresh(token)
    assert refresh_digest(raw, digest_key(SEED2)) != digest
    with pytest.raises(InvalidToken) as caught:
        check_digest(digest, refresh_digest(raw, digest_key(SEED2)))
    assert caught.value.reason == "digest_mismatch"
    with pytest.raises(InvalidToken) as caught:
        lookup_digest(token, {2: digest_key(SEED2)})
    assert caught.value.reason == "kid_unknown"


GOOD_RAW = b64url(bytes(range(32)))


@pytest.mark.parametrize("token", [
    "", "rt", "rt.", "rt.1", "rt.1.", f"rt.1.{GOOD_RAW[:-1]}", f"rt.1.{GOOD_RAW}A", f"rt.1.{GOOD_RAW}=",
    f"rt.01.{GOOD_RAW}", f"rt.0.{GOOD_RAW}", f"rt.1000000.{GOOD_RAW}", f"rt.-1.{GOOD_RAW}", f"rt.+1.{GOOD_RAW}",
    f"RT.1.{GOOD_RAW}", f"rt.1.{GOOD_RAW}\n", f" rt.1.{GOOD_RAW}", f"rt.1.2.{GOOD_RAW}", f"rt..{GOOD_RAW}",
    f"rt.\u0661.{GOOD_RAW}", f"rt.\uff11.{GOOD_RAW}", f"rt.1.{GOOD_RAW[:-2]}+/", f"rt.1.{GOOD_RAW[:-1]}x",
    f"rt.1.{GOOD_RAW[:-1]}\u00e9", f"at.1.{GOOD_RAW}", "rt.1." + "A" * 200, None, 1, b"rt.1.x",
    f"rt.1.{GOOD_RAW}".encode(),
])
def test_malformed_refresh(token: object) -> None:
    with pytest.raises(InvalidToken) as caught:
        parse_refresh(token)
    assert caught.value.reason == "malformed"
    with pytest.raises(InvalidToken):
        lookup_digest(token, {1: digest_key(SEED1)})


def test_refresh_version_range() -> None:
    assert parse_refresh(f"rt.999999.{GOOD_RAW}")[0] == 999999
    for version in (0, 1_000_000, -1, True, 1.0):
        with pytest.raises(ValueError):
            new_refresh(version, digest_key(SEED1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        new_refresh(1, b"short key")


# Fuzzing: nothing but InvalidToken ever escapes.

_JWS_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=400, deadline=None, database=None)
@given(st.text(max_size=200) | st.text(alphabet=_JWS_CHARS, max_size=200) | st.binary(max_size=64))
def test_random_input_only_ever_raises_invalid_token(text: object) -> None:
    keys = keys_v1()
    with pytest.raises(InvalidToken):
        verify(text, keys)
    with pytest.raises(InvalidToken):
        parse_refresh(text)
    with pytest.raises(InvalidToken):
        parse_refresh("rt." + str(text))


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku"]) | st.text(max_size=4), _json,
                       max_size=5),
       st.dictionaries(st.sampled_from(REQUIRED) | st.text(max_size=4), _json, max_size=12))
def test_signed_random_headers_and_claims_only_ever_raise_invalid_token(
        header: dict[str, Any], claims: dict[str, Any]) -> None:
    for candidate in (header, HEADER | header):
        for payload in (claims, good_claims() | claims):
            try:
                verify(jws(candidate, payload), keys_v1())
            except InvalidToken:
                pass


def test_a_cached_token_is_checked_again_for_everything_that_depends_on_the_call() -> None:
    keys, cache = keys_v1(), VerifiedTokens(capacity=2)
    token = issue(keys)
    first = verify_access(token, keys, issuer=ISSUER, audience=AUDIENCE, presenter=PRESENTER, now=NOW, cache=cache)
    assert len(cache) == 1
    assert verify_access(token, keys, issuer=ISSUER, audience=AUDIENCE, presenter=PRESENTER, now=NOW,
                         cache=cache) == first
    for change, reason in (({"presenter": "0" * 64}, "wrong_presenter"), ({"audience": "other"}, "audience"),
                           ({"issuer": "other"}, "issuer"), ({"now": NOW + 10_000}, "expired"),
                           ({"now": NOW - 10_000}, "not_yet_valid")):
        call = {"issuer": ISSUER, "audience": AUDIENCE, "presenter": PRESENTER, "now": NOW} | change
        with pytest.raises(InvalidToken) as caught:
            verify_access(token, keys, cache=cache, **call)  # type: ignore[arg-type]
        assert caught.value.reason == reason
    # A tampered token is a different string: never a cache hit. The first character of the signature
    # is changed (all six of its bits count; the last character of base64url carries only two, so
    # rewriting the tail could leave the signature as it was, once in 256 keys).
    head, body, sig = token.split(".")
    tampered = ("B" if sig[0] == "A" else "A") + sig[1:]
    with pytest.raises(InvalidToken):
        verify_access(f"{head}.{body}.{tampered}", keys, issuer=ISSUER, audience=AUDIENCE, presenter=PRESENTER,
                      now=NOW, cache=cache)
    # Bounded: the oldest leaves when full.
    for sub in ("b", "c"):
        verify_access(issue(keys, subject=sub), keys, issuer=ISSUER, audience=AUDIENCE, presenter=PRESENTER, now=NOW,
                      cache=cache)
    assert len(cache) == 2 and cache.get(token) is None

"""Passkeys: round trips with a software authenticator, every refusal reason (one per library
message the module maps), counters and clones, bounded and hostile input, and fuzzing that only
ever yields PasskeyRefused."""

from __future__ import annotations

import dataclasses
import functools
import json
import traceback
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from webauthn import verify_authentication_response, verify_registration_response
from webauthn.helpers.exceptions import InvalidAuthenticationResponse

from bench.webauthn_soft import BS, UP, UV, SoftAuthenticator, b64url, unb64url
from services.authn.passkeys import (
    MAX_RESPONSE_BYTES,
    REASONS,
    PasskeyRefused,
    RelyingParty,
    StoredCredential,
    begin_login,
    begin_registration,
    credential_id_of,
    finish_login,
    finish_registration,
)

RP = RelyingParty(id="companion.local", name="Companion",
                  origins=("https://companion.local", "https://app.companion.local"))
ORIGIN = RP.origins[0]
MARKER = "Zq9-planted-marker"


def refused(call: Callable[[], object]) -> str:
    """Run ``call``; it must raise PasskeyRefused whose text is its reason and that hides its cause."""
    with pytest.raises(PasskeyRefused) as caught:
        call()
    exc = caught.value
    assert exc.reason in REASONS and str(exc) == exc.reason and exc.args == (exc.reason,)
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)
    reason: str = exc.reason
    return reason


def registration(exclude: tuple[bytes, ...] = ()) -> tuple[str, bytes]:
    begun: tuple[str, bytes] = begin_registration(RP, user_id=b"user-1", username="alice", exclude=list(exclude))
    return begun


def enrol() -> tuple[SoftAuthenticator, StoredCredential]:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    return auth, finish_registration(RP, auth.register(options), challenge)


def login(auth: SoftAuthenticator, stored: StoredCredential, **knobs: Any) -> int:
    options, challenge = begin_login(RP, allow=[stored.credential_id])
    count: int = finish_login(RP, auth.login(options, **knobs), challenge, stored)
    return count


def edit(response_json: str, change: Callable[[dict[str, Any]], object]) -> str:
    data = json.loads(response_json)
    change(data)
    return json.dumps(data)


def edit_attestation(response_json: str, **fields: object) -> str:
    """Rewrite members of the CBOR attestation object (fmt, attStmt, authData)."""
    def change(data: dict[str, Any]) -> None:
        decoded = cbor2.loads(unb64url(data["response"]["attestationObject"]))
        decoded.update(fields)
        data["response"]["attestationObject"] = b64url(cbor2.dumps(decoded))
    return edit(response_json, change)


def cose_p384() -> bytes:
    numbers = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    return cbor2.dumps({1: 2, 3: -7, -1: 2, -2: numbers.x.to_bytes(48, "big"), -3: numbers.y.to_bytes(48, "big")})


def test_options_require_user_verification_and_carry_the_injected_challenge() -> None:
    options_json, challenge = begin_registration(RP, user_id=b"user-1", username="alice", exclude=[b"old"],
                                                 entropy=lambda n: b"\x07" * n)
    options = json.loads(options_json)
    assert challenge == b"\x07" * 32 and unb64url(options["challenge"]) == challenge
    assert options["rp"] == {"id": RP.id, "name": RP.name} and unb64url(options["user"]["id"]) == b"user-1"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["authenticatorSelection"]["residentKey"] == "preferred"
    assert options["attestation"] == "none" and [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7]
    assert [unb64url(c["id"]) for c in options["excludeCredentials"]] == [b"old"]
    request = json.loads(begin_login(RP, allow=[])[0])
    assert request["rpId"] == RP.id and request["userVerification"] == "required"
    assert request["allowCredentials"] == []


@pytest.mark.parametrize("call", [
    lambda: begin_registration(RP, user_id=b"", username="alice", exclude=[]),
    lambda: begin_registration(RP, user_id=bytes(65), username="alice", exclude=[]),
    lambda: begin_registration(RP, user_id=b"u", username="", exclude=[]),
    lambda: begin_login(RP, allow=[], entropy=lambda n: b"short"),
    lambda: finish_registration(RP, "{}", b""),
    lambda: RelyingParty(id="companion.local", name="C", origins="https://companion.local"),  # type: ignore[arg-type, unused-ignore]
    lambda: StoredCredential(credential_id=b"c", public_key=b"k", sign_count=-1, transports=(), aaguid=""),
])
def test_caller_mistakes_are_value_errors(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


def test_registration_then_logins_with_a_rising_counter() -> None:
    auth, stored = enrol()
    assert stored.credential_id == auth.credential_id and stored.sign_count == 0
    assert stored.transports == ("internal", "hybrid") and stored.aaguid == "00000000-0000-0000-0000-000000000000"
    assert stored.public_key == auth.cose_key()
    with pytest.raises(ValueError, match="excluded"):
        auth.register(registration(exclude=(stored.credential_id,))[0])
    assert login(auth, stored) == 1
    stored = dataclasses.replace(stored, sign_count=1)
    assert login(auth, stored, origin=RP.origins[1]) == 2  # any allowed origin
    options, challenge = begin_login(RP, allow=[])  # discoverable: the response names the credential
    response = auth.login(options)
    assert credential_id_of(response) == stored.credential_id
    assert json.loads(response)["response"]["userHandle"] == b64url(b"user-1")
    assert finish_login(RP, response, challenge, dataclasses.replace(stored, sign_count=2)) == 3


def test_packed_self_attestation_and_an_ed25519_key_are_accepted() -> None:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    assert finish_registration(RP, auth.register(options, attestation="packed"), challenge).sign_count == 0
    ed25519 = cbor2.dumps({1: 1, 3: -8, -1: 6, -2: bytes(range(32))})
    assert finish_registration(RP, auth.register(options, cose_key=ed25519), challenge).public_key == ed25519


def test_a_cloned_authenticator_is_refused_counter_only_once_its_signature_verifies() -> None:
    auth, stored = enrol()
    clone = auth.clone()
    stored = dataclasses.replace(stored, sign_count=login(auth, stored))
    stored = dataclasses.replace(stored, sign_count=login(auth, stored))
    assert stored.sign_count == 2
    assert refused(lambda: login(clone, stored)) == "counter"  # backwards: 1 after 2
    assert refused(lambda: login(auth, stored, counter=2)) == "counter"  # equal and non-zero
    assert refused(lambda: login(auth, stored, counter=0)) == "counter"  # zero after non-zero
    assert refused(lambda: login(clone, stored, tamper_signature=True)) == "signature"
    assert login(auth, stored, counter=900) == 900  # a jump forwards is fine


def test_an_authenticator_without_a_counter_stays_at_zero() -> None:
    auth, stored = enrol()
    assert login(auth, stored, counter=0) == login(auth, stored, counter=0) == 0


def test_the_library_checks_the_counter_before_the_signature() -> None:
    """Why finish_login hands the library a count of 0: a forgery would otherwise read as a clone."""
    auth, stored = enrol()
    options, challenge = begin_login(RP, allow=[])
    forged = auth.login(options, counter=1, tamper_signature=True)
    with pytest.raises(InvalidAuthenticationResponse, match="sign count"):
        verify_authentication_response(credential=forged, expected_challenge=challenge, expected_rp_id=RP.id,
                                       expected_origin=ORIGIN, credential_public_key=stored.public_key,
                                       credential_current_sign_count=5)
    assert refused(lambda: finish_login(RP, forged, challenge, dataclasses.replace(stored, sign_count=5))) \
        == "signature"


def test_the_library_accepts_a_one_byte_public_key_that_registration_refuses() -> None:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    response = auth.register(options, cose_key=b"\x04")
    verified = verify_registration_response(credential=response, expected_challenge=challenge,
                                            expected_rp_id=RP.id, expected_origin=ORIGIN)
    assert verified.credential_public_key == b"\x04"
    assert refused(lambda: finish_registration(RP, response, challenge)) == "malformed"


def sig_of(response: str) -> Any:
    return cbor2.loads(unb64url(json.loads(response)["response"]["attestationObject"]))["attStmt"]["sig"]


# Each row: the knobs for SoftAuthenticator.register, an edit of its response, the reason.
REGISTRATION_ATTACKS: list[tuple[dict[str, Any], Callable[[str], str], str]] = [
    ({"origin": "https://evil.example"}, str, "origin"),
    ({"cross_origin": True}, str, "origin"),
    ({"rp_id": "evil.example"}, str, "rp_id"),
    ({"user_verified": False}, str, "user_verification"),
    ({"user_present": False}, str, "user_presence"),
    ({"kind": "webauthn.get"}, str, "type"),
    ({}, lambda r: edit(r, lambda d: d.update(type="password")), "type"),
    ({}, lambda r: edit_attestation(r, attStmt={"sig": b"x"}), "attestation"),
    ({}, lambda r: edit_attestation(r, fmt="fido-u2f"), "attestation"),
    ({}, lambda r: edit_attestation(r, fmt=7), "attestation"),
    ({"attestation": "packed"}, lambda r: edit_attestation(r, attStmt={"alg": -7}), "attestation"),
    ({"attestation": "packed"}, lambda r: edit_attestation(r, attStmt={"alg": -8, "sig": sig_of(r)}), "attestation"),
    ({"attestation": "packed"}, lambda r: edit_attestation(r, attStmt={"alg": -7, "sig": b"0" * 70}), "attestation"),
    ({"attestation": "packed"}, lambda r: edit_attestation(r, attStmt={"alg": -7, "sig": b"s", "x5c": [b"c"]}),
     "attestation"),
    ({"cose_key": cbor2.dumps({1: 2, 3: -257, -1: 1, -2: b"x" * 32, -3: b"y" * 32})}, str, "algorithm"),
    ({"cose_key": cose_p384()}, str, "algorithm"),
    ({"cose_key": cbor2.dumps({1: 2, 3: -7, -1: 1, -2: b"\x01" * 32, -3: b"\x02" * 32})}, str, "malformed"),
    ({"cose_key": cbor2.dumps({1: 2, 3: -7})}, str, "malformed"),
    ({"flags": UP | UV | BS}, str, "malformed"),  # backed up but not backup-eligible
    ({}, lambda r: edit_attestation(r, authData=b"\x00" * 36), "malformed"),
    ({}, lambda r: edit(r, lambda d: d.update(id=b64url(b"other"), rawId=b64url(b"other"))), "malformed"),
    ({}, lambda r: edit(r, lambda d: d.update(id=b64url(b"other"))), "malformed"),
]


@pytest.mark.parametrize(("knobs", "change", "reason"), REGISTRATION_ATTACKS)
def test_registration_refusals(knobs: dict[str, Any], change: Callable[[str], str], reason: str) -> None:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    response = change(auth.register(options, **knobs))
    assert refused(lambda: finish_registration(RP, response, challenge)) == reason


def test_registration_refuses_another_challenge_and_an_overlong_credential_id() -> None:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    assert refused(lambda: finish_registration(RP, auth.register(options), registration()[1])) == "challenge"
    auth.credential_id = bytes(1024)
    assert refused(lambda: finish_registration(RP, auth.register(options), challenge)) == "malformed"


@pytest.mark.parametrize(("knobs", "reason"), [
    ({"origin": "https://evil.example"}, "origin"),
    ({"cross_origin": True}, "origin"),
    ({"rp_id": "evil.example"}, "rp_id"),
    ({"user_verified": False}, "user_verification"),
    ({"user_present": False}, "user_presence"),
    ({"kind": "webauthn.create"}, "type"),
    ({"tamper_signature": True}, "signature"),
    ({"flags": UP | UV | BS}, "malformed"),
])
def test_login_refusals(knobs: dict[str, Any], reason: str) -> None:
    auth, stored = enrol()
    assert refused(lambda: login(auth, stored, **knobs)) == reason


def test_login_refuses_another_challenge_another_credential_and_a_bad_stored_key() -> None:
    auth, stored = enrol()
    options, challenge = begin_login(RP, allow=[])
    response = auth.login(options)
    assert refused(lambda: finish_login(RP, response, begin_login(RP, allow=[])[1], stored)) == "challenge"
    _, other = enrol()
    assert refused(lambda: finish_login(RP, response, challenge, other)) == "unknown_credential"
    assert refused(lambda: finish_login(RP, edit(response, lambda d: d.update(type="x")), challenge, stored)) == "type"
    with pytest.raises(ValueError, match="stored credential"):
        finish_login(RP, response, challenge, dataclasses.replace(stored, public_key=b"\x04"))


@functools.cache
def samples() -> tuple[str, bytes, str, bytes, StoredCredential]:
    """A valid registration response and a valid login response, with their challenges."""
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, reg_challenge = registration()
    registered = auth.register(options)
    stored = finish_registration(RP, registered, reg_challenge)
    options, login_challenge = begin_login(RP, allow=[])
    return registered, reg_challenge, auth.login(options), login_challenge, stored


def every_entry_point(response: object) -> list[Callable[[], object]]:
    _, reg_challenge, _, login_challenge, stored = samples()
    return [lambda: finish_registration(RP, response, reg_challenge),  # type: ignore[arg-type, unused-ignore]
            lambda: finish_login(RP, response, login_challenge, stored),  # type: ignore[arg-type, unused-ignore]
            lambda: credential_id_of(response)]  # type: ignore[arg-type, unused-ignore]


def junk() -> list[object]:
    registered, _, logged_in, _, _ = samples()
    padded = logged_in[:-1] + " " * (MAX_RESPONSE_BYTES - len(logged_in)) + "}"
    return [
        "", "not json", "[]", "null", "1", '"s"', "{}", "[" * 60_000, '{"a":' * 20_000, "9" * 5000, "\ud800",
        None, 7, b"{}", {"id": "x"},
        padded[:-1] + " }",  # one byte over the limit
        logged_in[:-1] + ', "pad": "' + "\u20ac" * 30_000 + '"}',  # within the limit in characters, not bytes
        edit(logged_in, lambda d: d.update(id=5)), edit(logged_in, lambda d: d.update(rawId=None)),
        edit(logged_in, lambda d: d.update(response="x")), edit(logged_in, lambda d: d.update(id="bad")),
        edit(logged_in, lambda d: d["response"].update(clientDataJSON="!!!", authenticatorData="\u00e9")),
        edit(logged_in, lambda d: d["response"].update(userHandle=5, signature=[])),
        edit(registered, lambda d: d["response"].update(attestationObject=b64url(b"\x81" * 30_000 + b"\x00"))),
        edit(registered, lambda d: d["response"].update(attestationObject=b64url(b"\x5b" + b"\xff" * 8))),
    ]


@pytest.mark.parametrize("index", range(len(junk())))
def test_junk_is_refused_malformed_without_quoting_it(index: int) -> None:
    response = junk()[index]
    for call in every_entry_point(response):
        assert refused(call) == "malformed"


def test_the_size_limit_counts_bytes_and_admits_exactly_the_limit() -> None:
    _, _, logged_in, challenge, stored = samples()
    padded = logged_in[:-1] + " " * (MAX_RESPONSE_BYTES - len(logged_in)) + "}"
    assert len(padded.encode()) == MAX_RESPONSE_BYTES
    assert finish_login(RP, padded, challenge, stored) == 1


def test_client_data_never_reaches_the_message_or_the_traceback() -> None:
    auth = SoftAuthenticator(RP.id, ORIGIN)
    options, challenge = registration()
    with pytest.raises(PasskeyRefused) as caught:
        finish_registration(RP, auth.register(options, origin=f"https://{MARKER}.example"), challenge)
    assert MARKER not in "".join(traceback.format_exception(caught.value)) + repr(caught.value)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(), st.binary(), st.binary().map(lambda b: b.decode("latin-1")), JSON.map(json.dumps)))
def test_random_input_only_ever_raises_passkey_refused(response: object) -> None:
    for call in every_entry_point(response):
        assert refused(call) == "malformed"


BINARY_FIELDS = ["rawId", "response.clientDataJSON", "response.attestationObject", "response.authenticatorData",
                 "response.signature", "response.userHandle"]
FIELDS = [*BINARY_FIELDS, "id", "type", "response", "response.transports", "authenticatorAttachment"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.sampled_from(FIELDS), st.one_of(JSON, st.binary(max_size=300).map(b64url)), st.integers(0, 10_000))
def test_mutated_responses_are_accepted_or_refused_never_crash(field: str, value: Any, flip: int) -> None:
    registered, reg_challenge, logged_in, login_challenge, stored = samples()
    *path, key = field.split(".")

    def change(data: dict[str, Any]) -> None:
        target = data["response"] if path else data
        if field in BINARY_FIELDS and key in target and flip % 2:
            # Half the time flip one bit of a binary member instead of replacing it.
            raw = bytearray(unb64url(target[key]))
            raw[flip % len(raw)] ^= 1 << (flip % 8)
            target[key] = b64url(bytes(raw))
        else:
            target[key] = value

    calls: list[Callable[[], object]] = [
        lambda: finish_registration(RP, edit(registered, change), reg_challenge),
        lambda: finish_login(RP, edit(logged_in, change), login_challenge, stored),
        lambda: credential_id_of(edit(logged_in, change))]
    for call in calls:
        try:
            call()
        except PasskeyRefused as exc:
            assert str(exc) == exc.reason and exc.reason in REASONS

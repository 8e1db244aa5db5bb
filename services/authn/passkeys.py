"""Passkeys (WebAuthn): the pure ceremony core, options out and verified responses in.

No I/O, clock or mesh. A ceremony is ``begin_*`` (options JSON for the browser or platform, and
the challenge, which the caller keeps for about :data:`CEREMONY_TIMEOUT_MS` and uses once) then
``finish_*`` with the response JSON and that challenge. py_webauthn (3.x) makes every check; this
module sets the policy and turns each refusal into :class:`PasskeyRefused`, whose ``reason`` is a
short audit code and whose message is that code alone. The library's messages quote client data
(an origin, a type), so they are dropped, cause included, and reach no log line or traceback.

Policy: user verification required, resident key preferred, EdDSA (Ed25519) or ES256 (P-256 only)
keys, attestation "none" requested. A conforming client then sends "none", or "packed" self
attestation left as is (WebAuthn L2 5.1.3 step 20: it has no certificate, so it reveals nothing);
both are accepted and any other statement is refused, as we hold no attestation roots (and the
library passes any certificate chain when given none). Cross-origin (iframe) ceremonies, responses
over :data:`MAX_RESPONSE_BYTES` (refused unparsed) and credential ids over 1023 bytes are refused.

Counters: the library refuses a count that does not rise while either count is non-zero, but
before checking the signature, so a forgery naming a known credential id (ids are not secret)
would pass for a clone. :func:`finish_login` gives it a stored count of 0, disabling that check,
and applies the same rule once all else has verified: ``"counter"`` means a validly signed clone.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import (
    bytes_to_base64url,
    decode_credential_public_key,
    decoded_public_key_to_cryptography,
    parse_attestation_object,
    parse_authentication_credential_json,
    parse_client_data_json,
    parse_registration_credential_json,
    structs,
)
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import WebAuthnException

Reason = Literal[
    "malformed", "type", "challenge", "origin", "rp_id", "user_presence", "user_verification",
    "signature", "counter", "attestation", "algorithm", "unknown_credential",
]
#: Every reason code, for audit schemas.
REASONS: Final[tuple[str, ...]] = get_args(Reason)

MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_CREDENTIAL_ID_BYTES: Final = 1023
MAX_USER_ID_BYTES: Final = 64
CHALLENGE_BYTES: Final = 32
MIN_CHALLENGE_BYTES: Final = 16
# WebAuthn recommends 5 to 10 minutes when user verification is required (a PIN may be typed).
CEREMONY_TIMEOUT_MS: Final = 300_000
ALGORITHMS: Final = (COSEAlgorithmIdentifier.EDDSA, COSEAlgorithmIdentifier.ECDSA_SHA_256)

# py_webauthn 3 raises one exception class per ceremony and tells failures apart only by message,
# so the reason is read from the message's start; tests/test_authn_passkeys.py provokes every row,
# so a library upgrade that rewords one fails there. Anything unlisted is "malformed".
_LIBRARY_REASONS: Final[tuple[tuple[str, Reason], ...]] = (
    ("Credential had unexpected type", "type"),
    ("Unexpected client data type", "type"),
    ("Client data challenge was not expected challenge", "challenge"),
    ("Unexpected client data origin", "origin"),
    ("Unexpected RP ID hash", "rp_id"),
    ("User presence was required", "user_presence"),
    ("User was not present", "user_presence"),
    ("User verification is required", "user_verification"),
    ("Could not verify authentication signature", "signature"),
    ("Unsupported credential public key alg", "algorithm"),
    ("None attestation had unexpected attestation statement", "attestation"),
    ("Attestation statement was missing", "attestation"),
    ("Could not verify attestation statement signature", "attestation"),
    ("Credential public key alg", "attestation"),
)


class PasskeyRefused(Exception):
    """A response was refused. ``reason`` is one of :data:`REASONS`; ``str()`` is that code only."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


@dataclass(frozen=True)
class RelyingParty:
    """Who we are: the RP id the credentials are scoped to, a display name, the allowed origins."""

    id: str
    name: str
    origins: tuple[str, ...]

    def __post_init__(self) -> None:
        # A bare string here would be compared character by character; insist on the tuple.
        if not self.id or not self.name or not isinstance(self.origins, tuple) or not self.origins \
                or not all(isinstance(o, str) and o for o in self.origins):
            raise ValueError("relying party: id, name and a non-empty tuple of origins are required")


@dataclass(frozen=True)
class StoredCredential:
    """What the caller keeps per passkey: id, COSE public key, last sign count, transports, AAGUID."""

    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str

    def __post_init__(self) -> None:
        if not self.credential_id or not self.public_key or not 0 <= self.sign_count < 2**32:
            raise ValueError("stored credential: id and key must be non-empty, sign_count a uint32")


def begin_registration(rp: RelyingParty, *, user_id: bytes, username: str, exclude: list[bytes],
                       entropy: Callable[[int], bytes] = secrets.token_bytes) -> tuple[str, bytes]:
    """Options JSON for ``navigator.credentials.create()`` and the challenge they carry.

    ``user_id`` is the opaque user handle (1 to 64 bytes, never a name); ``exclude`` lists the
    account's existing credential ids so one authenticator is not enrolled twice. Raises
    ``ValueError`` for a bad ``user_id`` or ``username`` (caller bugs, not refusals).
    """
    if not isinstance(user_id, bytes) or not 1 <= len(user_id) <= MAX_USER_ID_BYTES:
        raise ValueError(f"user_id must be 1 to {MAX_USER_ID_BYTES} bytes")
    challenge = entropy(CHALLENGE_BYTES)
    _check_challenge(challenge)
    options = generate_registration_options(
        rp_id=rp.id, rp_name=rp.name, user_id=user_id, user_name=username, challenge=challenge,
        timeout=CEREMONY_TIMEOUT_MS, attestation=structs.AttestationConveyancePreference.NONE,
        authenticator_selection=structs.AuthenticatorSelectionCriteria(
            resident_key=structs.ResidentKeyRequirement.PREFERRED,
            user_verification=structs.UserVerificationRequirement.REQUIRED),
        exclude_credentials=[structs.PublicKeyCredentialDescriptor(id=c) for c in exclude],
        supported_pub_key_algs=list(ALGORITHMS))
    return options_to_json(options), challenge


def finish_registration(rp: RelyingParty, response_json: str, challenge: bytes) -> StoredCredential:
    """Verify a registration response against ``challenge`` and return the credential to store.

    Raises :class:`PasskeyRefused` for every failure. The caller must still refuse a credential id
    it already holds (for any account) and must forget ``challenge`` whatever the outcome.
    """
    _check_challenge(challenge)
    data = _load(response_json)
    with _refusing():
        credential = parse_registration_credential_json(data)
        statement = parse_attestation_object(credential.response.attestation_object)
    if not (statement.fmt == structs.AttestationFormat.NONE
            or (statement.fmt == structs.AttestationFormat.PACKED and statement.att_stmt.x5c is None)):
        raise PasskeyRefused("attestation")
    with _refusing():
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp.id,
            expected_origin=list(rp.origins), require_user_verification=True,
            supported_pub_key_algs=list(ALGORITHMS))
        cross_origin = parse_client_data_json(credential.response.client_data_json).cross_origin
    if cross_origin:
        raise PasskeyRefused("origin")
    # The library checks id against rawId but not rawId against the attested id it returns.
    if verified.credential_id != credential.raw_id or len(verified.credential_id) > MAX_CREDENTIAL_ID_BYTES:
        raise PasskeyRefused("malformed")
    # The library accepts a public key of one CBOR byte 0x04 as an empty "uncompressed point"
    # (a U2F shim), and does not tie ES256 to P-256: refuse at enrolment what could never verify.
    _check_public_key(verified.credential_public_key)
    transports = tuple(t.value for t in credential.response.transports or ())
    return StoredCredential(credential_id=verified.credential_id, public_key=verified.credential_public_key,
                            sign_count=verified.sign_count, transports=transports, aaguid=verified.aaguid)


def begin_login(rp: RelyingParty, *, allow: list[bytes],
                entropy: Callable[[int], bytes] = secrets.token_bytes) -> tuple[str, bytes]:
    """Options JSON for ``navigator.credentials.get()`` and their challenge. An empty ``allow``
    lets the platform offer any discoverable credential; then :func:`credential_id_of` names it."""
    challenge = entropy(CHALLENGE_BYTES)
    _check_challenge(challenge)
    options = generate_authentication_options(
        rp_id=rp.id, challenge=challenge, timeout=CEREMONY_TIMEOUT_MS,
        allow_credentials=[structs.PublicKeyCredentialDescriptor(id=c) for c in allow],
        user_verification=structs.UserVerificationRequirement.REQUIRED)
    return options_to_json(options), challenge


def credential_id_of(response_json: str) -> bytes:
    """The credential id a login response names (to find its :class:`StoredCredential`); nothing
    is verified but the shape. Raises :class:`PasskeyRefused` ``"malformed"`` for anything else."""
    try:
        with _refusing():
            credential = parse_authentication_credential_json(_load(response_json))
    except PasskeyRefused:
        # Only the shape is judged here, so every refusal (a wrong "type" too) is "malformed".
        raise PasskeyRefused("malformed") from None
    raw_id = credential.raw_id
    if not raw_id or len(raw_id) > MAX_CREDENTIAL_ID_BYTES or bytes_to_base64url(raw_id) != credential.id:
        raise PasskeyRefused("malformed")
    return raw_id


def finish_login(rp: RelyingParty, response_json: str, challenge: bytes, credential: StoredCredential) -> int:
    """Verify a login response for ``credential`` and return the new sign count to store.

    Raises :class:`PasskeyRefused`; ``"counter"`` (a cloned authenticator: alert on it) when the
    signature is valid but the count did not go up while either count is non-zero (authenticators
    that keep no counter report 0 forever, which is allowed). Raises ``ValueError`` if the stored
    public key is unusable: that is our data gone bad, not the client's fault.
    """
    _check_challenge(challenge)
    try:
        _check_public_key(credential.public_key)
    except PasskeyRefused:
        raise ValueError("stored credential has an unusable public key") from None
    data = _load(response_json)
    with _refusing():
        parsed = parse_authentication_credential_json(data)
    if parsed.raw_id != credential.credential_id:
        raise PasskeyRefused("unknown_credential")
    with _refusing():
        verified = verify_authentication_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.id,
            expected_origin=list(rp.origins), credential_public_key=credential.public_key,
            credential_current_sign_count=0, require_user_verification=True)
        cross_origin = parse_client_data_json(parsed.response.client_data_json).cross_origin
    if cross_origin:
        raise PasskeyRefused("origin")
    new, old = verified.new_sign_count, credential.sign_count
    if (new or old) and new <= old:
        raise PasskeyRefused("counter")
    return new


def _check_challenge(challenge: bytes) -> None:
    # An empty challenge would match a response carrying an empty one: a lost challenge must fail.
    if not isinstance(challenge, bytes) or len(challenge) < MIN_CHALLENGE_BYTES:
        raise ValueError(f"challenge must be at least {MIN_CHALLENGE_BYTES} bytes")


def _load(response_json: object) -> dict[str, Any]:
    """The response as a JSON object, refused ``"malformed"`` before parsing when not a string of
    at most :data:`MAX_RESPONSE_BYTES` UTF-8 bytes, and after when not a JSON object."""
    # A string of more code points than the limit is over it in bytes too; skip encoding it.
    if not isinstance(response_json, str) or len(response_json) > MAX_RESPONSE_BYTES:
        raise PasskeyRefused("malformed")
    try:
        size = len(response_json.encode("utf-8"))
        # RecursionError: deeply nested arrays; ValueError covers JSONDecodeError and huge ints.
        data = json.loads(response_json) if size <= MAX_RESPONSE_BYTES else None
    except (UnicodeEncodeError, ValueError, RecursionError):
        raise PasskeyRefused("malformed") from None
    if not isinstance(data, dict):
        raise PasskeyRefused("malformed")
    return data


def _check_public_key(cose_key: bytes) -> None:
    """Refuse a COSE key that is not an Ed25519 (EdDSA) or P-256 (ES256) public key."""
    with _refusing():
        decoded = decode_credential_public_key(cose_key)
        key = decoded_public_key_to_cryptography(decoded)
    eddsa = decoded.alg == COSEAlgorithmIdentifier.EDDSA and isinstance(key, Ed25519PublicKey)
    es256 = decoded.alg == COSEAlgorithmIdentifier.ECDSA_SHA_256 and isinstance(key, EllipticCurvePublicKey) \
        and isinstance(key.curve, SECP256R1)
    if not (eddsa or es256):
        raise PasskeyRefused("algorithm")


@contextmanager
def _refusing() -> Iterator[None]:
    """Turn whatever the library raises on hostile input into a :class:`PasskeyRefused`.

    Beyond its own exceptions the library lets others escape (a ValueError for an EC point off
    its curve, a KeyError for a COSE key missing a member), so everything is caught: any failure
    while judging client data is a refusal. The cause is dropped: its message may quote client data.
    """
    try:
        yield
    except PasskeyRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring: every failure here is a refusal.
        raise PasskeyRefused(_reason_of(exc)) from None


def _reason_of(exc: Exception) -> Reason:
    message = str(exc) if isinstance(exc, WebAuthnException) else ""
    return next((reason for prefix, reason in _LIBRARY_REASONS if message.startswith(prefix)), "malformed")

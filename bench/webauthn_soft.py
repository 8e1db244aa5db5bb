"""A software platform authenticator (client and authenticator in one) for the passkey tests and
the passkey logins of ``make bench`` (bench/authn.py).

Written from the WebAuthn Level 2/3 byte layouts, not from py_webauthn, so that the tests check
the library against an independent implementation. One ES256 (P-256) credential per instance,
made at construction; :meth:`SoftAuthenticator.register` answers creation options with a "none"
attestation (or "packed" self attestation), :meth:`SoftAuthenticator.login` answers request
options with an assertion and counts up. Both return the JSON a browser sends: base64url without
padding, ``id``/``rawId``/``type``/``response``.

Layouts (big endian)::

    authenticatorData = rpIdHash(32) | flags(1) | signCount(4) [| attestedCredentialData]
    attestedCredentialData = aaguid(16) | credentialIdLength(2) | credentialId | COSE_Key
    assertion signature = ECDSA-SHA256(authenticatorData || SHA-256(clientDataJSON)), DER

Every keyword of ``register``/``login`` is an attack knob for one call: another origin or RP id,
UP/UV dropped, raw ``flags``, a swapped ceremony ``kind``, ``cross_origin``, a tampered signature,
an explicit ``counter`` (a clone going backwards; 0 for an authenticator that keeps no counter).
:meth:`SoftAuthenticator.clone` copies the key and counter, as an extracted key would be.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP: Final = 0x01
UV: Final = 0x04
BE: Final = 0x08
BS: Final = 0x10
AT: Final = 0x40
ES256: Final = -7


def b64url(data: bytes) -> str:
    """Base64url without padding, as WebAuthn's JSON encodings use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """The inverse of :func:`b64url` (strict: refuses characters outside the alphabet)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


class SoftAuthenticator:
    """One P-256 credential for ``rp_id``, used from ``origin``; the next assertion counts
    ``sign_count + 1``. ``credential_id``, ``aaguid`` and ``sign_count`` may be set directly."""

    def __init__(self, rp_id: str, origin: str, sign_count: int = 0) -> None:
        self.rp_id = rp_id
        self.origin = origin
        self.sign_count = sign_count
        self.credential_id = secrets.token_bytes(32)
        self.aaguid = bytes(16)
        self.user_handle: bytes | None = None
        self._key = ec.generate_private_key(ec.SECP256R1())

    def clone(self) -> SoftAuthenticator:
        """A second device holding the same key, credential id and counter (a cloned key)."""
        return copy.copy(self)

    def cose_key(self, alg: int = ES256) -> bytes:
        """The credential public key as a COSE_Key: EC2 (kty 2), P-256 (crv 1), x and y."""
        numbers = self._key.public_key().public_numbers()
        key = {1: 2, 3: alg, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")}
        return cbor2.dumps(key, canonical=True)

    def register(self, options_json: str, *, origin: str | None = None, rp_id: str | None = None,
                 user_present: bool = True, user_verified: bool = True, flags: int | None = None,
                 kind: str = "webauthn.create", cross_origin: bool = False, attestation: str = "none",
                 cose_key: bytes | None = None) -> str:
        """The registration response to creation options, after the checks a client makes (the
        RP id, ES256 offered, this credential not excluded). ``attestation`` is "none" or
        "packed" (self attestation); ``cose_key`` replaces the encoded public key."""
        options = json.loads(options_json)
        if options["rp"]["id"] != self.rp_id:
            raise ValueError("options are for another relying party")
        if ES256 not in [p["alg"] for p in options["pubKeyCredParams"]]:
            raise ValueError("ES256 not offered")
        if self.credential_id in [unb64url(c["id"]) for c in options.get("excludeCredentials", [])]:
            raise ValueError("credential excluded: already registered")
        self.user_handle = unb64url(options["user"]["id"])
        client_data = self._client_data(kind, options["challenge"], origin, cross_origin)
        attested = (self.aaguid + len(self.credential_id).to_bytes(2, "big") + self.credential_id
                    + (self.cose_key() if cose_key is None else cose_key))
        auth_data = self._auth_data(rp_id, self._flags(user_present, user_verified, flags) | AT,
                                    self.sign_count) + attested
        statement: dict[str, Any] = {}
        if attestation == "packed":
            statement = {"alg": ES256, "sig": self._sign(auth_data, client_data)}
        elif attestation != "none":
            raise ValueError(f"unknown attestation {attestation!r}")
        attestation_object = cbor2.dumps({"fmt": attestation, "attStmt": statement, "authData": auth_data},
                                         canonical=True)
        return self._credential({
            "clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation_object),
            "transports": ["internal", "hybrid"]})

    def login(self, options_json: str, *, origin: str | None = None, rp_id: str | None = None,
              user_present: bool = True, user_verified: bool = True, flags: int | None = None,
              kind: str = "webauthn.get", cross_origin: bool = False, counter: int | None = None,
              tamper_signature: bool = False) -> str:
        """The assertion for request options (refused, like a platform would, if they name another
        RP or an allow list without this credential). ``counter`` sets the count reported and kept."""
        options = json.loads(options_json)
        if options["rpId"] != self.rp_id:
            raise ValueError("options are for another relying party")
        allowed = [unb64url(c["id"]) for c in options.get("allowCredentials", [])]
        if allowed and self.credential_id not in allowed:
            raise LookupError("no allowed credential on this authenticator")
        self.sign_count = self.sign_count + 1 if counter is None else counter
        client_data = self._client_data(kind, options["challenge"], origin, cross_origin)
        auth_data = self._auth_data(rp_id, self._flags(user_present, user_verified, flags), self.sign_count)
        signature = self._sign(auth_data, client_data)
        if tamper_signature:
            # Flip the last bit of s: the DER stays well formed, the signature is wrong.
            signature = signature[:-1] + bytes([signature[-1] ^ 0x01])
        response = {"clientDataJSON": b64url(client_data), "authenticatorData": b64url(auth_data),
                    "signature": b64url(signature)}
        if self.user_handle is not None:
            response["userHandle"] = b64url(self.user_handle)
        return self._credential(response)

    def _client_data(self, kind: str, challenge: str, origin: str | None, cross_origin: bool) -> bytes:
        # Member order and compact separators as browsers serialise CollectedClientData.
        collected = {"type": kind, "challenge": challenge, "origin": self.origin if origin is None else origin,
                     "crossOrigin": cross_origin}
        return json.dumps(collected, separators=(",", ":")).encode("utf-8")

    def _auth_data(self, rp_id: str | None, flags: int, sign_count: int) -> bytes:
        rp_id_hash = hashlib.sha256((self.rp_id if rp_id is None else rp_id).encode("utf-8")).digest()
        return rp_id_hash + bytes([flags]) + sign_count.to_bytes(4, "big")

    @staticmethod
    def _flags(user_present: bool, user_verified: bool, flags: int | None) -> int:
        if flags is not None:
            return flags
        return (UP if user_present else 0) | (UV if user_verified else 0)

    def _sign(self, auth_data: bytes, client_data: bytes) -> bytes:
        return self._key.sign(auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))

    def _credential(self, response: dict[str, Any]) -> str:
        return json.dumps({
            "id": b64url(self.credential_id), "rawId": b64url(self.credential_id), "type": "public-key",
            "response": response, "authenticatorAttachment": "platform", "clientExtensionResults": {}})

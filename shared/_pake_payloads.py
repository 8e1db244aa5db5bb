"""What pairing carries once the key is confirmed: the device's hello and the mesh's welcome.

Each travels sealed under a key only the two sides hold, as a msgpack map with exactly the fields
of its dataclass. Both dataclasses validate every field on construction and raise
:class:`~shared.pake.PairingProtocolError`, so a value that exists is one the other side would
accept, and an opened payload that fails a check is refused like any malformed message.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Final

from ._certs import check_name, check_public_key
from ._codec import decode_body, encode_body
from ._errors import BadRequest, CertificateError
from ._pake_codes import check_endpoint
from ._pake_frames import MAX_FRAME, PairingProtocolError

__all__ = [
    "AUDIT_KEY_BYTES",
    "MAX_CHECKPOINT",
    "MAX_ENDPOINTS",
    "MAX_LABEL_LEN",
    "DeviceHello",
    "Welcome",
    "decode_hello",
    "decode_welcome",
    "encode_hello",
    "encode_welcome",
]

#: The longest device name and client version a device may send.
MAX_LABEL_LEN: Final = 64
MAX_ENDPOINTS: Final = 8
MAX_CHECKPOINT: Final = 1024
#: A raw Ed25519 public key.
AUDIT_KEY_BYTES: Final = 32
_Z85_KEY_LEN: Final = 40


def _check_curve_key(value: object, what: str) -> None:
    # check_public_key accepts str too and returns bytes; the field must already be those bytes. The
    # length comes first: check_public_key lets a 40-character key with a newline after it through its
    # pattern ("$" matches before a final newline) to a decoder that then raises ValueError.
    try:
        if type(value) is not bytes or len(value) != _Z85_KEY_LEN or check_public_key(value) != value:
            raise CertificateError("not Z85 bytes")
    except CertificateError:
        raise PairingProtocolError(f"{what} is a CURVE public key: 40 bytes of Z85, not all zero") from None


def _check_label(value: object, what: str) -> None:
    if type(value) is not str or len(value) > MAX_LABEL_LEN or not value.isprintable():
        raise PairingProtocolError(f"{what} is printable text of at most {MAX_LABEL_LEN} characters")


@dataclass(frozen=True, slots=True)
class DeviceHello:
    """Sealed from the device to the mesh after key confirmation: the CURVE public key the device
    will connect with, the name it suggests for itself (may be empty) and its client's version."""

    public_key: bytes
    name: str
    client_version: str

    def __post_init__(self) -> None:
        _check_curve_key(self.public_key, "the device's public key")
        _check_label(self.name, "the device's suggested name")
        _check_label(self.client_version, "the client version")


@dataclass(frozen=True, slots=True)
class Welcome:
    """Sealed from the mesh to the device after key confirmation: the broker key to pin, where the
    broker listens, the identity the device was admitted as, the key that signs audit checkpoints
    and the latest signed checkpoint (opaque here, possibly empty), which the device keeps as a
    witness (DESIGN.md invariant 12)."""

    broker_public_key: bytes
    endpoints: tuple[str, ...]
    device_name: str
    audit_public_key: bytes
    checkpoint: bytes

    def __post_init__(self) -> None:
        _check_curve_key(self.broker_public_key, "the broker's public key")
        if type(self.endpoints) is not tuple or not 1 <= len(self.endpoints) <= MAX_ENDPOINTS:
            raise PairingProtocolError(f"a welcome names 1 to {MAX_ENDPOINTS} broker endpoints")
        # isprintable() as well: check_name's pattern also lets a name with a newline after it through.
        if type(self.device_name) is not str or not self.device_name.isprintable():
            raise PairingProtocolError("the device name is an identity name")
        try:
            for endpoint in self.endpoints:
                check_endpoint(endpoint)
            check_name(self.device_name)
        except (BadRequest, CertificateError) as exc:
            # Both messages describe the rule, never the value, so they can be passed on.
            raise PairingProtocolError(f"a welcome's endpoints and device name must be valid: {exc}") from None
        if type(self.audit_public_key) is not bytes or len(self.audit_public_key) != AUDIT_KEY_BYTES:
            raise PairingProtocolError(f"the audit public key is {AUDIT_KEY_BYTES} raw bytes (Ed25519)")
        if type(self.checkpoint) is not bytes or len(self.checkpoint) > MAX_CHECKPOINT:
            raise PairingProtocolError(f"the audit checkpoint is at most {MAX_CHECKPOINT} bytes")


def _encode(value: DeviceHello | Welcome) -> bytes:
    body = {item.name: getattr(value, item.name) for item in fields(value)}
    if isinstance(value, Welcome):
        body["endpoints"] = list(value.endpoints)  # msgpack has arrays, not tuples
    return encode_body(body)


def _decode(payload: bytes, names: frozenset[str], what: str) -> dict[str, Any]:
    try:
        body = decode_body(payload, MAX_FRAME)
    except BadRequest:
        raise PairingProtocolError(f"the sealed {what} is not valid msgpack") from None
    if type(body) is not dict or body.keys() != names:
        raise PairingProtocolError(f"the sealed {what} is a map with exactly the fields {', '.join(sorted(names))}")
    return body


_HELLO_FIELDS: Final = frozenset(item.name for item in fields(DeviceHello))
_WELCOME_FIELDS: Final = frozenset(item.name for item in fields(Welcome))


def encode_hello(hello: DeviceHello) -> bytes:
    """The msgpack map of ``hello``'s fields, for sealing."""
    return _encode(hello)


def decode_hello(payload: bytes) -> DeviceHello:
    """The :class:`DeviceHello` in an opened payload; :class:`PairingProtocolError` if it is not one."""
    return DeviceHello(**_decode(payload, _HELLO_FIELDS, "device hello"))


def encode_welcome(welcome: Welcome) -> bytes:
    """The msgpack map of ``welcome``'s fields (endpoints as an array), for sealing."""
    return _encode(welcome)


def decode_welcome(payload: bytes) -> Welcome:
    """The :class:`Welcome` in an opened payload; :class:`PairingProtocolError` if it is not one."""
    body = _decode(payload, _WELCOME_FIELDS, "welcome")
    endpoints = body["endpoints"]
    if type(endpoints) is not list:
        raise PairingProtocolError(f"a welcome names 1 to {MAX_ENDPOINTS} broker endpoints")
    body["endpoints"] = tuple(endpoints)
    return Welcome(**body)

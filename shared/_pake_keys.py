"""The pairing key schedule: from one SPAKE2 key to four single-use keys, and what each one does.

Both sides hold the same SPAKE2 key only if they used the same code and saw the same two SPAKE2
messages. From it, HKDF-SHA256 derives four independent keys, with the transcript hash as salt
(so a key is bound to this exchange and no other) and a purpose label as info:

- ``mesh-confirm`` and ``device-confirm``: HMAC-SHA256 keys for the two key confirmations, each an
  HMAC over the transcript hash and the direction label;
- ``device-seal`` and ``mesh-seal``: AES-256-GCM keys (:func:`shared.crypto.seal`) for the one
  payload each side sends, with the transcript hash and the direction label as associated data.

Every key is used exactly once and wiped right after, successful or not. What cannot be wiped: the
SPAKE2 key itself, which the library returns as immutable ``bytes``, and the copies ``hmac`` and
OpenSSL make internally (see :mod:`shared._crypto` for the limits of wiping in Python).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final, Literal

from . import hazmat
from ._crypto import KEY_BYTES, IntegrityError, open_sealed, seal, wipe
from ._pake_frames import PairingProtocolError, WrongCode

__all__ = ["DEVICE", "MAC_BYTES", "MESH", "TRANSCRIPT_LABEL", "Direction", "KeySchedule", "transcript_hash"]

Direction = Literal["mesh", "device"]
#: The side that sends: the mesh's confirmation and welcome, the device's confirmation and hello.
MESH: Final[Direction] = "mesh"
DEVICE: Final[Direction] = "device"
#: Names the protocol and its version in the transcript hash and in every derived key.
TRANSCRIPT_LABEL: Final = b"curvemesh-pair/1"
MAC_BYTES: Final = 32
_DIRECTION_LABELS: Final[dict[Direction, bytes]] = {MESH: b"mesh->device", DEVICE: b"device->mesh"}
_PURPOSES: Final = ("mesh-confirm", "device-confirm", "mesh-seal", "device-seal")
_LENGTH: Final = struct.Struct(">H")


def transcript_hash(device_message: bytes, mesh_message: bytes) -> bytes:
    """SHA-256 of the label and both SPAKE2 messages as sent (side byte included), each
    length-prefixed so no two different transcripts hash the same input."""
    digest = hashlib.sha256()
    for part in (TRANSCRIPT_LABEL, device_message, mesh_message):
        digest.update(_LENGTH.pack(len(part)))
        digest.update(part)
    return digest.digest()


class KeySchedule:
    """The four keys of one pairing, each usable once: :meth:`mac` or :meth:`check_mac` spends a
    confirmation key, :meth:`seal` or :meth:`open` a sealing key. Using a key twice raises
    :class:`PairingProtocolError`; :meth:`wipe` zeroes whatever is left. Holds no reference to the
    SPAKE2 key after construction, and its repr shows none of the keys."""

    __slots__ = ("_keys", "_transcript")

    def __init__(self, spake_key: bytes, device_message: bytes, mesh_message: bytes) -> None:
        self._transcript = transcript_hash(device_message, mesh_message)
        self._keys: dict[str, bytearray] = {
            purpose: hazmat.hkdf_sha256(spake_key, salt=self._transcript,
                                        info=TRANSCRIPT_LABEL + b" " + purpose.encode("ascii"), length=KEY_BYTES)
            for purpose in _PURPOSES
        }

    def __repr__(self) -> str:
        return f"<KeySchedule with {len(self._keys)} unused keys>"

    def _take(self, purpose: str) -> bytearray:
        key = self._keys.pop(purpose, None)
        if key is None:
            # A bug in the state machine above, not the peer's doing; still refused, never reused.
            raise PairingProtocolError("a pairing key was already used")
        return key

    def _bound(self, direction: Direction) -> bytes:
        return self._transcript + _DIRECTION_LABELS[direction]

    def mac(self, direction: Direction) -> bytes:
        """The key confirmation ``direction``'s side sends."""
        key = self._take(f"{direction}-confirm")
        try:
            return hmac.new(key, self._bound(direction), hashlib.sha256).digest()
        finally:
            wipe(key)

    def check_mac(self, direction: Direction, received: bytes) -> None:
        """Check the confirmation ``direction``'s side sent, in constant time; :class:`WrongCode` if
        it is not the one our key gives."""
        expected = self.mac(direction)
        if not hmac.compare_digest(expected, received):
            raise WrongCode("the pairing code does not match: the other side holds another key")

    def seal(self, direction: Direction, payload: bytes) -> bytes:
        """``payload`` sealed by ``direction``'s side for the other."""
        key = self._take(f"{direction}-seal")
        try:
            return seal(key, payload, self._bound(direction))
        finally:
            wipe(key)

    def open(self, direction: Direction, sealed: bytes) -> bytes:
        """Open what ``direction``'s side sealed; :class:`PairingProtocolError` if it was changed."""
        key = self._take(f"{direction}-seal")
        try:
            return open_sealed(key, sealed, self._bound(direction))
        except IntegrityError:
            raise PairingProtocolError("the sealed pairing payload failed its integrity check") from None
        finally:
            wipe(key)

    def wipe(self) -> None:
        """Zero and forget every key not used yet."""
        for key in self._keys.values():
            wipe(key)
        self._keys.clear()

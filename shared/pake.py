"""Device pairing: the pure core of the protocol that admits a user's phone to their mesh.

The operator runs ``meshctl pair start``, which shows a one-time code (:func:`new_code`, 8 digits
shown as ``1234-5678``) and a QR code holding an :class:`Offer` (:func:`encode_offer`); the device
runs ``meshctl pair join CODE --endpoint tcp://host:port`` or scans the offer (:func:`decode_offer`).
The two then speak over a bare TCP connection, in frames (:func:`encode_frame`, :func:`read_frame`:
a 2-byte big-endian length up to :data:`MAX_FRAME`, then one msgpack map):

1. device -> mesh ``{"v": 1, "t": "pake", "m": A}``: SPAKE2 side A over the code (33 bytes);
2. mesh -> device ``{"v": 1, "t": "pake", "m": B, "c": mesh MAC}``: side B, and the mesh's key
   confirmation; the device checks it before anything else (:class:`WrongCode` if it fails);
3. device -> mesh ``{"v": 1, "t": "confirm", "c": device MAC, "s": sealed DeviceHello}``: the
   mesh checks the MAC (:class:`WrongCode`), then opens the device's CURVE public key;
4. mesh -> device ``{"v": 1, "t": "welcome", "s": sealed Welcome}``: the broker key to pin, the
   broker's endpoints, the device's identity, the audit checkpoint key and latest checkpoint.

Keys: HKDF-SHA256 over the SPAKE2 key, salted with the transcript hash (SHA-256 over a protocol
label and both length-prefixed SPAKE2 messages), gives one key per purpose and direction: two
HMAC-SHA256 confirmations over the transcript hash and a direction label, two AES-256-GCM seals with
the transcript hash and direction label as associated data. Each key is used once and wiped.

Security. Nothing is trusted before key confirmation. The code carries 26.6 bits: enough because
SPAKE2 allows one online guess per attempt and nothing to test offline, and because a code is
spent by its first attempt that does not complete. That is the pairing service's duty, and the
attempt counts when :meth:`MeshSide.reply` runs: the mesh's confirmation already answers the guess,
so a guesser can learn it and hang up without ever failing a confirm. A relay without the code
fails confirmation on both sides and learns neither payload; a replayed transcript fails
confirmation against a fresh session. :class:`DeviceSide` and :class:`MeshSide` run each step once
and in order; any failure ends the session. Errors are :class:`PairingError` subclasses whose
messages never hold the code, keys or the peer's bytes; codes and offers that do not parse raise
:class:`~shared.BadRequest`, again without echoing input.

This module does no I/O beyond :func:`read_frame`; the TCP server and client live above it. The
code is in ``shared/_pake_*.py``: codes and offers, frames and errors, payloads, keys, sessions.
"""

from __future__ import annotations

from ._pake_codes import CODE_DIGITS, Offer, check_endpoint, decode_offer, encode_offer, new_code, normalize_code
from ._pake_frames import (
    MAX_FRAME,
    PAKE_VERSION,
    PairingError,
    PairingProtocolError,
    WrongCode,
    encode_frame,
    read_frame,
)
from ._pake_payloads import DeviceHello, Welcome
from ._pake_session import DeviceSide, MeshSide

__all__ = [
    "CODE_DIGITS",
    "MAX_FRAME",
    "PAKE_VERSION",
    "DeviceHello",
    "DeviceSide",
    "MeshSide",
    "Offer",
    "PairingError",
    "PairingProtocolError",
    "Welcome",
    "WrongCode",
    "check_endpoint",
    "decode_offer",
    "encode_frame",
    "encode_offer",
    "new_code",
    "normalize_code",
    "read_frame",
]

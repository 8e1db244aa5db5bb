"""The pairing wire: its errors, its frames, and the strict shape check of every message.

Pairing runs over a bare TCP connection before the device has any CURVE identity, so this codec
is the only thing between an unauthenticated stranger and the mesh: it reads at most one bounded
frame at a time, within a deadline, and accepts only a narrow subset of msgpack (through
:func:`~shared.decode_body`: no extension types, string keys, bounded nesting).

A frame is a 2-byte big-endian length, 1 to :data:`MAX_FRAME`, followed by that many bytes of one
msgpack map. Every message is a map with ``"v": 1`` (the protocol version), ``"t"`` (its type) and
the binary fields that type defines, nothing more.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any, Final

from ._codec import decode_body, encode_body
from ._errors import BadRequest

__all__ = [
    "MAX_FRAME",
    "PAKE_VERSION",
    "PairingError",
    "PairingProtocolError",
    "WrongCode",
    "encode_frame",
    "expect_message",
    "read_frame",
]

MAX_FRAME: Final = 4096
#: The ``"v"`` of every pairing message.
PAKE_VERSION: Final = 1
_LENGTH: Final = struct.Struct(">H")


class PairingError(Exception):
    """Pairing failed. The message says why in words chosen by the code that raised it; it never
    carries the code, key material or bytes the peer sent."""


class PairingProtocolError(PairingError):
    """A message was malformed, of the wrong type or version, out of order, or too late; or the
    sealed payload failed its integrity check after key confirmation (it was tampered with)."""


class WrongCode(PairingError):
    """Key confirmation failed: the two sides do not share a key. The code was wrong, or someone in
    the middle (a relay without the code, a replay of an old transcript) is speaking."""


def encode_frame(message: dict[str, Any]) -> bytes:
    """The frame carrying ``message``: its msgpack length as 2 big-endian bytes, then the msgpack.

    Raises :class:`PairingProtocolError` for a message that is not a map of msgpack types
    :func:`read_frame` accepts, or whose encoding exceeds :data:`MAX_FRAME` bytes.
    """
    if type(message) is not dict:
        raise PairingProtocolError("a pairing message is a map")
    try:
        body = encode_body(message)
    except BadRequest:
        raise PairingProtocolError("a pairing message holds only strings, bytes, numbers, lists and maps") from None
    if len(body) > MAX_FRAME:
        raise PairingProtocolError(f"a pairing message is at most {MAX_FRAME} bytes")
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, *, timeout: float) -> dict[str, Any]:
    """Read exactly one frame from ``reader`` within ``timeout`` seconds and return its map.

    Raises :class:`PairingProtocolError` when the deadline passes, the connection ends or fails
    before the frame is complete, the length is 0 or above :data:`MAX_FRAME` (refused before
    reading the body), or the body is not one msgpack map with string keys.
    """
    try:
        async with asyncio.timeout(timeout):
            (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
            if not 0 < length <= MAX_FRAME:
                raise PairingProtocolError(f"a pairing frame is 1 to {MAX_FRAME} bytes long")
            body = await reader.readexactly(length)
    except TimeoutError:
        raise PairingProtocolError("pairing timed out waiting for the peer's message") from None
    except asyncio.IncompleteReadError:
        raise PairingProtocolError("the connection ended in the middle of a pairing message") from None
    except OSError:
        raise PairingProtocolError("the connection failed while reading a pairing message") from None
    try:
        value = decode_body(body, MAX_FRAME)
    except BadRequest:
        raise PairingProtocolError("a pairing frame is not valid msgpack of the accepted kinds") from None
    if type(value) is not dict:
        raise PairingProtocolError("a pairing frame must hold a map")
    return value


def expect_message(message: object, kind: str, fields: Mapping[str, tuple[int, int]]) -> dict[str, bytes]:
    """Check ``message`` is exactly ``{"v": 1, "t": kind, **fields}`` and return its fields.

    ``fields`` maps each field name to the inclusive (shortest, longest) length of its bytes.
    Raises :class:`PairingProtocolError` naming the first problem: not a map, a missing or unknown
    version, another message type, a missing or extra key, a field that is not bytes of that length.
    """
    if type(message) is not dict:
        raise PairingProtocolError("a pairing message is a map")
    version = message.get("v")
    # type() and not isinstance(): msgpack's true decodes to bool, which is an int to isinstance.
    if type(version) is not int or version != PAKE_VERSION:
        raise PairingProtocolError(f"unknown pairing protocol version (this side speaks {PAKE_VERSION})")
    if message.get("t") != kind or type(message.get("t")) is not str:
        raise PairingProtocolError(f"expected a pairing message of type {kind!r} at this step")
    if message.keys() != {"v", "t", *fields}:
        raise PairingProtocolError(f"a {kind!r} pairing message has exactly the fields v, t, {', '.join(fields)}")
    found: dict[str, bytes] = {}
    for name, (shortest, longest) in fields.items():
        value = message[name]
        if type(value) is not bytes or not shortest <= len(value) <= longest:
            span = f"{shortest}" if shortest == longest else f"{shortest} to {longest}"
            raise PairingProtocolError(f"field {name!r} of a {kind!r} pairing message is {span} bytes")
        found[name] = value
    return found

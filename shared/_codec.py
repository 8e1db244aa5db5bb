"""The envelope codec: plain functions over bytes, no sockets.

A mesh message is one ``header`` frame, a msgpack map described in
``docs/protocol.md``, optionally followed by one ``body`` frame holding a
msgpack value. The broker decodes and re-encodes headers only; bodies are
opaque to it and are decoded by the receiving peer with :func:`decode_body`.

Both decoders refuse anything outside a narrow, bounded subset of msgpack:
no extension types (timestamps included), string map keys only, bounded
sizes and nesting. They raise :class:`~shared.BadRequest` with a message
that names the problem and never echo the offending bytes.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from ._errors import BadRequest

PROTOCOL_VERSION: Final = 1
MAX_ID: Final = 2**64 - 1
MAX_NAME_LEN: Final = 128
MAX_TOPIC_LEN: Final = 256
MAX_MESSAGE_LEN: Final = 1024
MAX_BODY_DEPTH: Final = 32

# Header kinds a peer may send, and the fields each one requires and allows.
# ``from``, ``role`` and ``fp`` (the key fingerprint) are stamped by the broker; a peer may
# send them but they are ignored (invariant 2), so they are allowed and then overwritten.
_STAMPED: Final = frozenset({"from", "role", "fp"})
_REQUIRED: Final[dict[str, frozenset[str]]] = {
    "req": frozenset({"v", "k", "id", "to", "ttl"}),
    "rep": frozenset({"v", "k", "id"}),
    "err": frozenset({"v", "k", "id", "code", "msg"}),
    "pub": frozenset({"v", "k", "id", "topic"}),
    "sub": frozenset({"v", "k", "id", "topic"}),
    "unsub": frozenset({"v", "k", "id", "topic"}),
    "reg": frozenset({"v", "k", "id", "name"}),
    "bye": frozenset({"v", "k", "id"}),
    "hb": frozenset({"v", "k"}),
}
_ALLOWED: Final[dict[str, frozenset[str]]] = {k: v | _STAMPED for k, v in _REQUIRED.items()}
PEER_KINDS: Final = frozenset(_REQUIRED)

_STR_FIELDS: Final = {"k": MAX_NAME_LEN, "to": MAX_NAME_LEN * 2 + 1, "name": MAX_NAME_LEN,
                      "topic": MAX_TOPIC_LEN, "code": 32, "msg": MAX_MESSAGE_LEN,
                      "from": MAX_NAME_LEN, "role": 32, "fp": 64}
_INT_FIELDS: Final = {"v": 255, "id": MAX_ID, "ttl": 2**31 - 1}


def _no_ext(code: int, data: bytes) -> Any:
    raise BadRequest("msgpack extension types are not accepted")


def _unpack(data: bytes, max_len: int) -> Any:
    if len(data) > max_len:
        raise BadRequest(f"frame of {len(data)} bytes exceeds the limit of {max_len}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
        )
    except BadRequest:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, RecursionError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed msgpack ({type(exc).__name__})") from None


def decode_header(data: bytes, max_len: int) -> dict[str, Any]:
    """Decode and validate a header a peer sent.

    Returns the header map with ``from``, ``role`` and ``fp`` removed. Raises
    :class:`BadRequest` for malformed msgpack, an oversize frame, a wrong
    protocol version, an unknown kind, a missing or unknown field, or a field
    of the wrong type or size.
    """
    header = _unpack(data, max_len)
    if type(header) is not dict:
        raise BadRequest("header is not a map")
    if _is_plain_request(header) or _is_plain_reply(header):
        return header
    version = header.get("v")
    if type(version) is not int:
        raise BadRequest("header field 'v' (protocol version) is missing or not an integer")
    if version != PROTOCOL_VERSION:
        raise BadRequest(f"unsupported protocol version {version}; this broker speaks {PROTOCOL_VERSION}")
    kind = header.get("k")
    allowed = _ALLOWED.get(kind) if type(kind) is str else None
    if allowed is None:
        raise BadRequest("unknown message kind")
    keys = header.keys()
    if not keys <= allowed:
        # Name what is allowed, never what was sent: an unknown key may carry anything.
        raise BadRequest(f"{len(keys - allowed)} unknown header field(s) for kind {kind!r}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    missing = _REQUIRED[str(kind)] - keys
    if missing:
        raise BadRequest(f"missing header field(s) for kind {kind!r}: {', '.join(sorted(missing))}")
    for key, value in header.items():
        limit = _STR_FIELDS.get(key)
        if limit is not None:
            if type(value) is not str or len(value) > limit:
                raise BadRequest(f"header field {key!r} must be a string of at most {limit} characters")
            continue
        limit = _INT_FIELDS[key]
        if type(value) is not int or not 0 <= value <= limit:
            raise BadRequest(f"header field {key!r} must be an integer from 0 to {limit}")
    header.pop("from", None)
    header.pop("role", None)
    header.pop("fp", None)
    return header


def _is_plain_request(h: dict[Any, Any]) -> bool:
    # Fast path for the broker's hottest shape: exactly {v, k, id, to, ttl}, all valid.
    # Anything else goes through the full validator below, which gives the error.
    if len(h) != 5 or h.get("k") != "req":
        return False
    v, i, to, ttl = h.get("v"), h.get("id"), h.get("to"), h.get("ttl")
    return (type(v) is int and v == PROTOCOL_VERSION and type(i) is int and 0 <= i <= MAX_ID
            and type(to) is str and len(to) <= _STR_FIELDS["to"] and type(ttl) is int and 0 <= ttl <= 2**31 - 1)


def _is_plain_reply(h: dict[Any, Any]) -> bool:
    # Fast path for exactly {v, k: "rep", id}.
    if len(h) != 3 or h.get("k") != "rep":
        return False
    v, i = h.get("v"), h.get("id")
    return type(v) is int and v == PROTOCOL_VERSION and type(i) is int and 0 <= i <= MAX_ID


def decode_delivered(data: bytes, max_len: int) -> dict[str, Any]:
    """Decode a header the broker delivered to a peer.

    Peers trust the broker, so this checks shape and types only: a map with
    string keys, the right protocol version and a string kind.
    """
    header = _unpack(data, max_len)
    if type(header) is not dict:
        raise BadRequest("header is not a map")
    if header.get("v") != PROTOCOL_VERSION or type(header.get("k")) is not str:
        raise BadRequest("header has a wrong protocol version or no kind")
    return header


def encode_header(header: dict[str, Any]) -> bytes:
    """Encode a header map; callers build it from validated values only."""
    data: bytes = msgpack.packb(header, use_bin_type=True)
    return data


#: The types of a body's leaves.
_LEAVES: Final = frozenset({str, bytes, int, float, bool, type(None)})


def _check_body(value: Any, depth: int) -> None:
    if depth > MAX_BODY_DEPTH:
        raise BadRequest(f"body nested deeper than {MAX_BODY_DEPTH} levels")
    kind = type(value)
    if kind is dict:
        deepest = depth >= MAX_BODY_DEPTH  # an item here, even a leaf, is one level too deep
        for key, item in value.items():
            if type(key) is not str:
                raise BadRequest("body map keys must be strings")
            if deepest or type(item) not in _LEAVES:  # a leaf needs no call of its own
                _check_body(item, depth + 1)
    elif kind is list:
        deepest = depth >= MAX_BODY_DEPTH
        for item in value:
            if deepest or type(item) not in _LEAVES:
                _check_body(item, depth + 1)
    elif kind not in _LEAVES:
        raise BadRequest(f"body holds an unsupported type {kind.__name__}")


def decode_body(data: bytes, max_len: int) -> Any:
    """Decode a body frame: bounded size and nesting, string keys, no extension types."""
    value = _unpack(data, max_len)
    _check_body(value, 0)
    return value


def encode_body(value: Any) -> bytes:
    """Encode a body; refuses types the decoder would refuse."""
    _check_body(value, 0)
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"body cannot be encoded ({type(exc).__name__})") from None
    return data


def error_text(message: str) -> str:
    """An error message cut to at most 900 UTF-8 bytes, so an ``err`` header always fits
    the smallest allowed ``max_header_bytes`` (2048) with room for its other fields."""
    data = message.encode("utf-8")
    if len(data) <= 900:
        return message
    return data[:900].decode("utf-8", "ignore")


def split_target(target: str) -> tuple[str, str]:
    """Split ``service.method`` into its parts; raise :class:`BadRequest` if it is not one.

    The service is everything before the first dot, so ``mesh.certs.list``
    addresses method ``certs.list`` of service ``mesh``. Methods whose last
    part starts with an underscore are private and never addressable.
    """
    service, dot, method = target.partition(".")
    if not dot or not service or not method:
        raise BadRequest("target must be 'service.method'")
    if method.startswith("_") or "._" in method or service.startswith("_"):
        raise BadRequest("private methods are not addressable")
    return service, method

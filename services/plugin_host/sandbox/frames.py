"""The wire between plugin-host and a plugin's child, shared by both sides.

An ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair; every packet is one msgpack map with a ``t`` (its
type). Decoding is strict: ``raw=False``, string-or-bytes map keys only, no extension types
(timestamps included), sizes bounded by the packet, values nested at most :data:`MAX_DEPTH`
deep. Each frame type has an exact set of keys with exact types; anything else is a
:class:`ProtocolError`, and the side that sees one ends the conversation (the host kills the
child for it, the child exits).

host -> child::

    setup  {t, name, entry, package_dir, scratch_dir, limits{...}, bpf, requires, read_paths}  (first)
    call   {t, id, fn, args}
    event  {t, id, topic, body}
    reply  {t, id, ok: true, value}  |  {t, id, ok: false, code, message}

child -> host::

    ready        {t, functions, topics, layers{name: bool}}
    unavailable  {t, layer, reason}
    result       {t, id, ok: true, value}  |  {t, id, ok: false, type, message, denied}
    request      {t, id, op, args{...}}
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from .spec import LAYERS, LIMIT_NAMES

#: Operations a plugin may ask plugin-host for (plugin-host validates their arguments).
OPS: Final = frozenset({"kv.get", "kv.put", "kv.scan", "userdata.get", "userdata.put", "userdata.scan"})
MAX_DEPTH: Final = 32
MAX_ID: Final = 2**63 - 1
MAX_NAMES: Final = 256      # functions or topic prefixes one plugin may declare
MAX_NAME_LEN: Final = 200   # a function name, topic, layer, code or exception type
MAX_TEXT_LEN: Final = 4000  # a message or reason (the host shortens it further before use)
MAX_PATHS: Final = 64
MAX_BPF: Final = 4096 * 8   # BPF_MAXINSNS instructions of 8 bytes


class ProtocolError(ValueError):
    """A frame that is not msgpack, not a map, or not exactly one of the frames above."""


class EncodeError(ValueError):
    """A value that cannot travel as msgpack (an unknown type, an int beyond 64 bits, too deep)."""


def encode(frame: dict[str, Any]) -> bytes:
    """One frame as the bytes of one packet (EncodeError for what the other side would refuse)."""
    try:
        _check_depth(frame, 0)
    except ProtocolError:
        raise EncodeError(f"values nested deeper than {MAX_DEPTH}") from None
    try:
        return msgpack.packb(frame, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"not msgpack-serializable ({type(exc).__name__})") from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("msgpack extension types are not accepted")


def decode(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The map in one packet; ProtocolError for anything but one bounded, plain msgpack map."""
    if len(data) > max_bytes:
        raise ProtocolError(f"a frame of {len(data)} bytes exceeds {max_bytes}")
    size = len(data)
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext,
                                timestamp=0, max_str_len=size, max_bin_len=size, max_array_len=size,
                                max_map_len=size, max_ext_len=0)
    except ProtocolError:
        raise
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"malformed msgpack ({type(exc).__name__})") from None
    if type(frame) is not dict:
        raise ProtocolError("a frame must be a map")
    _check_depth(frame, 0)
    return frame


def _check_depth(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"values nested deeper than {MAX_DEPTH}")
    if isinstance(value, dict):
        for item in value.values():
            _check_depth(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_depth(item, depth + 1)


# -- shapes ---------------------------------------------------------------------------------------

def _keys(frame: dict[str, Any], *keys: str) -> None:
    if set(frame) != {"t", *keys}:
        raise ProtocolError(f"a {frame['t']!r} frame has exactly the keys t, {', '.join(keys)}")


def _id(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ID:
        raise ProtocolError("an id is a non-negative 63-bit int")
    return value


def _text(value: Any, limit: int, what: str, *, empty: bool = False) -> str:
    if type(value) is not str or len(value) > limit or (not value and not empty):
        raise ProtocolError(f"{what} is a string of at most {limit} characters")
    return value


def _names(value: Any, what: str) -> list[str]:
    if type(value) is not list or len(value) > MAX_NAMES:
        raise ProtocolError(f"{what} is a list of at most {MAX_NAMES} names")
    for item in value:
        if type(item) is not str or not 0 < len(item) <= MAX_NAME_LEN or not item.isprintable():
            raise ProtocolError(f"{what} holds printable names of 1 to {MAX_NAME_LEN} characters")
    if len(set(value)) != len(value):
        raise ProtocolError(f"{what} names something twice")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"{what} is a bool")
    return value


def _type(frame: dict[str, Any], allowed: frozenset[str]) -> str:
    kind = frame.get("t")
    if type(kind) is not str or kind not in allowed:
        raise ProtocolError(f"unknown frame type (expected one of {', '.join(sorted(allowed))})")
    return kind


def check_from_child(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` if it is exactly a ready, unavailable, result or request frame."""
    kind = _type(frame, frozenset({"ready", "unavailable", "result", "request"}))
    if kind == "ready":
        _keys(frame, "functions", "topics", "layers")
        _names(frame["functions"], "functions")
        _names(frame["topics"], "topics")
        layers = frame["layers"]
        if type(layers) is not dict or set(layers) != set(LAYERS):
            raise ProtocolError("layers maps every layer name to a bool")
        for name in LAYERS:
            _bool(layers[name], f"layers[{name}]")
    elif kind == "unavailable":
        _keys(frame, "layer", "reason")
        if frame["layer"] not in LAYERS:
            raise ProtocolError("unavailable names an unknown layer")
        _text(frame["reason"], MAX_TEXT_LEN, "reason", empty=True)
    elif kind == "result":
        _check_result(frame)
    else:
        _keys(frame, "id", "op", "args")
        _id(frame["id"])
        if type(frame["op"]) is not str or frame["op"] not in OPS:
            raise ProtocolError("request names an unknown op")
        args = frame["args"]
        if type(args) is not dict or any(type(key) is not str for key in args):
            raise ProtocolError("request args is a map with string keys")
    return frame


def _check_result(frame: dict[str, Any]) -> None:
    ok = _bool(frame.get("ok"), "ok")
    if ok:
        _keys(frame, "id", "ok", "value")
    else:
        _keys(frame, "id", "ok", "type", "message", "denied")
        _text(frame["type"], MAX_NAME_LEN, "type")
        _text(frame["message"], MAX_TEXT_LEN, "message", empty=True)
        _bool(frame["denied"], "denied")
    _id(frame["id"])


def check_from_host(frame: dict[str, Any]) -> dict[str, Any]:
    """``frame`` if it is exactly a setup, call, event or reply frame."""
    kind = _type(frame, frozenset({"setup", "call", "event", "reply"}))
    if kind == "setup":
        _check_setup(frame)
    elif kind == "call":
        _keys(frame, "id", "fn", "args")
        _id(frame["id"])
        _text(frame["fn"], MAX_NAME_LEN, "fn")
    elif kind == "event":
        _keys(frame, "id", "topic", "body")
        _id(frame["id"])
        _text(frame["topic"], MAX_NAME_LEN, "topic")
    else:
        ok = _bool(frame.get("ok"), "ok")
        if ok:
            _keys(frame, "id", "ok", "value")
        else:
            _keys(frame, "id", "ok", "code", "message")
            _text(frame["code"], MAX_NAME_LEN, "code")
            _text(frame["message"], MAX_TEXT_LEN, "message", empty=True)
        _id(frame["id"])
    return frame


def _check_setup(frame: dict[str, Any]) -> None:
    _keys(frame, "name", "entry", "package_dir", "scratch_dir", "limits", "bpf", "requires", "read_paths")
    for key in ("name", "entry", "package_dir", "scratch_dir"):
        _text(frame[key], 4096, key)
    for key in ("package_dir", "scratch_dir"):
        if not frame[key].startswith("/"):
            raise ProtocolError(f"{key} is an absolute path")
    limits = frame["limits"]
    if type(limits) is not dict or set(limits) != LIMIT_NAMES:
        raise ProtocolError(f"limits has exactly the keys {', '.join(sorted(LIMIT_NAMES))}")
    if any(type(value) is not int or not 0 < value < 2**31 for value in limits.values()):
        raise ProtocolError("each limit is a positive int")
    bpf = frame["bpf"]
    if type(bpf) is not bytes or not 0 < len(bpf) <= MAX_BPF or len(bpf) % 8:
        raise ProtocolError("bpf is a non-empty array of 8-byte BPF instructions")
    requires = frame["requires"]
    if type(requires) is not list or any(layer not in LAYERS for layer in requires):
        raise ProtocolError("requires is a list of layer names")
    paths = frame["read_paths"]
    if type(paths) is not list or len(paths) > MAX_PATHS:
        raise ProtocolError(f"read_paths is a list of at most {MAX_PATHS} paths")
    for path in paths:
        if type(path) is not str or not path.startswith("/") or len(path) > 4096:
            raise ProtocolError("read_paths holds absolute paths")

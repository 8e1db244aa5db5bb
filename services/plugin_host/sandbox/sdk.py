"""``curvemesh_plugin``: what a plugin imports to talk to plugin-host.

A plugin is a Python module in its own directory, run in a child process the kernel confines:
it can read its own directory and the Python standard library, write only its scratch
directory (the current directory, also ``$TMPDIR`` and ``$HOME``), and reach nothing but
plugin-host. No network, no other process, no third-party packages it does not ship itself::

    import curvemesh_plugin as cp

    @cp.function()                      # exported as "summary"; @cp.function("name") renames it
    def summary(args):                  # args and the return value: msgpack types (dict, list,
        notes = cp.userdata.scan("notes", prefix=b"2024-")  # str, bytes, int, float, bool, None)
        return {"count": len(notes)}

    @cp.on_event("notes.")              # events whose topic starts with "notes."
    def on_note(topic, body):
        cp.kv.put("seen", topic.encode(), b"1")

``cp.kv`` is the plugin's own key-value store; ``cp.userdata`` the data of the person whose
request the host is serving (their consent decides). Both have ``get(category, key) -> bytes |
None``, ``put(category, key, value)`` and ``scan(category, prefix=b"", limit=100) -> [(key,
value), ...]``, with bytes keys and values, and work only while the host is calling one of the
plugin's functions or handlers. A refused request raises :class:`Denied`; a request the host
could not serve raises :class:`Error` (Denied is an Error too). Both carry ``code`` and
``message``. An exception a function raises reaches the caller as its type name and message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Denied", "Error", "function", "kv", "on_event", "userdata"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")


class Error(Exception):
    """The host could not serve a request: ``code`` (``UNAVAILABLE`` and others), ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Denied(Error):
    """The host refused a request (no grant, no consent, a bad argument)."""


class _Link(Protocol):
    def request(self, op: str, args: dict[str, Any]) -> Any: ...


_functions: dict[str, Callable[[Any], Any]] = {}
_handlers: list[tuple[str, Callable[[str, Any], Any]]] = []
_link: _Link | None = None


def function(name: str | None = None) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Export ``fn(args) -> value`` under ``name`` (default: the function's own name)."""
    def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        exported = fn.__name__ if name is None else name
        if type(exported) is not str or not _NAME.match(exported):
            raise ValueError(f"function name {exported!r}: 1 to 64 of letters, digits, '_', '.', '-'")
        if exported in _functions:
            raise ValueError(f"function {exported!r} is exported twice")
        _functions[exported] = fn
        return fn
    return register


def on_event(prefix: str) -> Callable[[Callable[[str, Any], Any]], Callable[[str, Any], Any]]:
    """Call ``fn(topic, body)`` for every event whose topic starts with ``prefix``."""
    if type(prefix) is not str or not 0 < len(prefix) <= 200 or not prefix.isprintable() or " " in prefix:
        raise ValueError("an event prefix is 1 to 200 printable characters without spaces")

    def register(fn: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
        _handlers.append((prefix, fn))
        return fn
    return register


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes")
    return bytes(value)


def _category(value: Any) -> str:
    if type(value) is not str or not value:
        raise TypeError("category must be a non-empty str")
    return value


class _Store:
    """One of the host's stores, reached through requests (``kv`` or ``userdata``)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def _request(self, op: str, args: dict[str, Any]) -> Any:
        if _link is None:
            raise Error("UNAVAILABLE", "not running under plugin-host")
        return _link.request(f"{self._prefix}.{op}", args)

    def get(self, category: str, key: bytes) -> bytes | None:
        value = self._request("get", {"category": _category(category), "key": _bytes(key, "key")})
        if value is not None and type(value) is not bytes:
            raise Error("UNAVAILABLE", "the host answered with something that is not bytes")
        return value

    def put(self, category: str, key: bytes, value: bytes) -> None:
        self._request("put", {"category": _category(category), "key": _bytes(key, "key"),
                              "value": _bytes(value, "value")})

    def scan(self, category: str, prefix: bytes = b"", limit: int = 100) -> list[tuple[bytes, bytes]]:
        if type(limit) is not int or limit < 1:
            raise TypeError("limit must be a positive int")
        rows = self._request("scan", {"category": _category(category), "prefix": _bytes(prefix, "prefix"),
                                      "limit": limit})
        if type(rows) is not list or not all(
                type(row) is list and len(row) == 2 and all(type(part) is bytes for part in row) for row in rows):
            raise Error("UNAVAILABLE", "the host answered with something that is not a list of (key, value)")
        return [(row[0], row[1]) for row in rows]


kv = _Store("kv")
userdata = _Store("userdata")

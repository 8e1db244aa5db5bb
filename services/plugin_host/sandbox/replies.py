"""Host side: the reply to a plugin's request, and what a plugin's result means for the caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import frames
from .exits import PluginFailed, RequestDenied, printable

OnRequest = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def answer(request: dict[str, Any], on_request: OnRequest, max_bytes: int) -> bytes:
    """The reply frame to ``request``: ``on_request``'s value; a RequestDenied's code and message;
    for any other failure only ``UNAVAILABLE`` and a fixed message (never the host's exception
    text); ``UNAVAILABLE`` too for a value that cannot travel or is larger than ``max_bytes``."""
    def error(code: str, message: str) -> dict[str, Any]:
        return {"t": "reply", "id": request["id"], "ok": False, "code": code, "message": message}
    try:
        value = await on_request(request["op"], request["args"])
        reply = {"t": "reply", "id": request["id"], "ok": True, "value": value}
    except RequestDenied as exc:
        reply = error(printable(str(exc.code), 100) or "DENIED", printable(str(exc.message), 1000))
    except Exception:  # noqa: BLE001 - whatever went wrong, the plugin learns only that it did
        reply = error("UNAVAILABLE", "plugin-host could not serve this request")
    try:
        data = frames.encode(reply)
    except frames.EncodeError:
        data = frames.encode(error("UNAVAILABLE", "plugin-host could not encode the answer"))
    if len(data) > max_bytes:
        data = frames.encode(error("UNAVAILABLE", "the answer is larger than a message may be"))
    return data


def outcome(result: dict[str, Any]) -> Any:
    """A result frame's value, or PluginFailed with its (shortened, printable) type and message."""
    if result["ok"]:
        return result["value"]
    raise PluginFailed(printable(result["type"], 100), printable(result["message"], 1000), result["denied"])

"""supervisord's event listener protocol, as plain functions over a stream.

supervisord writes one header line (``ver:3.0 server:curvemesh serial:21 pool:x
poolserial:10 eventname:PROCESS_STATE_EXITED len:71``) and then exactly ``len``
bytes of payload to the listener's stdin, once the listener has written
``READY\\n`` to its stdout. The listener answers ``RESULT 2\\nOK`` and writes
``READY\\n`` again. supervisord sends nothing more to a listener until it has
answered, so :func:`serve_events` answers as soon as the event is safely
handed over (spooled), never after slow work such as talking to the broker.

Anything a listener writes to stdout that is not a protocol token puts it in
supervisord's UNKNOWN state, so the protocol owns the stdout file descriptor
and nothing else may write there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

READY: Final = b"READY\n"
OK: Final = b"RESULT 2\nOK"
#: Generous bounds: supervisord's PROCESS_STATE headers and payloads are ~100-200 bytes.
MAX_HEADER: Final = 4096
MAX_PAYLOAD: Final = 1 << 20


class ProtocolError(Exception):
    """supervisord sent something that is not an event header; the stream cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One event as supervisord sent it: header tokens and payload tokens, both as text."""

    header: dict[str, str]
    payload: dict[str, str]

    @property
    def eventname(self) -> str:
        return self.header.get("eventname", "")

    def serial(self, key: str) -> int | None:
        """An integer header field (``serial``, ``poolserial``), or None if absent or malformed."""
        value = self.header.get(key, "")
        return int(value) if value.isdigit() else None


def parse_tokens(line: str) -> dict[str, str]:
    """Split ``a:1 b:2`` into ``{"a": "1", "b": "2"}``; a token without ``:`` is skipped."""
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            out[key] = value
    return out


def parse_header(line: bytes) -> tuple[dict[str, str], int]:
    """Parse a header line; return its tokens and the payload length. Raise :class:`ProtocolError`."""
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ProtocolError("event header is not ASCII") from None
    header = parse_tokens(text)
    length = header.get("len", "")
    if not length.isdigit() or "eventname" not in header:
        raise ProtocolError("event header lacks eventname or len")
    size = int(length)
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"event payload of {size} bytes is above the limit")
    return header, size


async def read_notification(reader: asyncio.StreamReader) -> Notification | None:
    """Read one event; None at end of stream (supervisord went away)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError("event header line is too long") from None
    if len(line) > MAX_HEADER:
        raise ProtocolError("event header line is too long")
    header, size = parse_header(line)
    try:
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None
    # A payload's first line holds the tokens; PROCESS_COMMUNICATION-style bodies may follow.
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    return Notification(header, parse_tokens(first))


async def serve_events(reader: asyncio.StreamReader, write: Callable[[bytes], None],
                       handle: Callable[[Notification], None]) -> None:
    """Speak the protocol until end of stream: READY, read one event, ``handle`` it, OK, READY.

    ``handle`` must be quick and must not raise for a bad event (it counts it):
    the OK means "this event is taken care of", and supervisord does not send
    the next one until it gets it. Returns when supervisord closes our stdin.
    """
    write(READY)
    while True:
        notification = await read_notification(reader)
        if notification is None:
            return
        handle(notification)
        write(OK + READY)

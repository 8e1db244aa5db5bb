"""Host side: a child's stdout and stderr read line by line, and the per-second meters.

Both pipes are read as soon as anything arrives (non-blocking, on the event loop), each read at
most 64 KiB, each line cut to 1000 characters with non-printables escaped; a line that never
ends is emitted once, cut, and the rest of it dropped: no buffer grows with what a plugin writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import IO, Final

from .exits import printable

MAX_LINE: Final = 1000
_MAX_LINE_BYTES: Final = MAX_LINE * 4  # enough bytes for 1000 characters of UTF-8
_READ: Final = 65536


class Meter:
    """Counts an amount per one-second window; :meth:`over` says when the window's total passed
    ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window = 0.0
        self._total = 0

    def over(self, amount: int) -> bool:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._total = now, 0
        self._total += amount
        return self._total > self.limit


class LogPipe:
    """Reads one of a child's output pipes into ``emit(stream, line)``.

    ``meter`` is shared by both pipes of a child; when it overflows ``on_flood()`` is called and
    lines are no longer emitted (the pipe is still drained until the child is gone)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pipe: IO[bytes], stream: str,
                 emit: Callable[[str, str], None], meter: Meter, on_flood: Callable[[], None]) -> None:
        self._loop = loop
        self._pipe = pipe
        self._fd = pipe.fileno()
        self._stream = stream
        self._emit = emit
        self._meter = meter
        self._on_flood = on_flood
        self._partial = bytearray()
        self._skipping = False
        self.muted = False
        self.closed = loop.create_future()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self._partial and not self._skipping:
                self._line(bytes(self._partial))
            self.close()
            return
        if not self.muted and self._meter.over(len(data)):
            self.muted = True
            self._on_flood()
        *lines, rest = data.split(b"\n")
        for line in lines:
            if not self._skipping:
                self._line(bytes(self._partial + line))
            self._partial.clear()
            self._skipping = False
        if not self._skipping:
            self._partial += rest
            if len(self._partial) > _MAX_LINE_BYTES:  # a line that does not end: once, cut
                self._line(bytes(self._partial[:_MAX_LINE_BYTES]))
                self._partial.clear()
                self._skipping = True

    def _line(self, raw: bytes) -> None:
        if self.muted:
            return
        text = printable(raw.decode("utf-8", "replace").rstrip("\r"), MAX_LINE)
        with contextlib.suppress(Exception):  # the host's callback must not break the reader
            self._emit(self._stream, text)

    def close(self) -> None:
        if self.closed.done():
            return
        self._loop.remove_reader(self._fd)
        self._pipe.close()
        self.closed.set_result(None)

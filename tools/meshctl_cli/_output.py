"""How meshctl talks to people and machines: tables, JSON, one-line errors, progress."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, TextIO

#: The ``code`` of a JSON error when the failure names none: by exit status (README: exit codes).
_CODE_BY_STATUS: Final = {2: "usage", 3: "sealed", 4: "degraded", 130: "interrupted"}


class CliError(Exception):
    """A failure meshctl reports as one line on stderr (or, with ``--json``, as an error object on
    stdout) before exiting with ``status``.

    ``kind`` is the JSON error's ``code``, a short stable word for machines (``usage``,
    ``unavailable``, ``not_initialised``, ``forbidden``, ``not_found``, ...): the mesh's wire code
    in lower case when the mesh refused, else the word for the exit status, else ``failed``.
    """

    def __init__(self, message: str, status: int = 1, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        # Not named ``code``: SupervisorFault keeps supervisord's numeric fault code under that name.
        self.kind = kind or _CODE_BY_STATUS.get(status, "failed")


class _Stdout:
    # Whether a command already printed its JSON result: a failure after it (an unhealthy
    # `status`, a failed `storage verify`) must not append a second document to stdout.
    printed_json = False


def emit_json(value: Any, stream: TextIO | None = None) -> None:
    """Print ``value`` as indented JSON (what ``--json`` promises)."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str), file=stream or sys.stdout)
    if stream is None or stream is sys.stdout:
        _Stdout.printed_json = True


def report_error(exc: CliError, as_json: bool) -> int:
    """Say why meshctl failed and return the exit status: one line on stderr, and with ``--json``
    also ``{"error": {"code", "message"}}`` on stdout unless the result was printed already."""
    print(f"meshctl: {exc.message}", file=sys.stderr)
    if as_json and not _Stdout.printed_json:
        print(json.dumps({"error": {"code": exc.kind, "message": exc.message, "exit_code": exc.status}},
                         sort_keys=True))
    return exc.status


def emit(as_json: bool, value: Any, text: str) -> None:
    """Print a command's result: ``value`` as JSON with ``--json``, else ``text`` for people."""
    if as_json:
        emit_json(value)
    else:
        print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned text table; ``None`` cells print as ``-``."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def duration(seconds: float | None) -> str | None:
    """``42s``, ``3m04s``, ``2h05m``, ``3d04h``; None stays None."""
    if seconds is None:
        return None
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def millis(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


class Progress:
    """A progress line on stderr: rewritten in place on a terminal; on a pipe (CI, ``make up``
    piped) a new line only when the text changes, so logs stay readable."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last = ""
        self._width = 0

    def update(self, text: str) -> None:
        if text == self._last:
            if self.tty:
                self._draw(text)
            return
        self._last = text
        if self.tty:
            self._draw(text)
        else:
            print(f"  {text}", file=self.stream, flush=True)

    def _draw(self, text: str) -> None:
        line = f"  {text} ({time.monotonic() - self.started:.0f}s)"
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

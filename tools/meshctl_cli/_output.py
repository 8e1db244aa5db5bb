"""How meshctl talks to people and machines: tables, JSON, one-line errors, progress."""

from __future__ import annotations

import functools
import io
import json
import os
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


def start_run() -> None:
    """Forget what an earlier run in this process printed (tests call ``main`` many times)."""
    _Stdout.printed_json = False
    _warned.clear()


def report_error(exc: CliError, as_json: bool) -> int:
    """Say why meshctl failed and return the exit status: one line on stderr, and with ``--json``
    also ``{"error": {"code", "message"}}`` on stdout unless the result was printed already."""
    print(f"meshctl: {exc.message}", file=sys.stderr)
    if as_json and not _Stdout.printed_json:
        print(json.dumps({"error": {"code": exc.kind, "message": exc.message, "exit_code": exc.status}},
                         sort_keys=True))
    return exc.status


def emit(as_json: bool, value: Any, text: str, warnings: Sequence[str] = ()) -> None:
    """Print a command's result: ``value`` as JSON with ``--json`` (its warnings are in it), else
    ``text`` for people and each of ``warnings`` once on stderr."""
    if as_json:
        emit_json(value)
    else:
        print(text)
        warn(warnings)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], states: Sequence[int] = ()) -> str:
    """A left-aligned text table; ``None`` cells print as ``-``. The columns ``states`` hold state
    words, coloured on a terminal (:func:`paint`); widths are measured without the colour codes."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(paint(v.ljust(w), v) if i in states else v.ljust(w)
                        for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in cells]
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


#: Colours of state words on a terminal: green is fine, yellow waits or limps, red is broken.
_STATE_STYLES: Final = {"ready": "green", "healthy": "green", "running": "green",
                        "degraded": "yellow", "sealed": "yellow", "starting": "yellow", "backoff": "yellow",
                        "failed": "red", "unhealthy": "red", "down": "red", "fatal": "red", "exited": "red",
                        "not running": "red", "stopped": "yellow",
                        # log levels and audit outcomes
                        "warning": "yellow", "error": "red", "critical": "red", "ok": "green",
                        "denied": "red", "failure": "red"}
ELLIPSIS: Final = "…"


def colour_enabled(stream: TextIO | None = None) -> bool:
    """Colour only for a person at a terminal: never on a pipe or file, never with ``NO_COLOR``
    set to anything (https://no-color.org), never on a dumb terminal."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


@functools.cache
def _painter() -> Any:
    # rich only on a terminal that wants colour: `meshctl --help` and every pipe never import it.
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=1 << 16,
                   highlight=False, markup=False, emoji=False, soft_wrap=True)


def paint(text: str, word: str | None = None) -> str:
    """``text`` coloured for the state ``word`` (default: ``text`` itself) when colour is on."""
    style = _STATE_STYLES.get((word if word is not None else text).strip().lower())
    if style is None or not colour_enabled():
        return text
    from rich.text import Text

    console = _painter()
    with console.capture() as captured:
        console.print(Text(text, style=style), end="")
    return str(captured.get())


def cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters; a cut one ends with ``…`` (never silently)."""
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


_warned: set[str] = set()


def warn(warnings: Sequence[str]) -> None:
    """Each warning once per run, on stderr: stdout stays the result, and a warning several
    sources raise (the keyring, say) is not repeated."""
    for warning in warnings:
        if warning not in _warned:
            _warned.add(warning)
            print(f"meshctl: warning: {warning}", file=sys.stderr)


class Columns:
    """Aligned columns for a stream (``logs``, ``audit tail``): the widths come from the first
    rows, within caps, and stay fixed, so lines that arrive later line up under the same header;
    a wider value is cut with ``…``. The last column is never padded; it is cut at its cap."""

    def __init__(self, headers: Sequence[str], caps: Sequence[int], first: Sequence[Sequence[str]],
                 right: Sequence[int] = ()) -> None:
        self.headers = list(headers)
        self.caps = list(caps)
        self.right = set(right)
        # Without rows to measure (a follow that starts empty) each column gets its cap.
        self.widths = [min(cap, max([len(h), *(len(row[i]) for row in first)])) if first else max(cap, len(h))
                       for i, (h, cap) in enumerate(zip(headers, caps, strict=True))]

    def header(self) -> str:
        return self._join(self.headers)

    def line(self, row: Sequence[str], styled: int | None = None) -> str:
        """One row; column ``styled`` is coloured by its state word (on a terminal)."""
        return self._join(row, styled)

    def _join(self, row: Sequence[str], styled: int | None = None) -> str:
        last = len(row) - 1
        cells = []
        for i, value in enumerate(row):
            text = cut(value, self.caps[i] if i == last else self.widths[i])
            if i != last:
                text = text.rjust(self.widths[i]) if i in self.right else text.ljust(self.widths[i])
            cells.append(paint(text, value) if i == styled else text)
        return "  ".join(cells).rstrip()

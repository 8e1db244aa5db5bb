"""Loggers that cost nothing until there is something worth logging.

structlog (and the rich and traceback machinery it imports) costs about as much as starting the
interpreter. A service pays that once and logs all day; a short-lived command such as ``meshctl
ping`` usually logs nothing at all, so it must not pay (issue 13). The shared modules therefore log
through :func:`get_logger`, whose loggers import structlog on the first event at or above the
threshold, never before.

The redaction guarantee is kept: a command that calls :func:`defer_logging` instead of
``configure_logging`` has the full processor chain (redaction included) configured, by
``configure_logging`` itself, before the first event is handed to structlog. A process that
configured neither gets structlog's defaults, as it would have before this module existed.
"""

from __future__ import annotations

from typing import Any, Final, TextIO

#: structlog's level names and their numbers (``exception`` logs at error level).
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}

# What defer_logging asked for, until the first event configures it; and the level below which
# events are dropped without importing anything.
_pending: tuple[str, str, TextIO | None] | None = None
_threshold = 0


def defer_logging(process: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure logging as ``configure_logging(process, level, stream)`` would, but only when the
    first event at ``level`` or above is logged: a process that logs nothing never imports
    structlog. Raises ValueError for an unknown level."""
    global _pending, _threshold
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(LEVELS)}")
    _pending = (process, level, stream)
    _threshold = LEVELS[level.lower()]


def configured(level: str) -> None:
    """Record that structlog is now configured at ``level`` (``configure_logging`` calls this)."""
    global _pending, _threshold
    _pending = None
    _threshold = LEVELS.get(level.lower(), 0)


class DeferredLogger:
    """A structlog-like logger for module scope: ``log.warning("event", key=value)``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[method] < _threshold:
            return
        if _pending is not None:
            from ._logging import configure_logging

            configure_logging(*_pending)
        import structlog

        # ``method`` is one of this class's own level names below, never outside input.
        getattr(structlog.get_logger(self._name), method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the exception being handled (call it inside ``except``)."""
        self._emit("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._emit("critical", event, fields)


def get_logger(name: str) -> DeferredLogger:
    """A logger named ``name`` that imports structlog only when it first has an event to emit."""
    return DeferredLogger(name)

"""Logging: structlog event dicts through a processor chain that redacts secrets.

Redaction is a processor: every key named in :data:`SENSITIVE` (the defaults
below plus every field a handler declares sensitive) is replaced by
``"<redacted>"`` at any depth of the event dict, before rendering. Output is
one JSON object per line on stderr, which supervisord captures and rotates.

structlog (and the rich and traceback machinery it imports) costs about as much as starting the
interpreter. A service pays that once and logs all day; a short-lived command such as ``meshctl
ping`` usually logs nothing at all, so it must not pay (issue 13). So structlog is imported only
when logging is configured, and the shared modules log through :func:`get_logger`, whose loggers
import it on the first event at or above the threshold, never before. A command that calls
:func:`defer_logging` instead of :func:`configure_logging` has the full processor chain (redaction
included) configured before the first event reaches structlog. A process that configured neither
gets structlog's defaults, as it would have without this module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Final, TextIO

#: structlog's level names and their numbers (``exception`` logs at error level).
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}

SENSITIVE: set[str] = {
    "password", "passphrase", "secret", "secret_key", "token", "key_material", "master_key",
    "mfa_code", "pairing_code", "otp", "private_key", "session", "session_token", "recovery",
}
_REDACTED = "<redacted>"


def declare_sensitive(names: Iterable[str]) -> None:
    """Add field names whose values must never reach a log."""
    SENSITIVE.update(names)


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return "<nested>"
    if isinstance(value, dict):
        return {k: (_REDACTED if k in SENSITIVE else _scrub(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace sensitive values, at any depth, by a placeholder."""
    for key in list(event):
        if key in SENSITIVE:
            event[key] = _REDACTED
        elif isinstance(event[key], (dict, list, tuple)):
            event[key] = _scrub(event[key])
    return event


def _level(level: str) -> int:
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(LEVELS)}")
    return number


# What defer_logging asked for, until the first event configures it; and the level below which
# events are dropped without importing anything.
_pending: tuple[str, str, TextIO | None] | None = None
_threshold = 0


def configure_logging(process: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for one mesh process: JSON lines on ``stream`` (default stderr)."""
    global _pending, _threshold
    threshold = _level(level)
    import structlog
    from structlog.tracebacks import ExceptionDictTransformer

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            # Tracebacks as dicts, without local variables: structlog shows locals by default,
            # and a frame's locals may hold keys, passwords or user data.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(process=process)
    _pending, _threshold = None, threshold


def defer_logging(process: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure logging as ``configure_logging(process, level, stream)`` would, but only when the
    first event at ``level`` or above is logged: a process that logs nothing never imports
    structlog. Raises ValueError for an unknown level."""
    global _pending, _threshold
    _threshold = _level(level)
    _pending = (process, level, stream)


class DeferredLogger:
    """A structlog-like logger for module scope: ``log.warning("event", key=value)``."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[method] < _threshold:
            return
        if _pending is not None:
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

"""Logging: structlog event dicts through a processor chain that redacts secrets.

Redaction is a processor: every key named in :data:`SENSITIVE` (the defaults
below plus every field a handler declares sensitive) is replaced by
``"<redacted>"`` at any depth of the event dict, before rendering. Output is
one JSON object per line on stderr, which supervisord captures and rotates.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from ._deferred_log import configured

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


def configure_logging(process: str, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for one mesh process: JSON lines on ``stream`` (default stderr)."""
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
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(process=process)
    configured(level)

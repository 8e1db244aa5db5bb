"""``[plugins]``: which publishers' packages the mesh trusts, and how plugin-host treats the
plugins it runs.

Kept beside :mod:`._config` (which includes it in :class:`~shared.MeshConfig`) so that file stays
one concept: the mesh's own sections. Bounds are checked as the file is parsed, with the key named;
a publisher key that does not parse stops the configuration at load, naming
``plugins.publishers.<id>``. The package format is :mod:`shared.plugins`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from ._errors import ConfigError
from ._plugin_grants import PackageRefused
from ._plugin_keys import KEY_ID_RE, parse_publisher_key

_DAY = 86400


def _no_publishers() -> Mapping[str, str]:
    return types.MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    """``[plugins]``.

    ``publishers`` (``[plugins.publishers]``): key id -> public key text (``ed25519:<base64>``) of
    each publisher whose signed packages may be installed; none by default, so nothing can be.
    Caps over every manifest's quotas: ``max_memory_mb``, ``max_cpu_s``, ``max_call_timeout_s``.
    ``start_timeout_s``: how long a starting plugin has to become ready. A plugin that stops is
    restarted after a backoff from ``restart_backoff_min_s`` doubling up to ``restart_backoff_max_s``;
    ``max_failures`` failures within ``failure_window_s`` disable it until an operator enables it
    again. Per plugin: ``max_message_bytes`` (largest message either way), ``messages_per_s`` (the
    frames it may send in a second: its requests and results; a well-behaved plugin sends one per
    request and call, each waiting for a mesh round trip, so far fewer: more is a flood and kills it),
    ``log_bytes_per_s`` (its output a second: more is a flood) and ``log_lines`` (lines kept).
    """

    publishers: Mapping[str, str] = field(default_factory=_no_publishers)
    max_memory_mb: int = field(default=1024, metadata={"min": 32, "max": 65536})
    max_cpu_s: int = field(default=600, metadata={"min": 1, "max": _DAY})
    max_call_timeout_s: float = field(default=60.0, metadata={"min": 0.1, "max": 3600.0})
    start_timeout_s: float = field(default=10.0, metadata={"min": 0.1, "max": 600.0})
    restart_backoff_min_s: float = field(default=1.0, metadata={"min": 0.01, "max": 3600.0})
    restart_backoff_max_s: float = field(default=60.0, metadata={"min": 0.01, "max": float(_DAY)})
    max_failures: int = field(default=5, metadata={"min": 1, "max": 1000})
    failure_window_s: float = field(default=600.0, metadata={"min": 1.0, "max": 7.0 * _DAY})
    max_message_bytes: int = field(default=262144, metadata={"min": 1024, "max": 64 << 20})
    messages_per_s: int = field(default=10_000, metadata={"min": 1, "max": 1_000_000})
    log_bytes_per_s: int = field(default=65536, metadata={"min": 1024, "max": 64 << 20})
    log_lines: int = field(default=1000, metadata={"min": 10, "max": 1_000_000})

    def __post_init__(self) -> None:
        for key_id, text in self.publishers.items():
            if not KEY_ID_RE.fullmatch(key_id):
                raise ConfigError(f"plugins.publishers.{key_id!r}: not a publisher key id (1-64 of a-z 0-9 . _ -, "
                                  "starting with a letter or digit)")
            try:
                parse_publisher_key(text)
            except PackageRefused as exc:
                raise ConfigError(f"plugins.publishers.{key_id}: {exc.message}") from None
        if self.restart_backoff_min_s > self.restart_backoff_max_s:
            raise ConfigError("plugins.restart_backoff_min_s: must not exceed restart_backoff_max_s")

"""``[pairing]``: the pairing entry point devices join through, and how long and how hard it may be tried.

Kept beside :mod:`._config` (which includes it in :class:`~shared.MeshConfig`). The entry point
listens only while an operator holds a pairing window open (``meshctl pair start``), on the host of
the broker's first tcp endpoint (``[broker] tcp_endpoints``: without one, detached mode is off and
there is nothing to pair for), on ``port``. docs/pairing.md has the design and its threat analysis.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ._errors import ConfigError


@dataclass(frozen=True, slots=True)
class PairingConfig:
    """``[pairing]``.

    ``port``: the entry point's tcp port while a window is open (0: any free port, for tests).
    ``advertise_host``: the host a device is told to reach (in the code's endpoint and the QR code)
    when the broker listens on a wildcard address; empty: this machine's address on its default
    route. ``window_default_s`` / ``window_max_s``: how long a window stays open unless ``--ttl``
    says otherwise, and at most. ``max_failures``: failed attempts that close a window (a wrong
    code, or any attempt that did not finish). ``per_source_per_minute``: connections one source
    address may open per minute. ``max_connections``: attempts in progress at once.
    ``step_timeout_s``: how long the entry point waits for each message of an attempt.
    """

    port: int = field(default=7420, metadata={"min": 0, "max": 65535})
    advertise_host: str = ""
    window_default_s: int = field(default=120, metadata={"min": 10, "max": 3600})
    window_max_s: int = field(default=600, metadata={"min": 10, "max": 3600})
    max_failures: int = field(default=3, metadata={"min": 1, "max": 10})
    per_source_per_minute: int = field(default=10, metadata={"min": 1, "max": 1000})
    max_connections: int = field(default=4, metadata={"min": 1, "max": 64})
    step_timeout_s: float = field(default=10.0, metadata={"min": 0.1, "max": 120.0})

    def __post_init__(self) -> None:
        if self.window_default_s > self.window_max_s:
            raise ConfigError("pairing.window_default_s: must not exceed window_max_s")
        host = self.advertise_host
        odd = any(c in host for c in "/:@ \0\t\n[]")
        if len(host) > 253 or (odd and not _ipv6(host)):
            raise ConfigError("pairing.advertise_host: a host name or IP address, without scheme or port")


def _ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False

"""``[authn]``: how long tokens and sessions live, and how failed logins are regulated.

Kept beside :mod:`._config` (which includes it in :class:`~shared.MeshConfig`) so that file stays
one concept: the mesh's own sections. Bounds are checked as the file is parsed, with the key named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._errors import ConfigError

_DAY = 86400
_RP_ID = re.compile(r"(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_ORIGIN = re.compile(r"https://(?P<host>[a-z0-9.-]{1,253})(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class AuthnConfig:
    """``[authn]``.

    Tokens: ``access_token_s`` is an access token's lifetime (15 minutes by default); the refresh
    token lives as long as its session. Sessions: a trusted device stays signed in across restarts
    until ``session_idle_s`` pass without use or ``session_absolute_s`` after the login, whichever
    comes first. ``step_up_s``: how recent the last authentication must be for an operation marked
    sensitive. Regulation of failed guesses (per account and source): ``free_failures`` without
    delay, then a delay doubling from ``delay_base_s`` up to ``delay_max_s``; ``lockout_after``
    consecutive failures lock that source out of that account for ``lockout_s``; unknown sources
    share ``account_budget_per_hour`` failures per account, while a device that has signed in to
    the account before keeps a budget of its own (an attacker cannot lock the owner out). Passkeys:
    ``rp_id``, ``rp_name`` and the ``origins`` (https, on ``rp_id`` or below it) ceremonies come from.
    """

    issuer: str = field(default="curvemesh", metadata={"max_len": 128})
    access_token_s: int = field(default=900, metadata={"min": 60, "max": 3600})
    session_idle_s: int = field(default=14 * _DAY, metadata={"min": 300, "max": 365 * _DAY})
    session_absolute_s: int = field(default=90 * _DAY, metadata={"min": 3600, "max": 365 * _DAY})
    step_up_s: int = field(default=300, metadata={"min": 30, "max": 3600})
    free_failures: int = field(default=3, metadata={"min": 0, "max": 20})
    delay_base_s: float = field(default=1.0, metadata={"min": 0.0, "max": 60.0})
    delay_max_s: float = field(default=300.0, metadata={"min": 0.0, "max": 3600.0})
    lockout_after: int = field(default=10, metadata={"min": 3, "max": 100})
    lockout_s: float = field(default=900.0, metadata={"min": 60.0, "max": _DAY})
    account_budget_per_hour: int = field(default=100, metadata={"min": 10, "max": 100})
    #: Passkeys (WebAuthn): the relying party id the companion's frontends run under (a domain),
    #: its display name, and the origins a ceremony may come from.
    rp_id: str = "localhost"
    rp_name: str = "curvemesh"
    origins: tuple[str, ...] = ("https://localhost",)

    def __post_init__(self) -> None:
        if not self.issuer or not self.issuer.isprintable() or len(self.issuer) > 128:
            raise ConfigError("authn.issuer: must be 1 to 128 printable characters")
        if self.session_idle_s > self.session_absolute_s:
            raise ConfigError("authn.session_idle_s: must not exceed session_absolute_s")
        if self.delay_base_s > self.delay_max_s:
            raise ConfigError("authn.delay_base_s: must not exceed delay_max_s")
        if not _RP_ID.fullmatch(self.rp_id):
            raise ConfigError("authn.rp_id: a domain name (lower case), such as companion.example or localhost")
        if not self.rp_name or not self.rp_name.isprintable() or len(self.rp_name) > 64:
            raise ConfigError("authn.rp_name: must be 1 to 64 printable characters")
        if not self.origins:
            raise ConfigError("authn.origins: at least one origin, such as https://localhost")
        for origin in self.origins:
            match = _ORIGIN.fullmatch(origin)
            # An origin serves the relying party only if its host is the rp_id or below it.
            if match is None or not (match["host"] == self.rp_id or match["host"].endswith("." + self.rp_id)):
                raise ConfigError(f"authn.origins: {origin!r} is not https://<rp_id or a subdomain>[:port]")

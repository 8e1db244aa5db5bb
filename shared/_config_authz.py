"""``[authz]``: where authz's policies are, how long consent lasts, how many decisions it caches.

Kept beside :mod:`._config` (which includes it in :class:`~shared.MeshConfig`) so that file stays
one concept: the mesh's own sections. Bounds are checked as the file is parsed, with the key named.
What the policy directory holds is authz's to check (it refuses to start on a bad one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._errors import ConfigError

_DAY = 86400


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """``[authz]``.

    ``policy_dir``: the policy directory (schema, categories, policies); relative paths are under
    the home; empty means the directory shipped with authz. ``consent_default_s``: how long a
    consent grant lasts when the grant names no duration (30 days); ``consent_max_s``: the longest
    it may ask for. ``cache_entries``: decisions kept in authz's cache.
    """

    policy_dir: str = ""
    consent_default_s: int = field(default=30 * _DAY, metadata={"min": 60, "max": 365 * _DAY})
    consent_max_s: int = field(default=365 * _DAY, metadata={"min": 60, "max": 5 * 365 * _DAY})
    cache_entries: int = field(default=10_000, metadata={"min": 0, "max": 1_000_000})

    def __post_init__(self) -> None:
        if self.consent_default_s > self.consent_max_s:
            raise ConfigError("authz.consent_default_s: must not exceed consent_max_s")
        if "\0" in self.policy_dir or len(self.policy_dir) > 4096:
            raise ConfigError("authz.policy_dir: a directory path")

"""Argon2id cost profiles and the floor below which one is refused (DESIGN.md, OWASP).

This module sits under both the configuration (which checks every ``[argon2.*]`` profile as it is
parsed) and the crypto recipes (which check the profile they are handed), so neither has to import
the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ._errors import ConfigError

# OWASP Password Storage Cheat Sheet, Argon2id minimums: 19 MiB with t=2, or 46 MiB
# with t=1. Anything weaker makes an offline guess too cheap.
_FLOOR_LOW_MEMORY_KIB: Final = 19 * 1024
_FLOOR_LOW_MEMORY_ITERATIONS: Final = 2
_FLOOR_HIGH_MEMORY_KIB: Final = 46 * 1024
_FLOOR_HIGH_MEMORY_ITERATIONS: Final = 1


@dataclass(frozen=True, slots=True)
class Argon2Profile:
    """An Argon2id cost profile (memory in KiB)."""

    memory_kib: int = field(default=65536, metadata={"min": 8, "max": 4 << 20})
    iterations: int = field(default=1, metadata={"min": 1, "max": 100})
    parallelism: int = field(default=1, metadata={"min": 1, "max": 64})


def check_profile(context: str, profile: Argon2Profile, allow_test: bool) -> None:
    """Refuse an Argon2id profile below the OWASP floor, naming ``argon2.<context>``.

    The floor: at least 19 MiB with 2 iterations, or 46 MiB with 1 iteration.
    ``allow_test`` lifts the floor so tests can use tiny profiles; it never lifts
    Argon2's own minimum of 8 KiB per lane. Raises :class:`~shared.ConfigError`.
    """
    if profile.memory_kib < 8 * profile.parallelism:
        raise ConfigError(f"argon2.{context}.memory_kib: must be at least 8 KiB per lane (8 * parallelism)")
    if allow_test:
        return
    low_memory_ok = profile.memory_kib >= _FLOOR_LOW_MEMORY_KIB and profile.iterations >= _FLOOR_LOW_MEMORY_ITERATIONS
    high_memory_ok = (
        profile.memory_kib >= _FLOOR_HIGH_MEMORY_KIB and profile.iterations >= _FLOOR_HIGH_MEMORY_ITERATIONS
    )
    if not (low_memory_ok or high_memory_ok):
        raise ConfigError(
            f"argon2.{context}: memory_kib={profile.memory_kib} with iterations={profile.iterations} is below "
            f"the OWASP minimum (19456 KiB with 2 iterations, or 47104 KiB with 1)"
        )

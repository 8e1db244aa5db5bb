"""Errors of the storage service, named by who is at fault.

Every storage error is a :class:`~shared.MeshError`, so the runtime answers it with its wire code
and its message only. Messages name *what* is wrong (a store, a namespace's engine, a chunk
number), never the data or a key.
"""

from __future__ import annotations

from shared import Unavailable


class DamagedError(Unavailable):
    """Stored data failed its integrity check: a flipped byte, a truncated or reordered stream, a
    value moved to another key, a wrong key version. Storage's fault (or an attacker's), never the
    caller's; answered ``UNAVAILABLE`` and logged loudly. Nothing is repaired or guessed."""


class MissingKeyError(Unavailable):
    """Data is sealed under a key version storage does not hold (retired, or never released)."""


class StoreError(Unavailable):
    """A store failed for a reason other than damage (disk full, I/O error, closed): ``UNAVAILABLE``."""


class DurabilityLostError(StoreError):
    """A store could not make a write durable (its sync failed). The kernel may have dropped the
    unsynced pages and report the next sync clean (fsyncgate), so the store refuses everything after
    it until storage restarts; the write that failed may or may not be on disk."""

"""authz's allows, remembered by storage for as long as authz says they hold and no change is
announced: most reads of a person's data then cost one question (authn's), not two.

Contract:

- Only allows authz marks reusable are kept (``cache_s`` > 0 in its answer): never a deny, never an
  allow authz must record each time (a sensitive category). Each is kept for at most ``cache_s``
  (authz bounds it by the end of the hour and by the consent grants it relied on) and at most
  :data:`MAX_S`.
- Every entry is dropped as soon as authz announces a change (``authz.changed``: a grant revoked, a
  role taken, policies reloaded). authz publishes before it acknowledges the change, and the broker
  delivers that event on storage's connection ahead of any request sent after the acknowledgement;
  the gate reads the pending events *synchronously* before each lookup (no task in between), so the
  very next request after a revocation is decided again.
- Whenever events may have been lost (the connection to the broker was re-established, the event
  queue overflowed) the cache is emptied before the lookup; without a subscription nothing is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from shared import Subscription

#: The longest an allow is reused, whatever authz says: a bound on any lost announcement.
MAX_S: Final = 60.0
MAX_ENTRIES: Final = 10_000
#: Who announces changes: only its own events count (the broker stamps the publisher).
ANNOUNCER: Final = "authz"

Key = tuple[str, str, str, str, str, str]


class AllowCache:
    """Allows by (principal, action, category, owner, user, purpose); see the module docstring.
    ``clock``: monotonic seconds (injected by tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[Key, float] = {}
        self._subscription: Subscription | None = None
        self._connection: Any = None
        self._generation = -1
        #: Bumped whenever entries are dropped: an answer asked for before a drop is not kept.
        self._epoch = 0

    def follow(self, subscription: Subscription) -> None:
        """Keep entries only while ``subscription`` (to ``authz.changed``) delivers every event."""
        self._subscription = subscription
        self._connection = subscription.client.connection
        self._generation = self._connection.generation
        self._entries.clear()

    def _current(self) -> bool:
        """Apply pending announcements; False when nothing may be reused now."""
        subscription = self._subscription
        if subscription is None:
            return False
        changed = False
        while True:
            try:
                event = subscription.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            changed = changed or event.sender == ANNOUNCER
        generation = self._connection.generation
        if changed or subscription.overflow or generation != self._generation:
            subscription.overflow = 0
            self._generation = generation
            self._entries.clear()
            self._epoch += 1
        return True

    def epoch(self) -> int | None:
        """Take before asking authz; hand to :meth:`keep` with the answer (None: nothing is kept)."""
        return self._epoch if self._current() else None

    def allows(self, key: Key) -> bool:
        """True when an allow for ``key`` is held and still valid."""
        if not self._current():
            return False
        until = self._entries.get(key)
        if until is None:
            return False
        if until <= self.clock():
            del self._entries[key]
            return False
        return True

    def keep(self, key: Key, seconds: float, epoch: int | None) -> None:
        """Remember an allow for ``seconds`` (at most :data:`MAX_S`), unless a change was announced
        since ``epoch`` (from :meth:`epoch`, taken before authz was asked)."""
        if seconds <= 0 or epoch is None or not self._current() or epoch != self._epoch:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # rare: a fresh start is cheaper than tracking use
        self._entries[key] = self.clock() + min(seconds, MAX_S)

    def __len__(self) -> int:
        return len(self._entries)

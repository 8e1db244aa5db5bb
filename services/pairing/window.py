"""The pairing window: one at a time, short, single use, and a budget of guesses.

Pure bookkeeping, no I/O (the entry point and the handlers act on what it decides):

- A window is opened by an operator (``meshctl pair start``) with a one-time code and a deadline.
  While it is open the entry point listens; when it ends (a device joined, the deadline passed, the
  guesses ran out, the operator cancelled, pairing stopped) the entry point closes.
- Every attempt that reaches the key exchange *spends a guess* the moment the mesh answers it,
  whether or not the attempt then finishes: an attacker who learns from the mesh's confirmation
  that a guess was wrong and hangs up has still guessed. ``max_failures`` guesses that did not
  join close the window, and no attempt starts once the budget is spent, so a window gives at most
  ``max_failures`` guesses at a code of 10**8: an online attacker's odds are 3 in 100 million.
- :class:`SourceLimiter` bounds the connections one source address may open per minute.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass, field
from typing import Final

from shared import Conflict, pake

#: How a window ended, as ``pairing.window`` events and ``meshctl pair start`` say it.
ENDINGS: Final = ("joined", "expired", "failures", "cancelled", "stopped")


@dataclass(slots=True)
class Window:
    """One pairing window. ``code`` is the normalised one-time code (never logged)."""

    id: str
    code: str = field(repr=False)
    name: str
    opened_at: float
    expires_at: float
    endpoint: str
    max_failures: int
    guesses: int = 0
    failures: int = 0
    in_progress: int = 0
    refused: int = 0  # connections closed unread (rate limited, busy)
    state: str = "open"  # open | joined | expired | failures | cancelled | stopped
    device: str | None = None

    @property
    def open(self) -> bool:
        return self.state == "open"

    def view(self, now: float) -> dict[str, object]:
        """What an operator may see of the window (never the code)."""
        return {"window": self.id, "state": self.state, "name": self.name, "endpoint": self.endpoint,
                "opened_at": self.opened_at, "expires_at": self.expires_at,
                "remaining_s": max(0.0, round(self.expires_at - now, 3)) if self.open else 0.0,
                "failures": self.failures, "max_failures": self.max_failures, "refused": self.refused,
                "device": self.device}


class WindowDesk:
    """The one window there may be, and the rules of spending its guesses."""

    def __init__(self) -> None:
        self.window: Window | None = None

    def open(self, name: str, ttl_s: float, endpoint: str, max_failures: int, now: float) -> Window:
        """Open a window with a fresh code; ``CONFLICT`` while another is open."""
        current = self.window
        if current is not None and current.open and now < current.expires_at:
            raise Conflict("a pairing window is already open; finish it or run `meshctl pair cancel`")
        self.window = Window(secrets.token_hex(8), pake.normalize_code(pake.new_code()), name, now, now + ttl_s,
                             endpoint, max_failures)
        return self.window

    def current(self, now: float) -> Window | None:
        """The open window, or None (a window past its deadline is ended here as ``expired``)."""
        window = self.window
        if window is None or not window.open:
            return None
        if now >= window.expires_at:
            window.state = "expired"
            return None
        return window

    def spend_guess(self, window: Window) -> bool:
        """Whether an attempt may run the key exchange now; if so, it has spent a guess."""
        if not window.open or window.guesses >= window.max_failures:
            return False
        window.guesses += 1
        window.in_progress += 1
        return True

    def failed(self, window: Window) -> bool:
        """An attempt that spent a guess did not join. True when that closed the window."""
        window.in_progress -= 1
        window.failures += 1
        if window.open and window.failures >= window.max_failures:
            window.state = "failures"
            return True
        return False

    def joined(self, window: Window, device: str) -> None:
        window.in_progress -= 1
        window.state, window.device = "joined", device

    def end(self, window: Window, how: str) -> bool:
        """End an open window (``cancelled``, ``stopped``, ``expired``); False if it had ended."""
        if not window.open:
            return False
        window.state = how
        return True


class SourceLimiter:
    """At most ``per_minute`` connections per source address in any 60 s (a sliding window)."""

    def __init__(self, per_minute: int, max_sources: int = 4096) -> None:
        self.per_minute = per_minute
        self.max_sources = max_sources
        self._recent: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def allow(self, source: str, now: float) -> bool:
        recent = self._recent.get(source)
        if recent is None:
            if len(self._recent) >= self.max_sources:  # bounded memory under a flood of sources
                self._recent.popitem(last=False)
            recent = self._recent[source] = collections.deque()
        self._recent.move_to_end(source)
        while recent and recent[0] <= now - 60.0:
            recent.popleft()
        if len(recent) >= self.per_minute:
            return False
        recent.append(now)
        return True

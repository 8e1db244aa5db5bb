"""How plugin-host answers a plugin that fails: restart with backoff, or disable it (pure, clock given).

A failure is anything that ends a plugin's process other than plugin-host stopping it: a quota
exceeded, a sandbox rule broken, a flood, a protocol violation, a crash. Each one is audited and
raises an alert (the service does that); :class:`FailureBook` decides what happens next. The delay
doubles with each failure inside the window, from ``backoff_min_s`` up to ``backoff_max_s``; the
``max_failures``-th failure inside ``window_s`` seconds disables the plugin until an operator
enables it again (``meshctl plugins enable``), which also clears the book.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class FailureBook:
    """The recent failures of one plugin and what they call for."""

    max_failures: int
    window_s: float
    backoff_min_s: float
    backoff_max_s: float
    times: deque[float] = field(default_factory=deque)

    def failed(self, now: float) -> float | None:
        """Count a failure at ``now``: the delay before the next start, or None to disable the plugin."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        if len(self.times) >= self.max_failures:
            return None
        return min(self.backoff_max_s, self.backoff_min_s * 2 ** (len(self.times) - 1))

    def recent(self, now: float) -> int:
        """Failures inside the window as of ``now``."""
        return sum(1 for t in self.times if t > now - self.window_s)

    def clear(self) -> None:
        self.times.clear()

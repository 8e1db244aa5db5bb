"""A token bucket with an injected clock, so tests control time."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` spends one if it can."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now`` (seconds, monotonic); False if the bucket is empty."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

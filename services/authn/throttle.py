"""Brute-force regulation for logins: delays, lockouts and a per-account budget, on an injected clock.

The caller asks :meth:`Throttle.check` before evaluating a guess (password, TOTP or recovery code
alike), then reports :meth:`Throttle.failure` or :meth:`Throttle.success`. Sources are what the
caller can tell apart: an enrolled device's id for a known device, the peer address otherwise.
Key a login for an unknown username exactly like one for a real account (the skeleton of the name
as typed), so that being throttled never tells which accounts exist.

Design rule (issue 14): an attacker must not be able to lock the owner out for good. So every
(account, source) pair has its own delays and lockout; the unknown sources of an account share one
hourly budget of failures, and a known device (one that has logged in to this account before) is
never charged to nor stopped by that budget. Rotating sources buys an attacker at most the budget;
spending the budget stops unknown sources only, and only until the hour frees up.

Memory stays bounded: state is forgotten lazily once it can no longer delay or lock anything, and
each table (known-device pairs, unknown-source pairs, account budgets) holds at most
``max_tracked`` entries; a budget keeps at most ``account_budget_per_hour`` failure times, 8 bytes
each. Forgetting failures to make room would help an
attacker, so when a table is full, unknown sources and accounts that have no entry of their own
are not given one: they all share a single overflow entry (one pair, one budget), as if they were
one attacker. They are then throttled together, pessimistically; known devices are unaffected (a
full known-device table evicts its oldest entry, which only forgets an enrolled device's failures:
an attacker cannot create those entries without enrolled devices).
"""

from __future__ import annotations

import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shared import RateLimited

HOUR_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """The limits. Delays start after ``free_failures`` consecutive failures of a pair and double
    with each further one, from ``base_delay_s`` up to ``max_delay_s``; ``lockout_after``
    consecutive failures lock the pair for ``lockout_s``. The unknown sources of an account may
    fail ``account_budget_per_hour`` times in any rolling hour, together."""

    free_failures: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    lockout_after: int = 10
    lockout_s: float = 900.0
    account_budget_per_hour: int = 100
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        if self.free_failures < 0 or self.lockout_after < 1 or self.account_budget_per_hour < 1:
            raise ValueError("throttle policy: counts must be positive (free_failures may be 0)")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.lockout_s < 0 or self.max_tracked < 1:
            raise ValueError("throttle policy: durations must not be negative and max_tracked must be positive")


class Throttled(RateLimited):
    """The attempt must not be evaluated now; retry after ``retry_after_s`` seconds.

    ``reason`` names the limit: ``"delay"``, ``"lockout"`` or ``"account budget"``.
    """

    def __init__(self, retry_after_s: float, reason: str) -> None:
        super().__init__(f"too many failed attempts ({reason}): try again in {math.ceil(retry_after_s)} s")
        self.retry_after_s = retry_after_s
        self.reason = reason


@dataclass(slots=True)
class _Pair:
    """Consecutive failures of one (account, source) pair."""

    failures: int = 0
    last: float = -math.inf
    locked_until: float = -math.inf


class Throttle:
    """Delays, lockouts and account budgets for ``policy``, reading time from ``clock``.

    ``clock`` returns monotonic seconds; tests pass a fake one. Not thread-safe: the service calls
    it from its single event loop.
    """

    def __init__(self, policy: ThrottlePolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        # A pair idle this long has no delay and no lockout left to serve.
        self._forget_after = max(policy.lockout_s, policy.max_delay_s)
        # Ordered by the time of the last failure (entries move to the end), so expired ones are
        # always at the front and pruning stops at the first live one.
        self._known: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._unknown: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._budgets: OrderedDict[str, array[float]] = OrderedDict()
        self._overflow_pair = _Pair()
        self._overflow_budget: array[float] = array("d")

    def check(self, account: str, source: str, *, known_device: bool) -> None:
        """Raise :class:`Throttled` if a guess from ``source`` for ``account`` must not be evaluated now.

        When several limits apply, the one that ends last is reported.
        """
        now = self._clock()
        self._prune(now)
        waits: list[tuple[float, str]] = []
        pair = self._find_pair(account, source, known_device)
        if pair is not None:
            if now < pair.locked_until:
                waits.append((pair.locked_until - now, "lockout"))
            elif pair.failures > self._policy.free_failures:
                ready = pair.last + self._delay(pair.failures)
                if now < ready:
                    waits.append((ready - now, "delay"))
        if not known_device:
            stamps = self._find_budget(account, now)
            if stamps is not None and len(stamps) >= self._policy.account_budget_per_hour:
                # The budget frees up when the oldest of the last ``budget`` failures is an hour old.
                waits.append((stamps[0] + HOUR_S - now, "account budget"))
        if waits:
            raise Throttled(*max(waits))

    def failure(self, account: str, source: str, *, known_device: bool) -> None:
        """Record a failed guess from ``source`` for ``account``."""
        now = self._clock()
        self._prune(now)
        key = (account, source)
        table = self._known if known_device else self._unknown
        pair = self._find_pair(account, source, known_device)
        if pair is None:
            pair = self._new_pair(account, source, known_device)
        elif key in table:
            # Keep each table ordered by last failure: pruning stops at the first live entry.
            table.move_to_end(key)
        pair.failures += 1
        pair.last = now
        if pair.failures >= self._policy.lockout_after:
            pair.locked_until = now + self._policy.lockout_s
        if known_device:
            return
        stamps = self._find_budget(account, now)
        if stamps is None:
            stamps = self._budgets[account] = array("d")
        elif account in self._budgets:
            self._budgets.move_to_end(account)
        stamps.append(now)
        # Only the last ``budget`` failures can decide whether the budget is spent.
        if len(stamps) > self._policy.account_budget_per_hour:
            stamps.pop(0)

    def success(self, account: str, source: str) -> None:
        """Clear the consecutive failures of (``account``, ``source``); the account budget stays.

        A source throttled through the overflow entry has nothing of its own to clear, and one
        success must not free every source that shares the overflow.
        """
        self._prune(self._clock())
        self._known.pop((account, source), None)
        self._unknown.pop((account, source), None)

    def tracked(self) -> int:
        """How many entries are held (pairs and account budgets), for metrics and tests."""
        return len(self._known) + len(self._unknown) + len(self._budgets)

    def _delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures, counted from the last one."""
        doublings = min(failures - self._policy.free_failures - 1, 1023)  # 2.0**1024 overflows
        return min(self._policy.base_delay_s * 2.0**doublings, self._policy.max_delay_s)

    def _find_pair(self, account: str, source: str, known_device: bool) -> _Pair | None:
        """The pair's own state; the overflow's if it has none and the table is full; else None."""
        key = (account, source)
        table = self._known if known_device else self._unknown
        pair = table.get(key)
        if pair is not None:
            return pair
        if not known_device and len(self._unknown) >= self._policy.max_tracked:
            return self._overflow_pair
        return None

    def _new_pair(self, account: str, source: str, known_device: bool) -> _Pair:
        """A fresh entry for a pair with no state (never reached for unknown sources when full)."""
        table = self._known if known_device else self._unknown
        if len(table) >= self._policy.max_tracked:
            table.popitem(last=False)
        pair = table[(account, source)] = _Pair()
        return pair

    def _find_budget(self, account: str, now: float) -> array[float] | None:
        """The account's unknown-source failure times in the last hour, oldest first; the overflow's
        if it has none and the table is full; else None."""
        stamps = self._budgets.get(account)
        if stamps is None:
            if len(self._budgets) < self._policy.max_tracked:
                return None
            stamps = self._overflow_budget
        self._drop_older_than(stamps, now - HOUR_S)
        return stamps

    def _prune(self, now: float) -> None:
        """Forget pairs that can no longer delay or lock, and budgets with no failure in the hour."""
        cutoff = now - self._forget_after
        for table in (self._known, self._unknown):
            while table and next(iter(table.values())).last <= cutoff:
                table.popitem(last=False)
        if self._overflow_pair.failures and self._overflow_pair.last <= cutoff:
            self._overflow_pair = _Pair()
        hour_ago = now - HOUR_S
        while self._budgets and _last(next(iter(self._budgets.values()))) <= hour_ago:
            self._budgets.popitem(last=False)
        self._drop_older_than(self._overflow_budget, hour_ago)

    @staticmethod
    def _drop_older_than(stamps: array[float], cutoff: float) -> None:
        while stamps and stamps[0] <= cutoff:
            stamps.pop(0)


def _last(stamps: array[float]) -> float:
    return stamps[-1] if stamps else -math.inf

"""Brute-force regulation on a fake clock: delays that double and cap, lockouts that end, the
per-account budget against source rotation (which a known device is never stopped by), and memory
that stays bounded, pessimistically, under 200k sources."""

from __future__ import annotations

import pytest

from services.authn.throttle import HOUR_S, Throttle, Throttled, ThrottlePolicy
from shared import RateLimited


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_of(throttle: Throttle, account: str, source: str, *, known: bool = False) -> tuple[float, str] | None:
    """The (retry_after_s, reason) check raises, or None when the attempt may go ahead."""
    try:
        throttle.check(account, source, known_device=known)
    except Throttled as exc:
        return exc.retry_after_s, exc.reason
    return None


def fail(throttle: Throttle, account: str, source: str, times: int = 1, *, known: bool = False) -> None:
    for _ in range(times):
        throttle.failure(account, source, known_device=known)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_free_failures_then_delays_double_and_cap(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(lockout_after=1000), clock)
    fail(throttle, "alice", "10.0.0.1", 3)
    assert wait_of(throttle, "alice", "10.0.0.1") is None
    delays = []
    for _ in range(12):
        fail(throttle, "alice", "10.0.0.1")
        wait = wait_of(throttle, "alice", "10.0.0.1")
        assert wait is not None and wait[1] == "delay"
        delays.append(wait[0])
        clock.advance(wait[0] - 0.001)
        assert wait_of(throttle, "alice", "10.0.0.1") is not None
        clock.advance(0.001)
        assert wait_of(throttle, "alice", "10.0.0.1") is None
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_lockout_after_ten_consecutive_failures_ends_after_lockout_s(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    for _ in range(9):
        fail(throttle, "alice", "10.0.0.1")
        wait = wait_of(throttle, "alice", "10.0.0.1")
        clock.advance(wait[0] if wait else 0.0)
    fail(throttle, "alice", "10.0.0.1")
    assert wait_of(throttle, "alice", "10.0.0.1") == (900.0, "lockout")
    clock.advance(899.5)
    assert wait_of(throttle, "alice", "10.0.0.1") == (0.5, "lockout")
    clock.advance(0.5)
    assert wait_of(throttle, "alice", "10.0.0.1") is None
    # The lockout served, the pair starts afresh: its next failures are free again.
    fail(throttle, "alice", "10.0.0.1", 3)
    assert wait_of(throttle, "alice", "10.0.0.1") is None


def test_success_clears_the_pair(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    fail(throttle, "alice", "10.0.0.1", 6)
    assert wait_of(throttle, "alice", "10.0.0.1") == (4.0, "delay")
    throttle.success("alice", "10.0.0.1")
    assert wait_of(throttle, "alice", "10.0.0.1") is None
    fail(throttle, "alice", "10.0.0.1", 3)
    assert wait_of(throttle, "alice", "10.0.0.1") is None


def test_delays_belong_to_one_pair_and_checking_records_nothing(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    fail(throttle, "alice", "10.0.0.1", 10)
    assert wait_of(throttle, "alice", "10.0.0.1") == (900.0, "lockout")
    assert wait_of(throttle, "alice", "10.0.0.2") is None
    assert wait_of(throttle, "bob", "10.0.0.1") is None
    for _ in range(1000):
        assert wait_of(throttle, "bob", "10.0.0.3") is None


def test_source_rotation_spends_the_account_budget_but_a_known_device_gets_in(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    first = clock.now
    for i in range(100):
        assert wait_of(throttle, "alice", f"198.51.100.{i}") is None
        fail(throttle, "alice", f"198.51.100.{i}")
        clock.advance(1.0)
    wait = wait_of(throttle, "alice", "203.0.113.7")
    assert wait == (first + HOUR_S - clock.now, "account budget")
    # The owner's device is not charged to, nor stopped by, the budget.
    assert wait_of(throttle, "alice", "device-1", known=True) is None
    fail(throttle, "alice", "device-1", known=True)
    throttle.success("alice", "device-1")
    assert wait_of(throttle, "alice", "device-1", known=True) is None
    # Other accounts have budgets of their own.
    assert wait_of(throttle, "bob", "203.0.113.7") is None


def test_the_budget_frees_up_as_the_hour_rolls(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    for i in range(100):
        fail(throttle, "alice", f"198.51.100.{i}")
        clock.advance(1.0)
    wait = wait_of(throttle, "alice", "203.0.113.7")
    assert wait is not None and wait[1] == "account budget"
    clock.advance(wait[0])
    # The oldest failure is an hour old: one guess is free again, then the next one must wait.
    assert wait_of(throttle, "alice", "203.0.113.7") is None
    fail(throttle, "alice", "203.0.113.7")
    assert wait_of(throttle, "alice", "203.0.113.8") == (1.0, "account budget")
    clock.advance(HOUR_S)
    assert wait_of(throttle, "alice", "203.0.113.8") is None


def test_a_known_device_has_its_own_delays_and_lockout(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    fail(throttle, "alice", "device-1", 4, known=True)
    assert wait_of(throttle, "alice", "device-1", known=True) == (1.0, "delay")
    fail(throttle, "alice", "device-1", 6, known=True)
    assert wait_of(throttle, "alice", "device-1", known=True) == (900.0, "lockout")
    assert wait_of(throttle, "alice", "device-2", known=True) is None
    # Known-device failures never spend the budget unknown sources share.
    fail(throttle, "alice", "device-3", 9, known=True)
    fail(throttle, "alice", "device-4", 9, known=True)
    assert wait_of(throttle, "alice", "198.51.100.1") is None
    clock.advance(900.0)
    assert wait_of(throttle, "alice", "device-1", known=True) is None


def test_the_longest_wait_is_reported(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(free_failures=10, account_budget_per_hour=10), clock)
    fail(throttle, "alice", "198.51.100.1", 10)  # locked for 900 s, and the budget is spent for an hour
    assert wait_of(throttle, "alice", "198.51.100.1") == (HOUR_S, "account budget")
    assert wait_of(throttle, "alice", "device-1", known=True) is None


def test_throttled_is_a_one_line_rate_limited_error(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(), clock)
    fail(throttle, "alice", "10.0.0.1", 10)
    with pytest.raises(RateLimited) as caught:
        throttle.check("alice", "10.0.0.1", known_device=False)
    assert isinstance(caught.value, Throttled)
    assert str(caught.value) == "too many failed attempts (lockout): try again in 900 s"


@pytest.mark.parametrize(
    "changes",
    [
        {"lockout_after": 0},
        {"account_budget_per_hour": 0},
        {"free_failures": -1},
        {"lockout_s": -1.0},
        {"max_tracked": 0},
    ],
)
def test_nonsense_policies_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="throttle policy"):
        ThrottlePolicy(**changes)  # type: ignore[arg-type]


def test_memory_stays_bounded_under_200k_sources(clock: Clock) -> None:
    policy = ThrottlePolicy()
    throttle = Throttle(policy, clock)
    for i in range(200_000):
        throttle.failure(f"user-{i}", f"source-{i}", known_device=False)
    # Two full tables (unknown pairs and account budgets), nothing evicted, the rest in the overflow.
    assert throttle.tracked() == 2 * policy.max_tracked
    assert wait_of(throttle, "user-0", "source-0") is None  # tracked on its own: one failure
    fresh = wait_of(throttle, "someone", "new-source")
    assert fresh is not None and fresh[1] == "account budget"  # 100k overflowed failures, one budget
    assert wait_of(throttle, "someone", "device-1", known=True) is None
    # Once nothing can delay, lock or count any more, it is all forgotten.
    clock.advance(HOUR_S)
    assert wait_of(throttle, "someone", "new-source") is None
    assert throttle.tracked() == 0


def test_a_full_table_throttles_untracked_unknown_sources_as_one(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(max_tracked=5), clock)
    for i in range(5):
        fail(throttle, "alice", f"tracked-{i}")
    assert throttle.tracked() == 5 + 1
    # Ten new sources, one failure each: together they are one source with ten failures.
    for i in range(4):
        fail(throttle, "alice", f"rotating-{i}")
    assert wait_of(throttle, "alice", "never-seen") == (1.0, "delay")
    clock.advance(1.0)
    for i in range(4, 10):
        fail(throttle, "alice", f"rotating-{i}")
    assert wait_of(throttle, "alice", "never-seen") == (900.0, "lockout")
    assert wait_of(throttle, "bob", "never-seen-either") == (900.0, "lockout")
    # Sources with entries of their own, and known devices, are judged on their own record.
    assert wait_of(throttle, "alice", "tracked-0") is None
    assert wait_of(throttle, "alice", "device-1", known=True) is None
    # One success does not free every source sharing the overflow.
    throttle.success("alice", "rotating-3")
    assert wait_of(throttle, "alice", "never-seen") == (900.0, "lockout")
    clock.advance(900.0)
    assert wait_of(throttle, "alice", "never-seen") is None
    assert throttle.tracked() == 1  # alice's budget still counts the last hour


def test_a_full_budget_table_shares_one_budget(clock: Clock) -> None:
    policy = ThrottlePolicy(free_failures=1000, lockout_after=1000, account_budget_per_hour=5, max_tracked=3)
    throttle = Throttle(policy, clock)
    for i in range(3):
        fail(throttle, f"user-{i}", f"source-{i}")
    for i in range(3, 8):
        fail(throttle, f"user-{i}", f"source-{i}")
    assert wait_of(throttle, "user-99", "source-99") == (HOUR_S, "account budget")
    assert wait_of(throttle, "user-0", "source-0") is None
    assert wait_of(throttle, "user-99", "device-1", known=True) is None


def test_a_full_known_device_table_evicts_its_oldest(clock: Clock) -> None:
    throttle = Throttle(ThrottlePolicy(max_tracked=2), clock)
    fail(throttle, "alice", "device-1", 10, known=True)
    fail(throttle, "alice", "device-2", 10, known=True)
    fail(throttle, "alice", "device-3", 10, known=True)
    assert wait_of(throttle, "alice", "device-1", known=True) is None  # forgotten to make room
    assert wait_of(throttle, "alice", "device-3", known=True) == (900.0, "lockout")
    assert throttle.tracked() == 2

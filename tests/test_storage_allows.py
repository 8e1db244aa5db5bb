"""storage's reuse of authz's allows (services/storage/core/decisions.py), as plain logic: what is
kept, for how long, and everything that drops it. The gate using it runs for real in
tests/test_authz_enforcement.py (revocations, role changes and reloads seen on the next request)."""

from __future__ import annotations

from types import SimpleNamespace

from services.storage.core.decisions import MAX_S, AllowCache
from shared import Event, Subscription

KEY = ("service:notes", "read", "memories", "u1", "u1", "")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def following() -> tuple[AllowCache, Subscription, SimpleNamespace, Clock]:
    # The subscription is the runtime's own class; only the client it reports its connection
    # generation from stands in for a connected one.
    connection = SimpleNamespace(generation=1)
    subscription = Subscription(SimpleNamespace(connection=connection), "authz.changed")  # type: ignore[arg-type]
    clock = Clock()
    cache = AllowCache(clock)
    cache.follow(subscription)
    return cache, subscription, connection, clock


def test_nothing_is_kept_without_the_announcements() -> None:
    cache = AllowCache()
    cache.keep(KEY, 30, cache.epoch())
    assert not cache.allows(KEY) and len(cache) == 0


def test_an_allow_is_kept_for_what_authz_said_and_at_most_max_s() -> None:
    cache, _, _, clock = following()
    cache.keep(KEY, 30, cache.epoch())
    assert cache.allows(KEY)
    clock.now += 30
    assert not cache.allows(KEY)
    cache.keep(KEY, 3600, cache.epoch())
    clock.now += MAX_S - 0.001
    assert cache.allows(KEY)
    clock.now += 0.001
    assert not cache.allows(KEY)
    cache.keep(KEY, 0, cache.epoch())  # authz records it every time: never reused
    assert not cache.allows(KEY)


def test_an_announcement_a_lost_event_or_a_reconnection_drops_everything() -> None:
    cache, subscription, connection, _ = following()
    cache.keep(KEY, 30, cache.epoch())
    subscription._offer(Event("authz.changed", "someone-else", {"what": "consent"}))
    assert cache.allows(KEY)  # only authz's own announcements count
    subscription._offer(Event("authz.changed", "authz", {"what": "consent"}))
    assert not cache.allows(KEY)
    cache.keep(KEY, 30, cache.epoch())
    subscription.overflow = 1
    assert not cache.allows(KEY) and subscription.overflow == 0
    cache.keep(KEY, 30, cache.epoch())
    connection.generation = 2
    assert not cache.allows(KEY)


def test_an_answer_asked_for_before_a_change_is_not_kept() -> None:
    cache, subscription, _, _ = following()
    epoch = cache.epoch()  # storage asks authz ...
    subscription._offer(Event("authz.changed", "authz", {"what": "roles"}))  # ... a change is announced ...
    cache.keep(KEY, 30, epoch)  # ... and the answer, made before it, arrives
    assert not cache.allows(KEY)

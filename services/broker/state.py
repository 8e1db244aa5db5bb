"""The broker's bookkeeping: connected peers, registrations, requests in flight, counters."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from shared import Certificate, Grant, TokenBucket


@dataclass(slots=True)
class Counters:
    """Per-identity traffic counters, shown by ``mesh.stats``."""

    msgs_in: int = 0
    msgs_out: int = 0
    denies: int = 0
    errors: int = 0
    rate_limited: int = 0
    reported_rate_limited: int = 0


@dataclass(slots=True)
class Peer:
    """One authenticated connection: its libzmq routing id and its connection token
    (``X-Conn``, see :mod:`.connections`). Everything below belongs to that connection and
    is dropped with it; a later connection is never given it, whatever its routing id."""

    rid: bytes
    conn: str
    cert: Certificate
    grant: Grant
    bucket: TokenBucket
    counters: Counters
    connected_at: float
    last_seen: float
    #: Set once the connection registered; kept while a stopping service drains its
    #: in-flight requests after ``bye`` (it is then no longer in the broker's registry).
    registration: Registration | None = None
    said_goodbye: bool = False
    subscriptions: set[str] = field(default_factory=set)
    # Call decisions are cached per peer: the grant is immutable for the life of the
    # connection (a config change needs a broker restart, a revocation drops the peer).
    call_cache: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class Registration:
    """A service registered under its own name on one connection."""

    name: str
    peer: Peer
    registered_at: float
    in_flight: set[int] = field(default_factory=set)
    latencies: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2048))
    requests: int = 0
    errors: int = 0


@dataclass(slots=True)
class InFlight:
    """A request forwarded to a service and not yet answered. ``caller`` is None for the
    broker's own shipment of spooled audit records to ``audit.append`` (see :mod:`.upkeep`)."""

    caller: Peer | None
    caller_id: int
    service: Registration
    deadline: float
    started: float


def percentile(values: collections.deque[float] | list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, or None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]

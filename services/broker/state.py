"""The broker's bookkeeping: connected peers, registrations, requests in flight, counters, the
connections that ended and the request ids in use.

:class:`MeshState` owns every table and keeps them consistent with each other. It is pure
bookkeeping: it holds no socket and sends nothing, so an operation that ends requests (a
deregistration) returns them and its caller answers their callers (see :mod:`.outbox`). Every
other part of the broker reads and changes the mesh through it; it calls none of them.
"""

from __future__ import annotations

import collections
import heapq
import os
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Final

import structlog

from shared import Certificate, Grant, MeshConfig, RateLimit, TokenBucket, compile_grant

log = structlog.get_logger("broker")

#: The counters of ``mesh.stats`` ``totals``, in the order it shows them.
TOTALS: Final = ("undeliverable", "bad_frames", "expired", "stray_replies", "revoked_refused",
                 "custom_routing_id_refused", "internal_errors", "expired_refused", "audit_ship_failures")
#: Why handshakes failed, as ``mesh.stats`` ``handshake_failures`` counts them.
HANDSHAKE_REASONS: Final = ("no_detail", "protocol", "auth")
#: Call decisions cached per peer at most (a peer cannot grow the cache without bound).
CALL_CACHE_MAX: Final = 1024
#: Slack of the deadline heap over what is in flight before it is compacted.
DEADLINE_SLACK: Final = 1024
#: How many ended connections are remembered (their routing id and token).
ENDED_MAX: Final = 10_000
#: Request ids drawn from the OS at once.
_ID_BATCH: Final = 512


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
    # Call decisions are cached per peer, because the ACL is evaluated on every request. The
    # cache belongs to the grant: whoever replaces the grant (a configuration reload) empties it.
    call_cache: dict[str, bool] = field(default_factory=dict)
    #: SHA-256 of the CURVE public key, stamped on every request this peer makes (``fp``) so that
    #: a service can bind what it issues (authn's tokens) to the key itself, not just the name.
    #: Computed once here: the request path must not hash per message.
    fingerprint: str = ""
    #: Where the connection comes from, as libzmq reports it (``Peer-Address``): an IP address over
    #: tcp (a detached device), ``localhost:uid:gid:pid`` or empty over ipc. Read once, at admission.
    address: str = ""


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
    broker's own shipment of spooled audit records to ``audit.append`` (see :mod:`.auditing`)."""

    caller: Peer | None
    caller_id: int
    service: Registration
    deadline: float
    started: float


class RequestIds:
    """Broker-assigned request ids: 63-bit values from the OS CSPRNG, never 0, never one
    that is in flight. Random bytes are drawn in batches so the hot path only pops a list."""

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[int] = []

    def take(self, in_use: Container[int]) -> int:
        """A new id that is not in ``in_use`` (the in-flight table)."""
        pool = self._pool
        while True:
            if not pool:
                pool.extend(memoryview(os.urandom(8 * _ID_BATCH)).cast("Q").tolist())
            value = pool.pop() >> 1  # 63 bits: fits a signed 64-bit integer everywhere
            if value and value not in in_use:
                return value


class EndedConnections:
    """The most recent :data:`ENDED_MAX` connections the broker dropped: routing id →
    (token, whether it was expired for missed heartbeats). Older entries are forgotten
    first; a forgotten id is served as a new connection, which inherits nothing."""

    __slots__ = ("_ended",)

    def __init__(self) -> None:
        self._ended: dict[bytes, tuple[str, bool]] = {}

    def remember(self, rid: bytes, token: str, *, expired: bool) -> None:
        ended = self._ended
        ended.pop(rid, None)  # re-inserted last: the newest entry is the last evicted
        ended[rid] = (token, expired)
        if len(ended) > ENDED_MAX:
            del ended[next(iter(ended))]

    def get(self, rid: bytes) -> tuple[str, bool] | None:
        return self._ended.get(rid)

    def forget(self, rid: bytes) -> None:
        self._ended.pop(rid, None)

    def __len__(self) -> int:
        return len(self._ended)


class MeshState:
    """Every table of the running broker. The containers are created once and never replaced,
    so the hot path may keep references to them; ``config`` is the configuration in force for
    the ACL and the rate limits (a reload replaces it through :meth:`apply`)."""

    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        self.peers: dict[bytes, Peer] = {}
        self.services: dict[str, Registration] = {}
        self.in_flight: dict[int, InFlight] = {}
        #: (deadline, broker id), a heap; answered requests leave theirs behind (lazy deletion).
        self.deadlines: list[tuple[float, int]] = []
        self.counters: dict[str, Counters] = {}
        #: One token bucket per identity, shared by all its connections, and the role it was sized for.
        self.buckets: dict[str, tuple[TokenBucket, str]] = {}
        #: Connections dropped since start (bounded): told to reconnect if they speak again
        #: after expiry, and their routing ids refused to any other connection.
        self.ended = EndedConnections()
        #: Device identity -> (monotonic time last heard, address) of its last connection that
        #: ended: what ``mesh.devices.seen`` reports for a device not connected now. Written only
        #: when a device's connection ends, never on the message path.
        self.devices_gone: dict[str, tuple[float, str]] = {}
        self.totals: dict[str, int] = dict.fromkeys(TOTALS, 0)
        self.handshake_failures: dict[str, int] = dict.fromkeys(HANDSHAKE_REASONS, 0)
        self.ids = RequestIds()

    # -- peers and registrations ----------------------------------------------

    def new_peer(self, rid: bytes, conn: str, cert: Certificate, now: float) -> Peer:
        """Track a connection: its rights compiled from the configuration in force."""
        counters = self.counters.setdefault(cert.name, Counters())
        # One bucket per identity: opening more connections must not multiply its rate.
        held = self.buckets.get(cert.name)
        if held is None:
            limit = self._limit(cert.name, cert.role)
            held = self.buckets[cert.name] = (TokenBucket(limit.rate, limit.burst, now), cert.role)
        peer = Peer(rid, conn, cert, compile_grant(self.config.acl, cert.name, cert.role), held[0], counters,
                    now, now, fingerprint=cert.fingerprint)
        self.peers[rid] = peer
        self.ended.forget(rid)
        return peer

    def forget(self, peer: Peer, *, expired: bool = False) -> Registration | None:
        """Stop tracking ``peer`` (its subscriptions and call cache go with it) and remember its
        routing id and token; return its registration, which the caller must deregister. None
        when it was already dropped or never registered."""
        if self.peers.get(peer.rid) is not peer:
            return None
        del self.peers[peer.rid]
        self.ended.remember(peer.rid, peer.conn, expired=expired)
        if peer.cert.role == "device":
            self.devices_gone[peer.cert.name] = (peer.last_seen, peer.address)
        return peer.registration

    def deregister(self, registration: Registration, reason: str) -> list[InFlight]:
        """Remove a registration and return the requests in flight to it, which die with it."""
        if self.services.get(registration.name) is registration:
            del self.services[registration.name]
            log.info("service_deregistered", service=registration.name, reason=reason)
        registration.peer.registration = None
        orphans = [entry for entry in (self.in_flight.pop(i, None) for i in sorted(registration.in_flight))
                   if entry is not None]
        registration.in_flight.clear()
        return orphans

    # -- requests in flight -------------------------------------------------------

    def track(self, broker_id: int, caller: Peer | None, caller_id: int, registration: Registration,
              ttl_ms: int, now: float) -> InFlight:
        """Remember a request forwarded to ``registration`` under ``broker_id`` (taken from
        :attr:`ids` before it was sent) until it is answered or its ttl passes."""
        in_flight = self.in_flight
        deadline = now + ttl_ms / 1000.0
        registration.in_flight.add(broker_id)
        in_flight[broker_id] = entry = InFlight(caller, caller_id, registration, deadline, now)
        deadlines = self.deadlines
        heapq.heappush(deadlines, (deadline, broker_id))
        if len(deadlines) > 2 * len(in_flight) + DEADLINE_SLACK:
            # Compact in place (the list is shared): the heap stays proportional to what is
            # really in flight however many answered requests left their deadline behind.
            deadlines[:] = [(e.deadline, i) for i, e in in_flight.items()]
            heapq.heapify(deadlines)
        return entry

    def expired(self, now: float) -> list[tuple[int, InFlight]]:
        """Remove and return the requests whose deadline has passed, with their broker ids."""
        deadlines, out = self.deadlines, []
        while deadlines and deadlines[0][0] <= now:
            _, broker_id = heapq.heappop(deadlines)
            entry = self.in_flight.pop(broker_id, None)
            if entry is not None:
                entry.service.in_flight.discard(broker_id)
                out.append((broker_id, entry))
        return out

    # -- configuration ------------------------------------------------------------

    def apply(self, config: MeshConfig, now: float) -> None:
        """Put ``config``'s ACL and rate limits in force for every tracked connection at once.

        Each peer's grant is compiled again and its call cache emptied, so a right taken away is
        refused on the very next message; a subscription the new grant no longer allows is
        dropped. A bucket keeps the tokens it holds (up to its new burst), so a reload neither
        refills a limited identity nor takes away what it saved."""
        self.config = config
        for peer in self.peers.values():
            peer.grant = grant = compile_grant(config.acl, peer.cert.name, peer.cert.role)
            peer.call_cache = {}
            # "" is how a "*" subscription is kept (see routing); every other entry is a prefix.
            kept = {p for p in peer.subscriptions if grant.may_subscribe(p or "*")}
            if kept != peer.subscriptions:
                log.info("subscriptions_withdrawn", identity=peer.cert.name,
                         topics=sorted(peer.subscriptions - kept))
                peer.subscriptions = kept
        for name, (bucket, role) in self.buckets.items():
            limit = self._limit(name, role)
            tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * bucket.rate)
            bucket.rate, bucket.burst = limit.rate, float(limit.burst)
            bucket.tokens, bucket.stamp = min(tokens, bucket.burst), now

    def _limit(self, name: str, role: str) -> RateLimit:
        limits = self.config.limits
        return limits.identity.get(name) or limits.role.get(role) or limits.default


def percentile(values: collections.deque[float] | list[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, or None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]

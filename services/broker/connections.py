"""What ties broker state to one connection rather than to its routing id.

libzmq's ROUTER names each connection with a 5-byte routing id (0x00, then a 32-bit
counter), but a peer may choose its own id, including one of exactly that shape, and
the ZMTP ``Identity`` property that would tell them apart reads as ``''`` either way
(``zmq_msg_gets`` stops at the leading NUL). So the broker's ZAP handler gives every
handshake a random connection token, carried as the ``X-Conn`` metadata property on
every message of that connection; a :class:`~.state.Peer` records it, and a message
whose (routing id, token) pair is not the tracked one comes from another connection.

This module also holds the broker's unpredictable request ids and the seeding of the
counter libzmq starts its generated routing ids from.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
from collections.abc import Container
from typing import TYPE_CHECKING, Final

import structlog
import zmq

from shared import Certificate

if TYPE_CHECKING:
    from .core import Broker
    from .state import Peer

log = structlog.get_logger("broker")

#: The ZAP metadata property carrying the connection token.
CONN_PROPERTY: Final = "X-Conn"
#: Told to a connection the broker dropped for missing heartbeats; the client reconnects.
EXPIRED_MESSAGE: Final = "connection expired after missed heartbeats; reconnect"
#: How many ended connections are remembered (their routing id and token).
ENDED_MAX: Final = 10_000
_ID_BATCH: Final = 512


def new_token() -> str:
    """A fresh connection token: 128 random bits as hex. Text without NUL bytes, because
    ``zmq_msg_gets`` returns metadata values as C strings."""
    return secrets.token_hex(16)


def generated_shape(rid: bytes) -> bool:
    """Whether ``rid`` has the shape of an id libzmq generates (0x00 + 4 bytes).

    Necessary, not sufficient: a peer can choose an id of this shape too."""
    return len(rid) == 5 and rid[0] == 0


class Admission:
    """Mixin of :class:`~services.broker.core.Broker`: the first message of a connection
    the broker does not track under its (routing id, token) pair."""

    def _admit(self: Broker, rid: bytes, conn: str, cert: Certificate, header_frame: zmq.Frame,
               now: float) -> Peer | None:
        """Track a connection the broker does not know yet, or refuse its message (None).

        Refused: a routing id libzmq would never generate; an id tracked or remembered for
        another connection (libzmq's ids do not repeat within 2**32 connections, so the id
        was chosen); an expired connection speaking again (told to reconnect)."""
        if not generated_shape(rid):
            self._refuse_chosen_id(rid, header_frame)
            return None
        holder = self.peers.get(rid)
        if holder is not None:
            # Another connection now holds the id the tracked one had, so that one is gone:
            # its state dies now (deregistered, its in-flight requests failed or dropped),
            # before anything of it could reach the newcomer.
            self._drop_peer(holder, "routing id reused by another connection")
            self._refuse_chosen_id(rid, header_frame)
            return None
        ended = self.ended.get(rid)
        if ended is not None:
            token, expired = ended
            if token != conn:
                self._refuse_chosen_id(rid, header_frame)
                return None
            if expired:
                self.totals["expired_refused"] += 1
                self._refuse(rid, header_frame, "UNAVAILABLE", EXPIRED_MESSAGE)
                return None
            # The same connection again (its key revoked, then allowed again): it starts
            # afresh, with nothing of what it had before.
        return self._new_peer(rid, conn, cert, now)

    def _refuse_chosen_id(self: Broker, rid: bytes, header_frame: zmq.Frame) -> None:
        self.totals["custom_routing_id_refused"] += 1
        self._refuse(rid, header_frame, "BAD_REQUEST", "custom routing ids are not allowed")


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


def seed_routing_id_counter() -> bool:
    """Seed the C library's ``rand()``, from which libzmq draws the first routing id a new
    ROUTER socket generates. Unseeded, that start is the same in every broker process
    (the first id was measured as 0x00e43c9869 every time), so a peer could claim the id
    the next connection will get by choosing it, and libzmq aborts the whole process when
    its generated id is already taken (it asserts the insert succeeded). Must run before
    the broker's context makes any ROUTER socket. Returns False where there is no C
    library ``srand`` to call (the id start then stays predictable; logged)."""
    if sys.platform == "win32":
        log.warning("routing_id_start_not_seeded", reason="no C library srand on this platform")
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(secrets.randbits(32)))
    except (OSError, AttributeError):
        log.warning("routing_id_start_not_seeded", reason="C library srand not found")
        return False
    return True

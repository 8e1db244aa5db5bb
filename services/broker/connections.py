"""What ties broker state to one connection rather than to its routing id.

libzmq's ROUTER names each connection with a 5-byte routing id (0x00, then a 32-bit
counter), but a peer may choose its own id, including one of exactly that shape, and
the ZMTP ``Identity`` property that would tell them apart reads as ``''`` either way
(``zmq_msg_gets`` stops at the leading NUL). So the broker's ZAP handler gives every
handshake a random connection token, carried as the ``X-Conn`` metadata property on
every message of that connection; a :class:`~.state.Peer` records it, and a message
whose (routing id, token) pair is not the tracked one comes from another connection.

:class:`Admission` decides about a message from a connection the broker does not track under
its (routing id, token) pair. ZAP has already admitted the key; what is decided here is whether
this *connection* may be served. libzmq generates routing ids of one shape and never repeats one
within 2**32 connections, so an id of another shape, or one the broker tracks or remembers for
another connection, was chosen by the peer: refused. A connection the broker dropped for missed
heartbeats is told to reconnect. Anything else starts as a new peer with nothing of what an
earlier connection had.

The module also seeds the counter libzmq starts its generated routing ids from.
"""

from __future__ import annotations

import ctypes
import ipaddress
import secrets
import sys
from typing import Final

import structlog
import zmq

from shared import Certificate

from .outbox import Outbox
from .state import MeshState, Peer

log = structlog.get_logger("broker")

#: The ZAP metadata property carrying the connection token.
CONN_PROPERTY: Final = "X-Conn"
#: Told to a connection the broker dropped for missing heartbeats; the client reconnects.
EXPIRED_MESSAGE: Final = "connection expired after missed heartbeats; reconnect"


def new_token() -> str:
    """A fresh connection token: 128 random bits as hex. Text without NUL bytes, because
    ``zmq_msg_gets`` returns metadata values as C strings."""
    return secrets.token_hex(16)


def generated_shape(rid: bytes) -> bool:
    """Whether ``rid`` has the shape of an id libzmq generates (0x00 + 4 bytes).

    Necessary, not sufficient: a peer can choose an id of this shape too."""
    return len(rid) == 5 and rid[0] == 0


def connection_mode(address: str) -> str:
    """``detached`` for a connection from an IP address (tcp, another host or namespace),
    ``coupled`` for one over the local ipc socket (libzmq reports ``localhost:uid:gid:pid``)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "coupled"
    return "detached"


class Admission:
    """Decides about connections new to the broker, and about a tracked one whose key changed."""

    def __init__(self, state: MeshState, outbox: Outbox) -> None:
        self.state = state
        self.outbox = outbox

    def admit(self, rid: bytes, conn: str, cert: Certificate, header_frame: zmq.Frame,
              now: float) -> Peer | None:
        """Track a connection the broker does not know yet, or refuse its message (None).

        Refused: a routing id libzmq would never generate; an id tracked or remembered for
        another connection (libzmq's ids do not repeat within 2**32 connections, so the id
        was chosen); an expired connection speaking again (told to reconnect)."""
        if not generated_shape(rid):
            self._refuse_chosen_id(rid, header_frame)
            return None
        holder = self.state.peers.get(rid)
        if holder is not None:
            # Another connection now holds the id the tracked one had, so that one is gone:
            # its state dies now (deregistered, its in-flight requests failed or dropped),
            # before anything of it could reach the newcomer.
            self.outbox.drop(holder, "routing id reused by another connection")
            self._refuse_chosen_id(rid, header_frame)
            return None
        ended = self.state.ended.get(rid)
        if ended is not None:
            token, expired = ended
            if token != conn:
                self._refuse_chosen_id(rid, header_frame)
                return None
            if expired:
                self.state.totals["expired_refused"] += 1
                self.outbox.refuse(rid, header_frame, "UNAVAILABLE", EXPIRED_MESSAGE)
                return None
            # The same connection again (its key revoked, then allowed again): it starts
            # afresh, with nothing of what it had before.
        peer = self.state.new_peer(rid, conn, cert, now)
        try:
            peer.address = str(header_frame.get("Peer-Address"))
        except zmq.ZMQError:  # libzmq without the property: the address stays unknown
            pass
        return peer

    def rekeyed(self, peer: Peer, cert: Certificate, now: float) -> Peer:
        """The peer to serve when a reload made a new certificate object for a tracked connection's key.

        The same certificate (name, role, key) keeps its peer and registration; a different one on
        this connection starts afresh, as a new peer, and the old peer is dropped."""
        if peer.cert == cert:
            peer.cert = cert
            return peer
        self.outbox.drop(peer, "certificate changed")
        fresh = self.state.new_peer(peer.rid, peer.conn, cert, now)
        fresh.address = peer.address
        return fresh

    def _refuse_chosen_id(self, rid: bytes, header_frame: zmq.Frame) -> None:
        self.state.totals["custom_routing_id_refused"] += 1
        self.outbox.refuse(rid, header_frame, "BAD_REQUEST", "custom routing ids are not allowed")


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

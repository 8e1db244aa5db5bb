"""Everything the broker sends, and what follows when a connection turns out to be gone.

:class:`Outbox` writes to the broker's ROUTER socket without ever blocking. A send that finds
no connection under a routing id (``ROUTER_MANDATORY`` answers ``EHOSTUNREACH``) means that
connection closed, so its peer is dropped at once; and dropping a peer deregisters it, which
answers every request that was in flight to it. Both live here because each needs the other:
a drop sends errors, and a failed send drops. Every part of the broker that answers a peer or
ends a connection does it through this object; it calls only the state below it.
"""

from __future__ import annotations

import errno
from typing import Any, Final

import zmq

from shared import (
    PROTOCOL_VERSION,
    BadRequest,
    MeshError,
    Unavailable,
    decode_header,
    encode_header,
    error_text,
)

from .state import MeshState, Peer, Registration

_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)


def error_frame(request_id: int, code: str, message: str) -> list[bytes]:
    """The frames of an ``err`` from the broker itself (``"from": "mesh"``)."""
    return [encode_header({"v": PROTOCOL_VERSION, "k": "err", "id": request_id,
                           "code": code, "msg": error_text(message), "from": "mesh"})]


class Outbox:
    """Sends on the ROUTER socket the core binds (:attr:`router`, None until then)."""

    def __init__(self, state: MeshState, max_header_bytes: int) -> None:
        self.state = state
        self.router: zmq.Socket[bytes] | None = None
        self._peers = state.peers
        self._totals = state.totals
        self._max_header = max_header_bytes

    def send(self, rid: bytes, frames: list[Any]) -> bool:
        """Send without blocking; count what cannot be delivered (peer gone or full)."""
        router = self.router
        assert router is not None
        # Frame by frame with precomputed flags: cheaper than send_multipart. A ROUTER with
        # ROUTER_MANDATORY refuses (EHOSTUNREACH/EAGAIN) on the routing-id frame, before
        # anything of the message is queued.
        send = router.send
        try:
            send(rid, _MORE)
            last = len(frames) - 1
            for index, frame in enumerate(frames):
                send(frame, _MORE if index < last else _LAST)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            self._totals["undeliverable"] += 1
            if exc.errno == errno.EHOSTUNREACH:
                # No connection holds this routing id any more: whatever the broker still
                # tracks for it dies now, so a later connection on the id inherits nothing.
                gone = self._peers.get(rid)
                if gone is not None:
                    self.drop(gone, "connection closed")
            return False
        return True

    def refuse(self, rid: bytes, header_frame: zmq.Frame, code: str, message: str) -> None:
        """Answer a message from a connection the broker does not (or no longer) serve."""
        # Answer with the request's own id when it has one, so the caller fails at once
        # instead of waiting for its timeout; nothing else in the message is used.
        try:
            request_id = decode_header(header_frame.bytes, self._max_header).get("id", 0)
        except BadRequest:
            request_id = 0
        self.send(rid, error_frame(request_id, code, message))

    def fail(self, peer: Peer, request_id: int, exc: MeshError) -> None:
        """Answer ``peer``'s request with ``exc``'s code and message (counted as an error)."""
        peer.counters.errors += 1
        if self._peers.get(peer.rid) is not peer:
            return  # dropped (revoked or expired) since it asked: it gets nothing more.
        if self.send(peer.rid, error_frame(request_id, exc.code, exc.message)):
            peer.counters.msgs_out += 1

    def ok(self, peer: Peer, request_id: int, body: bytes | None = None) -> None:
        """Answer ``peer``'s request from the broker itself, with ``body`` when given."""
        frames: list[bytes] = [encode_header({"v": PROTOCOL_VERSION, "k": "rep", "id": request_id,
                                              "from": "mesh"})]
        if body is not None:
            frames.append(body)
        if self.send(peer.rid, frames):
            peer.counters.msgs_out += 1

    def drop(self, peer: Peer, reason: str, *, expired: bool = False) -> None:
        """Forget a connection and everything that belongs to it: its registration (its
        in-flight requests fail), its subscriptions and call cache (they live on the Peer),
        and replies to its own requests (no longer forwarded, see routing). The connection's
        routing id and token are remembered (:class:`.connections.EndedConnections`)."""
        registration = self.state.forget(peer, expired=expired)
        if registration is not None:
            self.deregister(registration, reason)

    def deregister(self, registration: Registration, reason: str) -> None:
        """Remove a registration; each request in flight to it fails ``UNAVAILABLE``. The broker's
        own audit shipment among them is left to :mod:`.auditing`, which sees it gone."""
        for entry in self.state.deregister(registration, reason):
            if entry.caller is not None:
                self.fail(entry.caller, entry.caller_id,
                          Unavailable(f"service {registration.name!r} went away before answering"))

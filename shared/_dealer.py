"""A peer's DEALER socket to the broker: how it is set up, and what its handshake events mean.

Shared by the asyncio :class:`~shared._connection.Connection` (services, meshctl's long commands)
and the one-shot :func:`~shared._oneshot.call_once` (meshctl's short ones), so both pin the broker's
key, present the same certificate and read a refused handshake the same way.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import zmq

from ._certs import KeyPair
from ._errors import HandshakeError

AUTH_REFUSED: Final = "the broker refused our certificate (it is not on the allow-list, or was revoked)"
REVOKED: Final = "the broker refuses our certificate on this connection: it was revoked"
WRONG_KEY: Final = "CURVE handshake with the broker failed: the broker public key we pinned is probably wrong"

#: The socket events a peer watches: a handshake that worked, one that failed (and how), a drop.
MONITORED: Final = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_DISCONNECTED)


def configure(sock: Any, keypair: KeyPair, broker_key: bytes, *, reconnect_min_ms: int,
              reconnect_max_ms: int) -> None:
    """Set a fresh DEALER up as a CURVE client of the broker whose public key is ``broker_key``:
    no lingering, reconnection between the two intervals, nothing queued while not connected."""
    sock.curve_serverkey = broker_key
    sock.curve_publickey = keypair.certificate.public_key
    sock.curve_secretkey = keypair.secret_key
    sock.linger = 0
    sock.reconnect_ivl = reconnect_min_ms
    sock.reconnect_ivl_max = reconnect_max_ms
    sock.setsockopt(zmq.IMMEDIATE, 1)


def monitor_event(frames: list[bytes]) -> int:
    """The event a monitor socket's message reports (ZMTP's layout: a 16-bit event id and a 32-bit
    value in the first frame, the endpoint in the second). pyzmq's ``zmq.utils.monitor`` reads it
    the same way but imports ``zmq.asyncio``, and with it asyncio: what :class:`OneShot` exists to
    spare a short command (issue 13)."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise RuntimeError(f"Invalid event message format: {frames}")
    event: int = struct.unpack("=hi", frames[0])[0]
    return event


def handshake_refusal(event: int) -> HandshakeError | None:
    """The error a monitor event means, or None for a success or a drop (libzmq reconnects)."""
    if event in (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_DISCONNECTED):
        return None
    return HandshakeError(AUTH_REFUSED if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH else WRONG_KEY)

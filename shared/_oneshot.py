"""A few requests over a fresh connection, without asyncio: for short-lived commands (``meshctl ping``
and ``status``).

:class:`~shared.MeshClient` needs an event loop, and asyncio costs about as much to import as the
interpreter takes to start; a command that makes a few calls and exits should not pay it (issue 13).
:class:`OneShot` (and :func:`call_once`) speaks the same protocol over the same socket set-up
(:mod:`._dealer`): it waits for the CURVE handshake, sends a ``req`` (or a round of them at once:
:meth:`OneShot.calls`), waits for each ``rep`` or ``err``, and closes. Every wait is bounded by one
deadline (a round may be given its own). The errors are those of
:class:`~shared.MeshClient`: the callee's answer as its :class:`~shared.MeshError`,
:class:`~shared.HandshakeError` for a refused certificate or a wrong broker key,
:class:`~shared.Unavailable` when no handshake happens in time, :class:`~shared.Timeout` when the
reply does not come."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Final

import zmq

from ._certs import load_certificate, load_keypair
from ._codec import PROTOCOL_VERSION, decode_body, decode_delivered, encode_body, encode_header
from ._dealer import MONITORED, REVOKED, configure, handshake_refusal, monitor_event
from ._errors import HandshakeError, MeshError, Timeout, Unavailable, error_from_wire
from ._home import MeshHome

_MAX_HEADER: Final = 65536
#: Retry a refused dial quickly: a one-shot command lives for one deadline only.
_RECONNECT_MS: Final = 100
_MAX_BODY: Final = 64 << 20


class OneShot:
    """A short-lived connection as identity ``name`` (its keypair in ``home``): ``with OneShot(...)
    as peer: peer.call(target)``. Entering waits for the CURVE handshake; the handshake and every
    call share one deadline, ``timeout`` seconds from the start.

    No configuration is read: the keys and the broker's socket are the home's, and a connection
    that lives for one deadline has no use for the reconnection intervals (a missing keypair reads
    mesh.toml, for the hint naming what creates it)."""

    def __init__(self, home: MeshHome, name: str, *, timeout: float) -> None:
        self.home = home
        self.name = name
        self.timeout = timeout
        self._ids = 0
        self._context: Any = None
        self._sock: Any = None
        self._monitor: Any = None
        self._deadline = 0.0

    def __enter__(self) -> OneShot:
        return self.open()

    def open(self) -> OneShot:
        """Connect and wait for the CURVE handshake (what entering the ``with`` block does)."""
        home = self.home
        if not os.path.lexists(home.secret_key_path(self.name)):
            from ._layers import mesh_config
            from ._provision import missing_keypair

            raise missing_keypair(home, self.name, mesh_config(home.root))
        keypair = load_keypair(home.secret_key_path(self.name))
        broker_key = load_certificate(home.public_key_path("broker")).public_key
        self._deadline = time.monotonic() + self.timeout
        self._context = zmq.Context()
        try:
            self._sock = self._context.socket(zmq.DEALER)
            configure(self._sock, keypair, broker_key, reconnect_min_ms=_RECONNECT_MS, reconnect_max_ms=_RECONNECT_MS)
            self._monitor = self._sock.get_monitor_socket(MONITORED)
            self._sock.connect(home.broker_endpoint)
            _handshake(self._monitor, self._deadline, home.broker_endpoint, self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, target: str, body: Any = None) -> Any:
        """Call ``target`` (``service.method``); the decoded reply body, or the callee's error."""
        (reply,) = self.calls([(target, body)])
        if isinstance(reply, MeshError):
            raise reply
        return reply

    def calls(self, requests: Sequence[tuple[str, Any]], *, timeout: float | None = None) -> list[Any]:
        """Make every ``(target, body)`` request at once, then wait for their replies in whatever order
        they come: one slow callee delays none of the others. For each request, in order, its decoded
        reply body or the :class:`~shared.MeshError` that ended it (the callee's error,
        :class:`~shared.Unavailable` when it could not be sent, :class:`~shared.Timeout` without a
        reply in time, :class:`~shared.HandshakeError` when the broker revoked this connection).

        The wait ends at the connection's deadline, or ``timeout`` seconds from now when given (a
        command that asks in rounds gives each round the same time)."""
        deadline = self._deadline if timeout is None else time.monotonic() + timeout
        results: dict[int, Any] = {}
        waiting: dict[int, int] = {}  # request id -> the request's index
        for index, (target, body) in enumerate(requests):
            self._ids += 1
            remaining = max(0.001, deadline - time.monotonic())
            header = {"v": PROTOCOL_VERSION, "k": "req", "to": target, "ttl": max(1, int(remaining * 1000)),
                      "id": self._ids}
            frames = [encode_header(header)] if body is None else [encode_header(header), encode_body(body)]
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                results[index] = Unavailable("not connected to the broker, or its queue is full")
                continue
            waiting[self._ids] = index
        while waiting and self._sock.poll(_remaining_ms(deadline)):
            frames = self._sock.recv_multipart()
            header = decode_delivered(frames[0], _MAX_HEADER)
            kind, answered = header["k"], header.get("id")
            if kind == "err" and answered == 0 and header.get("code") == "UNAUTHENTICATED":
                results.update((i, HandshakeError(REVOKED)) for i in waiting.values())
                waiting.clear()
            elif kind in ("rep", "err") and answered in waiting:
                index = waiting.pop(answered)
                if kind == "rep":
                    results[index] = None if len(frames) < 2 else decode_body(frames[1], _MAX_BODY)
                else:
                    results[index] = error_from_wire(header.get("code"), header.get("msg"))
            # Anything else (a heartbeat, an event, a late reply) is none of these answers: keep waiting.
            if time.monotonic() >= deadline:
                break
        span = self.timeout if timeout is None else timeout
        results.update((i, Timeout(f"no reply within {span:.3f} s")) for i in waiting.values())
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._context is not None:
            self._context.term()
            self._context = None


def call_once(home: MeshHome, name: str, target: str, body: Any = None, *, timeout: float) -> Any:
    """Call ``target`` once as identity ``name`` over a fresh connection; the decoded reply body."""
    with OneShot(home, name, timeout=timeout) as peer:
        return peer.call(target, body)


def _remaining_ms(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))


def _handshake(monitor: Any, deadline: float, endpoint: str, timeout: float) -> None:
    while monitor.poll(_remaining_ms(deadline)):
        kind = monitor_event(monitor.recv_multipart())
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return
        refusal = handshake_refusal(kind)
        if refusal is not None:
            raise refusal
        if time.monotonic() >= deadline:
            break
    raise Unavailable(f"no CURVE handshake with the broker at {endpoint} within {timeout:.1f} s")

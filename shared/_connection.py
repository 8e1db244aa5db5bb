"""One peer's CURVE connection to the broker, with heartbeats and handshake diagnosis.

A :class:`Connection` owns a DEALER socket (CURVE client, broker key pinned),
its monitor socket, a reader task and a heartbeat task. It turns handshake
failures into a clear :class:`~shared.HandshakeError` instead of retrying
forever: a ZAP refusal means the broker does not admit our certificate, a
failure without detail means the broker key we pinned is not the broker's.
libzmq reconnects by itself with bounded exponential backoff
(``reconnect_min_ms`` .. ``reconnect_max_ms``); each new handshake calls
``on_connect`` so a service registers again, and requests in flight on a lost
connection fail with :class:`~shared.Unavailable` at once.

The DEALER is read and written through a plain (synchronous) view of the socket, with
``NOBLOCK``, from the event loop's own reader callback on the socket's ``ZMQ_FD``: no
``zmq.asyncio`` future, timer or poller bookkeeping per message (that machinery was most
of a service call's Python time, issue 18). ``ZMQ_FD`` is edge-triggered: it signals that
the socket's state may have changed, and any operation on the socket (a send too) may
consume that signal. So the socket is always asked (``ZMQ_EVENTS``, or a read that finds
nothing) whether another message waits before the loop may sleep: every send asks right
after it, and schedules a drain if one waits; the reader, woken by the FD, reads one
message and leaves the question for later in the same loop turn (a "look", scheduled at
once so the loop cannot sleep first), after what that message started has run: a service
replying or a caller sending its next request asks anyway, and the look is then skipped.
That keeps the question off the path a call waits on (issue 18). A look that finds
messages waiting drains them, asking after each. Frames are sent and received one by one with plain integer
flags and options rather than through ``send_multipart``/``recv_multipart`` and the socket's
attribute sugar: those build flag enums and check every frame's type on each call, a
measurable part of a call's cost (issue 18).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import zmq
import zmq.asyncio

from ._certs import KeyPair
from ._codec import PROTOCOL_VERSION, decode_delivered, encode_header
from ._config import RuntimeConfig
from ._dealer import MONITORED, REVOKED, WRONG_KEY, configure, handshake_refusal
from ._errors import BadRequest, HandshakeError, MeshError, Timeout, Unavailable, error_from_wire
from ._logging import get_logger

log = get_logger("connection")

Reply = tuple[dict[str, Any], bytes | None]
RequestHandler = Callable[[dict[str, Any], bytes | None], None]
EventHandler = Callable[[str, str, bytes | None], None]

#: Messages handled per reader callback before the loop runs other work (fairness under a flood).
_DRAIN_BATCH = 256
_MAX_HEADER = 65536
# libzmq's flags and options as plain ints: pyzmq's enum members cost an enum operation per use.
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)


def _receive(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message, NOBLOCK (``recv_multipart`` without its per-call flag enums)."""
    frames = [sock.recv(_NOBLOCK)]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(_NOBLOCK))
    return frames


def _readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting (``ZMQ_EVENTS``; reading it also takes libzmq's pending commands)."""
    events: int = sock.getsockopt(_EVENTS)  # type: ignore[assignment]  # an integer option
    return bool(events & _POLLIN)


def _expire(future: asyncio.Future[Reply], timeout: float) -> None:
    if not future.done():
        future.set_exception(Timeout(f"no reply within {timeout:.3f} s"))


class Connection:
    """A DEALER connection to the broker. Create, :meth:`open`, use, :meth:`close`."""

    def __init__(self, keypair: KeyPair, broker_key: bytes, endpoint: str, config: RuntimeConfig,
                 *, context: zmq.asyncio.Context | None = None) -> None:
        self.keypair = keypair
        self.broker_key = broker_key
        self.endpoint = endpoint
        self.config = config
        self._own_context = context is None
        self.context = context or zmq.asyncio.Context()
        self.on_request: RequestHandler | None = None
        self.on_event: EventHandler | None = None
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self.handshake_error: HandshakeError | None = None
        self.connected = asyncio.Event()
        #: How many handshakes have succeeded: each one is a new connection the broker
        #: knows nothing about yet (registration and subscriptions must be redone).
        self.generation = 0
        self.last_heard = time.monotonic()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._callbacks: set[asyncio.Task[None]] = set()
        self._socket: zmq.asyncio.Socket | None = None
        #: The same socket, synchronous: what the reader and :meth:`send_now` use (NOBLOCK only).
        self._plain: zmq.Socket[bytes] | None = None
        self._fd: int | None = None
        #: A message was read and the socket not asked since whether another waits (see the module
        #: docstring); a look is then scheduled, so the loop cannot sleep before it.
        self._look_owed = False
        self._look_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: zmq.asyncio.Socket | None = None
        #: Set when the broker refused us for good (certificate refused or revoked, or
        #: not the broker we pinned): retrying cannot help, so services exit on it.
        self.failed = asyncio.Event()
        self._closed = False

    @property
    def name(self) -> str:
        return self.keypair.certificate.name

    async def open(self, timeout: float | None = None) -> None:
        """Connect and wait for the CURVE handshake; raise :class:`HandshakeError` if the
        broker refuses us or is not who we pinned, :class:`Unavailable` on timeout."""
        sock = self.context.socket(zmq.DEALER)
        configure(sock, self.keypair, self.broker_key, reconnect_min_ms=self.config.reconnect_min_ms,
                  reconnect_max_ms=self.config.reconnect_max_ms)
        self._monitor = sock.get_monitor_socket(MONITORED)
        sock.connect(self.endpoint)
        self._socket = sock
        self._plain = zmq.Socket.shadow(sock.underlying)
        self._loop = asyncio.get_running_loop()
        fd: int = self._plain.FD
        self._fd = fd
        self._loop.add_reader(fd, self._drain)
        self._loop.call_soon(self._drain)
        self._tasks = [asyncio.create_task(self._watch(), name=f"{self.name}-monitor"),
                       asyncio.create_task(self._beat(), name=f"{self.name}-heartbeat")]
        await self.wait_connected(timeout if timeout is not None else self.config.handshake_timeout_ms / 1000)

    async def wait_connected(self, timeout: float) -> None:
        """Wait until a handshake has succeeded; raise what went wrong otherwise."""
        connected = asyncio.ensure_future(self.connected.wait())
        failed = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait({connected, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            failed.cancel()
        if self.handshake_error is not None:
            raise self.handshake_error
        if not self.connected.is_set():
            raise Unavailable(f"no CURVE handshake with the broker at {self.endpoint} within {timeout:.1f} s")

    async def _watch(self) -> None:
        assert self._monitor is not None
        from zmq.utils.monitor import parse_monitor_message
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_error = None
                self.generation += 1
                self.last_heard = time.monotonic()
                self.connected.set()
                if self.on_connect is not None:
                    task = asyncio.create_task(self._run_on_connect())
                    self._callbacks.add(task)
                    task.add_done_callback(self._callbacks.discard)
            elif kind == zmq.EVENT_DISCONNECTED:
                if self.connected.is_set():
                    log.warning("broker_connection_lost", endpoint=self.endpoint)
                self.connected.clear()
                self._fail_waiting(Unavailable("connection to the broker was lost"))
            else:
                refusal = handshake_refusal(kind) or HandshakeError(WRONG_KEY)
                self.handshake_error = refusal
                log.error("broker_handshake_failed", endpoint=self.endpoint, reason=refusal.message)
                self.connected.clear()
                self._fail_waiting(refusal)
                self.failed.set()

    async def _run_on_connect(self) -> None:
        assert self.on_connect is not None
        try:
            await self.on_connect()
        except MeshError as exc:
            log.error("on_connect_failed", error=exc.code, reason=exc.message)
        except Exception:
            log.exception("on_connect_failed")

    def _fail_waiting(self, error: MeshError) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    def _drain(self) -> None:
        """The reader (``ZMQ_FD`` signalled): handle the message waiting, NOBLOCK, and owe a look.

        A read that finds nothing has asked the socket itself: nothing is owed then."""
        sock = self._plain
        if sock is None or self._closed:
            return
        try:
            frames = _receive(sock)
        except zmq.Again:
            self._look_owed = False
            return
        except zmq.ZMQError:
            return  # the socket is being closed
        self._look_owed = True
        try:
            self._on_frames(frames)
        finally:
            # Scheduled after what the message started (a task woken, a request queued), so a
            # send they make in this loop turn asks first and the look is then skipped.
            if not self._look_scheduled:
                self._look_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._look)

    def _look(self) -> None:
        """Ask the socket whether another message waits, unless a send asked since the last read."""
        self._look_scheduled = False
        sock = self._plain
        if not self._look_owed or sock is None or self._closed:
            return
        self._look_owed = False
        try:
            if _readable(sock):
                self._drain_all()
        except zmq.ZMQError:
            return  # the socket is being closed

    def _drain_all(self) -> None:
        """Handle every message waiting (up to a batch), asking after each whether another waits."""
        sock = self._plain
        if sock is None or self._closed:
            return
        try:
            for _ in range(_DRAIN_BATCH):
                frames = _receive(sock)
                self._on_frames(frames)
                if self._closed or not _readable(sock):
                    return
        except zmq.Again:
            return
        except zmq.ZMQError:
            return  # the socket is being closed
        assert self._loop is not None
        self._loop.call_soon(self._drain_all)  # more may be waiting: let other work run first.

    def _on_frames(self, frames: list[bytes]) -> None:
        self.last_heard = time.monotonic()
        try:
            header = decode_delivered(frames[0], _MAX_HEADER)
        except BadRequest:
            log.warning("bad_frame_from_broker")
            return
        body = frames[1] if len(frames) > 1 else None
        kind = header["k"]
        if kind in ("rep", "err"):
            future = self._waiting.pop(header.get("id", -1), None)
            if future is not None and not future.done():
                if kind == "rep":
                    future.set_result((header, body))
                else:
                    future.set_exception(error_from_wire(header.get("code"), header.get("msg")))
            elif kind == "err" and header.get("id") == 0:
                log.warning("broker_refused_message", error=header.get("code"), reason=header.get("msg"))
                if header.get("code") == "UNAUTHENTICATED":
                    self.handshake_error = HandshakeError(REVOKED)
                    self.connected.clear()
                    self._fail_waiting(self.handshake_error)
                    self.failed.set()
                elif header.get("code") == "UNAVAILABLE":
                    # The broker dropped this connection (missed heartbeats): dial anew so
                    # registration and subscriptions are redone on a fresh connection.
                    self.connected.clear()
                    self._fail_waiting(Unavailable("the broker expired this connection"))
                    self._reconnect()
        elif kind in ("req", "evt"):
            self._deliver(kind, header, body)

    def _deliver(self, kind: str, header: dict[str, Any], body: bytes | None) -> None:
        try:
            if kind == "req" and self.on_request is not None:
                self.on_request(header, body)
            elif kind == "evt" and self.on_event is not None:
                self.on_event(str(header.get("topic")), str(header.get("from")), body)
        except Exception:
            log.exception("delivery_failed", kind=kind)

    async def _beat(self) -> None:
        frame = encode_header({"v": PROTOCOL_VERSION, "k": "hb"})
        interval = self.config.heartbeat_interval_ms / 1000
        liveness = self.config.liveness_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self.connected.is_set():
                continue
            if time.monotonic() - self.last_heard > liveness:
                log.warning("broker_silent", seconds=round(time.monotonic() - self.last_heard, 3))
                self.connected.clear()
                self._fail_waiting(Unavailable("the broker stopped answering heartbeats"))
                self._reconnect()
                continue
            await self.send([frame])

    def _reconnect(self) -> None:
        # A silent broker behind a live connection: drop it and let libzmq dial anew.
        assert self._socket is not None
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disconnect(self.endpoint)
        self._socket.connect(self.endpoint)
        self.last_heard = time.monotonic()
        assert self._loop is not None
        self._loop.call_soon(self._drain)

    async def send(self, frames: list[bytes]) -> None:
        """Send one message now (never waits); :class:`Unavailable` if it cannot be queued."""
        self.send_now(frames)

    def send_now(self, frames: list[bytes]) -> None:
        """:meth:`send`, from synchronous code."""
        sock = self._plain
        if sock is None or self._closed:
            raise Unavailable("not connected to the broker")
        *head, last = frames
        for frame in frames:
            if not isinstance(frame, bytes):  # checked before any frame goes: never half a message
                raise TypeError(f"a frame must be bytes, not {type(frame).__name__}")
        try:
            # libzmq keeps a message whole: if a later frame is refused (the connection went away
            # meanwhile), the frames before it are dropped too, never delivered alone.
            for frame in head:
                sock.send(frame, _MORE)
            sock.send(last, _NOBLOCK)
        except zmq.Again:
            raise Unavailable("not connected to the broker, or its queue is full") from None
        # The send may have consumed the edge of ZMQ_FD that announced a message: look (this
        # also settles a look the reader owes).
        self._look_owed = False
        if _readable(sock):
            assert self._loop is not None
            self._loop.call_soon(self._drain_all)

    async def request(self, header: dict[str, Any], body: bytes | None, timeout: float) -> Reply:
        """Send a message that expects exactly one reply; return ``(header, body)``.

        Raises the error the broker or the service answered, :class:`Unavailable` if the
        connection is down or lost meanwhile, :class:`Timeout` after ``timeout`` seconds.
        """
        if self.handshake_error is not None:
            raise self.handshake_error
        if not self.connected.is_set():
            raise Unavailable("not connected to the broker")
        request_id = next(self._ids)
        header = {"v": PROTOCOL_VERSION, **header, "id": request_id}
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting[request_id] = future
        timer: asyncio.TimerHandle | None = None
        try:
            self.send_now([encode_header(header)] if body is None else [encode_header(header), body])
            # The deadline fails the future itself (no wait_for, no asyncio.timeout): a cancellation of
            # the caller's task cancels the await as usual and is never lost, and a reply that lands
            # first wins (the timer then finds the future done). It is armed once the request is out,
            # so the send is not delayed by it; no reply can be read before this task awaits.
            timer = loop.call_later(timeout, _expire, future, timeout)
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            self._waiting.pop(request_id, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_waiting(Unavailable("connection closed"))
        if self._fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._socket is not None:
            self._socket.disable_monitor()
            self._socket.close(linger=0)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        if self._own_context:
            self.context.term()

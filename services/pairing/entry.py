"""The pairing entry point: the one way in for a key that is not on the allow-list yet.

It is deliberately not part of the broker. It is its own tcp listener, owned by the pairing
process, bound only while a window is open and closed the moment the window ends; nothing it
receives is ever routed anywhere. It speaks one protocol (:mod:`shared.pake`): length-prefixed
frames of at most :data:`shared.pake.MAX_FRAME` bytes, three messages in a fixed order, each
within ``[pairing] step_timeout_s``. A connection is refused before reading a byte when its source
address opened ``per_source_per_minute`` connections in the last minute, when
``max_connections`` attempts are in progress, or when the window's guesses are spent; anything
that is not the next expected pairing message ends the connection. docs/pairing.md has the threat
analysis.

What the service does with a device that proved it knows the code (put its key on the
allow-list, keep its record, build the welcome) is the ``admit`` callback; what is recorded about
every attempt is the ``record`` callback; ``ended`` hears of a window that an attempt ended (joined,
or its guesses spent) and must not wait for this entry point (it schedules the close). None of them
ever sees the code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from shared import MeshError, pake

from .window import SourceLimiter, Window, WindowDesk

log = structlog.get_logger("pairing")

#: A source refused again within this many seconds is counted (``refused``), not recorded again.
REFUSAL_RECORD_S: Final = 60.0

#: admit(window, hello, source) -> (welcome, undo): undo takes the device back out if the welcome
#: cannot be delivered (the device would hold a key the mesh allows but no way to use it).
Admit = Callable[[Window, pake.DeviceHello, str], Awaitable[tuple[pake.Welcome, Callable[[], Awaitable[None]]]]]
#: record(window, source, outcome, reason): one audit record per attempt.
Record = Callable[[Window, str, str, str], None]


class EntryPoint:
    """Listens on ``host:port`` while :meth:`open` to :meth:`close`; one attempt per connection."""

    def __init__(self, desk: WindowDesk, limiter: SourceLimiter, *, max_connections: int, step_timeout_s: float,
                 admit: Admit, record: Record, ended: Callable[[Window], None],
                 clock: Callable[[], float]) -> None:
        self.desk = desk
        self.limiter = limiter
        self.max_connections = max_connections
        self.step_timeout_s = step_timeout_s
        self.admit = admit
        self.record = record
        self.ended = ended
        self.clock = clock
        self.server: asyncio.Server | None = None
        self._attempts: set[asyncio.Task[Any]] = set()
        #: Source address -> when a refusal of it was last recorded.
        self._recorded_refusal: dict[str, float] = {}

    async def open(self, host: str, port: int) -> int:
        """Start listening; returns the port bound (``port`` 0: any free port)."""
        await self.close()
        self.server = await asyncio.start_server(self._connection, host, port, limit=pake.MAX_FRAME + 16,
                                                 backlog=self.max_connections)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and end every attempt in progress."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        others = [task for task in self._attempts if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.gather(*others, return_exceptions=True)

    @property
    def listening(self) -> bool:
        return self.server is not None and self.server.is_serving()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        try:
            window = self.desk.current(self.clock())
            if window is None:
                return  # the window ended while this connection was being accepted
            if task is not None and len(self._attempts) >= self.max_connections:
                self._refused(window, source, "busy")
                return
            if not self.limiter.allow(source, self.clock()):
                self._refused(window, source, "rate_limited")
                return
            if task is not None:
                self._attempts.add(task)
            await self._attempt(window, source, reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must end this connection, never the process or the window's rules
            log.exception("pairing_attempt_error")
        finally:
            if task is not None:
                self._attempts.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _refused(self, window: Window, source: str, reason: str) -> None:
        """A connection closed unread. Counted on the window; recorded once per source and minute,
        so that a flood cannot turn each of its connections into a durable audit write."""
        window.refused += 1
        now = self.clock()
        last = self._recorded_refusal.get(source)
        if last is not None and now - last < REFUSAL_RECORD_S:
            return
        if len(self._recorded_refusal) >= 4096:
            self._recorded_refusal.clear()
        self._recorded_refusal[source] = now
        self.record(window, source, "failure", reason)

    async def _attempt(self, window: Window, source: str, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        side = pake.MeshSide(window.code)
        try:
            reply = side.reply(await pake.read_frame(reader, timeout=self.step_timeout_s))
        except pake.PairingError:
            # Not the first message of a pairing: no guess was made, none is spent.
            self.record(window, source, "failure", "not_a_pairing_message")
            return
        if not self.desk.spend_guess(window):
            self.record(window, source, "failure", "no_guesses_left")
            return
        try:
            writer.write(pake.encode_frame(reply))
            await writer.drain()
            device = side.confirm(await pake.read_frame(reader, timeout=self.step_timeout_s))
        except pake.WrongCode:
            await self._failed(window, source, "wrong_code")
            return
        except (pake.PairingError, OSError):
            await self._failed(window, source, "incomplete")
            return
        if not window.open:  # the window ended (cancelled, expired) during the exchange
            await self._failed(window, source, "window_closed")
            return
        try:
            welcome, undo = await self.admit(window, device, source)
        except MeshError as exc:
            log.warning("pairing_admit_failed", code=exc.code)
            await self._failed(window, source, f"admit_failed:{exc.code}")
            return
        try:
            writer.write(pake.encode_frame(side.welcome(welcome)))
            await writer.drain()
        except (OSError, pake.PairingError):
            await undo()
            await self._failed(window, source, "welcome_undelivered")
            return
        self.desk.joined(window, welcome.device_name)
        self.record(window, source, "ok", "joined")
        self.ended(window)

    async def _failed(self, window: Window, source: str, reason: str) -> None:
        closed = self.desk.failed(window)
        self.record(window, source, "failure", reason)
        if closed:
            self.ended(window)

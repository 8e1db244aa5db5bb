"""The supervisor-events listener: supervisord's event protocol on one side, the mesh on the other.

It is a mesh peer with its own certificate (identity ``supervisor-events``,
role service) that may only publish on ``supervisor.`` and call ``audit.append``
(mesh.toml). Every process state event is also an audit record, kept in the
listener's own audit spool and shipped to audit by an :class:`~shared.AuditShipper`
(events while audit is down or sealed are delivered when it is back). It also
registers, so operators can see it and call ``supervisor-events.health``,
which reports its counters (received, forwarded, spooled, dropped, ...).

The protocol side runs from the first instant, whether or not the broker is
up: supervisord gets its OK as soon as an event is spooled, so the listener
never holds supervisord's queue back, and an event about the broker itself
(killed, restarting) waits in the spool until the new broker accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any, Final

import structlog

from shared import (
    DEGRADED,
    READY,
    AuditShipper,
    MeshConfig,
    MeshHome,
    NoFields,
    Readiness,
    RequestContext,
    Service,
    ServiceRunner,
    Spool,
    connect_patiently,
    handler,
)

from .forwarder import Forwarder
from .protocol import MAX_HEADER, serve_events

log = structlog.get_logger("supervisor_events")

NAME: Final = "supervisor-events"
#: Records kept while the broker is unreachable; past this, events are counted, not kept.
SPOOL_MAX_RECORDS: Final = 10_000
#: Audit records kept while audit is unreachable; past this, they are counted and the loss audited.
AUDIT_SPOOL_MAX_RECORDS: Final = 10_000
AUDIT_SPOOL_NAME: Final = f"{NAME}-audit.spool"
SHIP_PERIOD_S: Final = 1.0
_FINAL_FLUSH_S: Final = 2.0


class SupervisorEvents(Service):
    """Mesh name ``supervisor-events``; handlers: ``health`` (with the forwarding counters)."""

    name = NAME

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.forwarder = forwarder

    def readiness(self) -> Readiness:
        """``degraded`` once any event was dropped or lost since this process started: it still
        forwards, but the record of what supervisord did has a gap an operator should know about."""
        c = self.forwarder.health()
        lost = {k: c[k] for k in ("dropped", "lost_upstream", "audit_dropped") if c[k]}
        if lost:
            return Readiness(DEGRADED, "process events were lost: " + ", ".join(f"{k} {v}" for k, v in lost.items()))
        return Readiness(READY)

    @handler("health")
    async def health(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``supervisor-events.health`` → the base health fields (``state`` is ``degraded`` once anything
        was dropped or lost) plus the forwarding counters."""
        reply = await super().health(ctx, req)
        reply.update(self.forwarder.health())
        return reply


def claim_stdout() -> int:
    """Keep the real stdout for the protocol; point fd 1 and ``sys.stdout`` at stderr.

    A stray print or warning on stdout would corrupt the protocol and leave the
    listener in supervisord's UNKNOWN state; this makes that impossible.
    """
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol_fd


def _writer(fd: int) -> Any:
    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return write




async def _mesh_side(home: MeshHome, config: MeshConfig, forwarder: Forwarder, stop: asyncio.Event) -> None:
    connecting = asyncio.create_task(connect_patiently(home, NAME, config))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        # Asked to stop while the broker was still away: the spool keeps the events.
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        return
    client = connecting.result()
    runner = ServiceRunner(SupervisorEvents(forwarder), client, config.runtime, config.broker.max_message_bytes)
    forwarding = asyncio.create_task(forwarder.run(client), name="forwarder")
    shipper: AuditShipper | None = None
    if forwarder.audit_spool is not None:
        shipper = AuditShipper(forwarder.audit_spool, client, name=f"{NAME}-audit-shipper", period=SHIP_PERIOD_S)
        forwarder.audit_notify = shipper.notify
        shipper.start()
    try:
        await runner.start()
        await stop.wait()
        # Best effort: hand over what is spooled before going; the rest waits for the next start.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(forwarder.drained(), _FINAL_FLUSH_S)
        await runner.stop()
    finally:
        forwarder.audit_notify = None
        if shipper is not None:
            await shipper.stop()  # what audit has not acknowledged stays in the audit spool
        forwarding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarding
        await client.close()


async def run(home: MeshHome, config: MeshConfig, spool: Spool, protocol_fd: int,
              audit_spool: Spool | None = None) -> None:
    """Run both sides until SIGTERM, or until supervisord closes our stdin."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    forwarder = Forwarder(spool, audit_spool=audit_spool)
    reader = asyncio.StreamReader(limit=MAX_HEADER * 2)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    protocol = asyncio.create_task(serve_events(reader, _writer(protocol_fd), forwarder.accept), name="protocol")
    mesh = asyncio.create_task(_mesh_side(home, config, forwarder, stop), name="mesh")
    protocol.add_done_callback(lambda _: stop.set())
    try:
        await mesh
    finally:
        # A protocol task that failed re-raises its ProtocolError here; one still reading
        # (we were told to stop) is cancelled.
        protocol.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await protocol

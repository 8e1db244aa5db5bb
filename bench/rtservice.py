"""The runtime echo service: a real :class:`shared.Service` run by :class:`shared.ServiceRunner`.

``python -m bench.rtservice`` (with ``CURVEMESH_HOME`` set) connects to the
full broker as ``rtecho``, registers, prints ``ready`` and answers
``rtecho.echo`` until SIGTERM or until its parent process is gone. It is
the service of the runtime rows (MeshClient -> broker -> ServiceRunner ->
handler and back), whose p50 has a target against the raw broker hop (issue 18).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from shared import (
    MeshClient,
    MeshHome,
    RequestContext,
    Service,
    ServiceRunner,
    configure_logging,
    handler,
    mesh_config,
)
from shared import message as mesh_message


@mesh_message
class EchoRequest:
    """The bench body: ``{"data": <bytes>}``."""

    data: bytes


class RtEcho(Service):
    """Answers ``rtecho.echo`` with the request's data."""

    name = "rtecho"

    @handler("echo", request=EchoRequest)
    async def echo(self, ctx: RequestContext, req: EchoRequest) -> dict[str, bytes]:
        return {"data": req.data}


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            continue


async def run() -> None:
    """Connect, register, say ``ready``, serve until stopped, then deregister."""
    parent = os.getppid()
    home = MeshHome.from_env()
    config = mesh_config(home.root)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    client = await MeshClient.connect(home, RtEcho.name, config=config, timeout=30.0)
    runner = ServiceRunner(RtEcho(), client, config.runtime, config.broker.max_message_bytes)
    try:
        await runner.start()
        print("ready", flush=True)
        await _watch_parent(parent, stop)
        await asyncio.wait_for(runner.stop(), 5.0)
    finally:
        await client.close()


if __name__ == "__main__":
    configure_logging("rtecho", "warning")  # logs to stderr: stdout carries only the ready line.
    asyncio.run(run())
    sys.exit(0)

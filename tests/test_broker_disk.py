"""The broker's routing never waits on the disk (services/broker/flusher.py).

A slow fsync of the broker's audit spool used to stop the broker's loop for its whole duration: no
message routed, no heartbeat sent, and afterwards every service dropped for a silence that was the
broker's own. These tests stall that fsync for real, at the spool's ``fsync`` step, for longer than
both liveness windows (the broker's, 600 ms, and the runtime's, 1 s, in the test configuration),
and check that calls keep flowing and nothing is dropped; and that an fsync that fails still stops
the broker, as it always did (fail closed: a deny it cannot make durable is not silently lost).
"""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path
from typing import Any

import pytest

from services.broker import Broker
from shared import Forbidden, MeshConfig, MeshHome, testing

from .conftest import FAST_CONFIG, TEST_IDENTITIES, eventually
from .disk_stall import DiskStall
from .echo_service import Echo

# Longer than the broker's liveness (600 ms) and the runtime's (1 s) in FAST_CONFIG.
STALL_S = 2.0


class StalledMesh(testing.InProcessMesh):
    """The in-process mesh with a broker whose audit spool steps through ``stall``; the broker
    thread's exception, if it ends with one, is kept in ``ended_with``."""

    def __init__(self, root: Path, stall: DiskStall) -> None:
        ended_with: list[BaseException] = []

        class KeptBroker(Broker):
            def run(self) -> None:
                try:
                    super().run()
                except BaseException as exc:  # noqa: BLE001 - kept for the test to check
                    ended_with.append(exc)

        def broker(config: MeshConfig, home: MeshHome) -> Broker:
            return KeptBroker(config, home, spool_checkpoint=stall)

        super().__init__(root, FAST_CONFIG, dict(TEST_IDENTITIES), broker=broker)
        self.ended_with = ended_with


async def deny(mesh: StalledMesh) -> None:
    """A call the ACL refuses: the broker spools a ``mesh.deny`` record, which its next tick syncs."""
    outsider = await mesh.client("outsider")
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)


async def test_a_stalled_spool_fsync_stops_neither_routing_nor_heartbeats(short_tmp: Path) -> None:
    stall = DiskStall()
    async with StalledMesh(short_tmp / "home", stall) as mesh:
        await mesh.start_service(Echo())
        operator = await mesh.client("meshctl")
        stall.armed.set()
        await deny(mesh)
        assert await stall.wait_entered(), "the deny was never fsynced"
        try:
            # The fsync is stalled now. Calls go through the broker to echo and back for longer than
            # either side would wait for a heartbeat; each has its own deadline.
            calls, start = 0, time.monotonic()
            while time.monotonic() - start < STALL_S:
                assert (await operator.call("echo.echo", {"value": calls}, timeout=1))["value"] == calls
                calls += 1
            services = {s["name"]: s for s in await operator.call("mesh.services", timeout=1)}
            # The same registration served every call: echo was never dropped and registered again.
            assert services["echo"]["requests"] >= calls and services["echo"]["registered_for_s"] >= STALL_S
            assert stall.threads == ["broker-fsync"]  # the broker's loop never waited on it
        finally:
            stall.release.set()

        async def synced() -> Any:
            spool = (await operator.call("mesh.stats", timeout=1))["audit_spool"]
            return spool if spool["slow_syncs"] == 1 else None

        spool = await eventually(synced)
        assert spool["longest_sync_s"] >= STALL_S and spool["records"] >= 1  # kept until audit takes it
        assert not mesh.ended_with


async def test_a_failed_spool_fsync_still_stops_the_broker(short_tmp: Path) -> None:
    stall = DiskStall(OSError(errno.EIO, "Input/output error"))
    async with StalledMesh(short_tmp / "home", stall) as mesh:
        await mesh.start_service(Echo())
        stall.armed.set()
        await deny(mesh)
        assert await stall.wait_entered()
        thread = mesh._thread
        assert thread is not None
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
        assert len(mesh.ended_with) == 1 and isinstance(mesh.ended_with[0], OSError)
        assert mesh.ended_with[0].errno == errno.EIO

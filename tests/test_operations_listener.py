"""The supervisor-events listener without supervisord: its protocol, its spool, its publishing."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.keyvault.setup import initialise
from services.supervisor_events.forwarder import Forwarder, to_record
from services.supervisor_events.protocol import OK, READY, Notification, ProtocolError, serve_events
from shared import AuditShipper, Spool

from .conftest import eventually, holds
from .mesh import InProcessMesh
from .test_audit_service import CONFIG, IDENTITIES, PASSWORD, Rig

LISTENER_CONFIG = """
[runtime]
default_timeout_ms = 3000

[acl.role.operator]
call = ["mesh.*", "*.health"]
subscribe = ["*"]

[acl.identity.supervisor-events]
publish = ["supervisor."]
"""


def frame(eventname: str, payload: str, poolserial: int = 1, serial: int = 1) -> bytes:
    """One event exactly as supervisord writes it to a listener's stdin."""
    body = payload.encode()
    header = (f"ver:3.0 server:curvemesh serial:{serial} pool:supervisor-events poolserial:{poolserial} "
              f"eventname:{eventname} len:{len(body)}\n")
    return header.encode() + body


def exited(name: str, pid: int, poolserial: int, expected: int = 0) -> bytes:
    return frame("PROCESS_STATE_EXITED",
                 f"processname:{name} groupname:mesh from_state:RUNNING expected:{expected} pid:{pid}", poolserial)


@pytest.fixture
def spool_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cm") as path:
        yield Path(path)


async def speak(data: bytes, forwarder: Forwarder) -> bytes:
    """Feed ``data`` to the protocol as supervisord would, close the stream; return what we answered."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out = bytearray()
    await asyncio.wait_for(serve_events(reader, out.extend, forwarder.accept), 5)
    return bytes(out)


async def test_protocol_answers_ready_then_ok_per_event(spool_dir: Path) -> None:
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 100))
    data = exited("storage", 41, 1) + frame("PROCESS_STATE_RUNNING",
                                              "processname:storage groupname:mesh from_state:STARTING pid:42", 2)
    out = await speak(data, forwarder)
    assert out == READY + (OK + READY) * 2
    records = forwarder.spool.pending(10)
    assert [r["topic"] for r in records] == ["supervisor.process.exited", "supervisor.process.running"]
    assert records[0]["body"]["expected"] is False and records[0]["body"]["pid"] == 41
    assert records[0]["body"]["severity"] == "alert" and records[1]["body"]["severity"] == "info"


async def test_expected_exits_and_other_states_are_acknowledged_not_forwarded(spool_dir: Path) -> None:
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 100))
    data = exited("storage", 41, 1, expected=1) + frame(
        "PROCESS_STATE_STARTING", "processname:storage groupname:mesh from_state:EXITED tries:0", 2)
    out = await speak(data, forwarder)
    assert out == READY + (OK + READY) * 2
    assert len(forwarder.spool) == 0
    assert forwarder.counters.received == 2 and forwarder.counters.ignored == 2


async def test_a_gap_in_the_pool_serial_is_counted_and_reported(spool_dir: Path) -> None:
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 100))
    await speak(exited("authn", 1, 5) + exited("authn", 2, 9), forwarder)
    assert forwarder.counters.lost_upstream == 3
    kinds = [r["type"] for r in forwarder.spool.pending(10)]
    assert kinds == ["process.state", "events.lost", "process.state"]


async def test_a_full_spool_counts_what_it_cannot_keep(spool_dir: Path) -> None:
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 10))
    out = await speak(b"".join(exited("authz", i, i) for i in range(1, 16)), forwarder)
    assert out.count(OK) == 15  # supervisord is never held back
    assert len(forwarder.spool) == 10 and forwarder.counters.dropped == 5
    assert forwarder.health()["dropped"] == 5


async def test_a_garbled_header_stops_the_protocol(spool_dir: Path) -> None:
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 10))
    with pytest.raises(ProtocolError):
        await speak(b"this is not a header\n", forwarder)


def test_records_survive_a_restart_of_the_listener(spool_dir: Path) -> None:
    path = spool_dir / "s.spool"
    first = Forwarder(Spool(path, 10))
    first.accept(Notification({"eventname": "PROCESS_STATE_FATAL", "poolserial": "1"},
                              {"processname": "storage", "groupname": "mesh", "from_state": "BACKOFF"}))
    first.spool.close()
    again = Spool(path, 10)
    assert [r["body"]["state"] for r in again.pending(10)] == ["FATAL"]
    again.close()


def test_only_process_state_events_become_records() -> None:
    note = Notification({"eventname": "TICK_5"}, {})
    assert to_record(note, 0.0) is None


async def test_spooled_events_are_published_on_supervisor_topics(spool_dir: Path) -> None:
    identities = {"supervisor-events": "service", "meshctl": "operator"}
    async with InProcessMesh(spool_dir / "home", LISTENER_CONFIG, identities) as mesh:
        watcher = await mesh.client("meshctl")
        events = await watcher.subscribe("supervisor.")
        forwarder = Forwarder(Spool(spool_dir / "s.spool", 100))
        await speak(exited("storage", 7, 1) + exited("audit", 8, 2), forwarder)
        listener = await mesh.client("supervisor-events")
        task = asyncio.create_task(forwarder.run(listener))
        try:
            got = [await events.next(timeout=5), await events.next(timeout=5)]
            assert [(e.topic, e.sender, e.body["process"]) for e in got] == [
                ("supervisor.process.exited", "supervisor-events", "storage"),
                ("supervisor.process.exited", "supervisor-events", "audit")]
            await asyncio.wait_for(forwarder.drained(), 5)
            assert forwarder.counters.forwarded == 2 and len(forwarder.spool) == 0
        finally:
            task.cancel()


async def test_a_refused_publish_keeps_the_record(spool_dir: Path) -> None:
    # Without its ACL entry the listener may publish nothing: the broker refuses, the
    # record stays spooled and the failure is counted (never dropped quietly).
    config = LISTENER_CONFIG.replace('publish = ["supervisor."]', "publish = []")
    identities = {"supervisor-events": "service", "meshctl": "operator"}
    async with InProcessMesh(spool_dir / "home", config, identities) as mesh:
        forwarder = Forwarder(Spool(spool_dir / "s.spool", 100))
        await speak(exited("storage", 7, 1), forwarder)
        listener = await mesh.client("supervisor-events")
        task = asyncio.create_task(forwarder.run(listener))
        try:
            await eventually(lambda: holds(forwarder.counters.publish_failures > 0))  # the refusal is counted
            assert len(forwarder.spool) == 1 and forwarder.counters.forwarded == 0
        finally:
            task.cancel()


async def test_each_process_event_is_also_spooled_as_an_audit_record(spool_dir: Path) -> None:
    audit_spool = Spool(spool_dir / "a.spool", 100)
    forwarder = Forwarder(Spool(spool_dir / "s.spool", 100), clock=lambda: 12.5, audit_spool=audit_spool)
    notified: list[int] = []
    forwarder.audit_notify = lambda: notified.append(1)
    data = (exited("storage", 41, 1) + exited("storage", 42, 2, expected=1)
            + frame("PROCESS_STATE_RUNNING", "processname:storage groupname:mesh from_state:STARTING pid:43", 3))
    out = await speak(data, forwarder)
    assert out == READY + (OK + READY) * 3  # supervisord answered at once, mesh or no mesh
    crash, running = audit_spool.pending(10)
    assert (crash["type"], crash["outcome"], crash["target"], crash["pid"], crash["time"]) == (
        "process.crash", "exited", "storage", 41, 12.5)
    assert crash["expected"] is False and crash["state"] == "EXITED" and crash["process"] == "storage"
    assert (running["type"], running["outcome"]) == ("process.state", "running")
    assert len(notified) == 2 and forwarder.health()["audit_spooled"] == 2
    audit_spool.close()
    again = Spool(spool_dir / "a.spool", 100)  # durable: survives a restart of the listener
    assert [r["type"] for r in again.pending(10)] == ["process.crash", "process.state"]
    again.close()


async def test_nothing_is_lost_while_audit_is_down(short_tmp: Path) -> None:
    # Spool first, with no audit on the mesh; the shipper keeps retrying; once audit starts,
    # the record arrives with the listener as its actor and leaves the spool.
    config = CONFIG + '\n[acl.identity.supervisor-events]\npublish = ["supervisor."]\n'
    mesh = InProcessMesh(short_tmp / "h", config, {**IDENTITIES, "supervisor-events": "service"})
    initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    async with mesh:
        r = Rig(mesh)
        await mesh.start_service(r.vault)
        r.operator = await mesh.client("meshctl")
        audit_spool = Spool(short_tmp / "a.spool", 100)
        forwarder = Forwarder(Spool(short_tmp / "s.spool", 100), audit_spool=audit_spool)
        await speak(frame("PROCESS_STATE_FATAL", "processname:storage groupname:mesh from_state:BACKOFF", 1),
                    forwarder)
        listener = await mesh.client("supervisor-events")
        shipper = AuditShipper(audit_spool, listener, min_backoff=0.05, max_backoff=0.2, call_timeout=1.0)
        forwarder.audit_notify = shipper.notify
        shipper.start()
        try:
            await eventually(lambda: holds(shipper.failures > 0))  # audit is not there: refused, kept
            assert len(audit_spool) == 1 and shipper.shipped == 0
            await r.start_audit()
            await eventually(lambda: holds(len(audit_spool) == 0), deadline=10)  # delivered
            records = (await r.operator.call("audit.tail", {"type": "process.crash"}, timeout=5))["records"]
            assert [(c["actor"], c["target"], c["outcome"], c["details"]["state"]) for c in records] == [
                ("supervisor-events", "storage", "fatal", "FATAL")]
        finally:
            await shipper.stop()
            audit_spool.close()
            if r.runner is not None:
                await r.stop_audit()
            await r.vault.on_stop()


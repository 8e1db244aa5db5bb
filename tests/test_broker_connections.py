"""Connection state belongs to a connection (issue 11, part 3; protocol §1.1, §5.1, §8.1).

A peer may choose its own routing id, and libzmq lets it pick one that looks exactly
like an id libzmq would generate. These tests choose ids of every shape and check that
the broker refuses them, that a new connection reusing a closed connection's id
inherits nothing of it (subscriptions, registration, replies), and that the request
ids the broker hands to services cannot be predicted.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from shared import Unavailable

from .conftest import eventually
from .echo_service import Echo
from .mesh import InProcessMesh
from .rawpeer import RawPeer

#: The refusal every message over a chosen routing id gets (protocol §9.2 step 2).
CUSTOM_ID = "custom routing ids are not allowed"


def raw(mesh: InProcessMesh, name: str, **kwargs) -> RawPeer:
    return RawPeer(mesh.context, mesh.home.broker_endpoint, keypair=mesh.pairs.get(name),
                   broker_key=mesh.pairs["broker"].certificate.public_key, **kwargs)


async def expect_custom_id_refusal(peer: RawPeer, header: dict, request_id: int) -> None:
    await peer.send(header)
    reply, _ = await peer.recv(timeout=2)
    assert (reply["k"], reply["code"], reply["id"], reply["msg"]) == ("err", "BAD_REQUEST", request_id, CUSTOM_ID)


async def test_chosen_routing_ids_of_every_shape_are_refused(mesh: InProcessMesh) -> None:
    operator = await mesh.client("meshctl")
    # libzmq generates 5-byte ids: 0x00 then a 32-bit counter. Anything else was chosen.
    shapes = [b"thief", b"\x01\x00\x00\x00\x00", b"\x00", b"\x00ab", b"\x00abcdef", b"\x00" + b"z" * 254]
    for rid in shapes:
        peer = raw(mesh, "meshctl", routing_id=rid)
        try:
            # Every message is refused, not only the first, and none is acted upon.
            await expect_custom_id_refusal(peer, {"v": 1, "k": "sub", "id": 1, "topic": "test."}, 1)
            await expect_custom_id_refusal(peer, {"v": 1, "k": "req", "id": 2, "to": "mesh.ping", "ttl": 1000}, 2)
            await expect_custom_id_refusal(peer, {"v": 1, "k": "hb"}, 0)
        finally:
            peer.close()
    # A chosen id of libzmq's own shape cannot be told apart until it is reused: the
    # first connection holding it is served, the next one on the same id is refused.
    first = raw(mesh, "meshctl", routing_id=b"\x00zzzz")
    try:
        await first.send({"v": 1, "k": "sub", "id": 1, "topic": "test."})
        assert (await first.recv(timeout=2))[0]["k"] == "rep"
        tracked = (await operator.call("mesh.stats", timeout=2))["connections"]
    finally:
        first.close()

    async def first_dropped() -> bool:  # libzmq has released the id (see the next test)
        return (await operator.call("mesh.stats", timeout=2))["connections"] == tracked - 1

    await eventually(first_dropped)
    second = raw(mesh, "meshctl", routing_id=b"\x00zzzz")
    try:
        await expect_custom_id_refusal(second, {"v": 1, "k": "sub", "id": 1, "topic": "test."}, 1)
        await operator.publish("test.after", timeout=2)
        with pytest.raises(TimeoutError):  # the first connection's subscription died with it
            await second.recv(timeout=0.3)
    finally:
        second.close()
    stats = await operator.call("mesh.stats", timeout=2)
    assert stats["totals"]["custom_routing_id_refused"] >= 3 * len(shapes) + 1


async def test_new_connection_on_a_closed_connections_id_inherits_nothing(mesh: InProcessMesh) -> None:
    echo = Echo()
    await mesh.start_service(echo)
    operator = await mesh.client("meshctl")
    caller_id, service_id = b"\x00abcd", b"\x00wxyz"
    old_caller = raw(mesh, "meshctl", routing_id=caller_id)
    old_service = raw(mesh, "storage", routing_id=service_id)
    try:
        # The old connections hold a subscription, a request in flight and a registration.
        await old_caller.send({"v": 1, "k": "sub", "id": 1, "topic": "test."})
        assert (await old_caller.recv(timeout=2))[0]["k"] == "rep"
        await old_caller.send({"v": 1, "k": "req", "id": 2, "to": "echo.block", "ttl": 10000})
        await asyncio.wait_for(echo.entered.wait(), 5)
        await old_service.send({"v": 1, "k": "reg", "id": 1, "name": "storage"})
        assert (await old_service.recv(timeout=2))[0]["k"] == "rep"
        tracked = (await operator.call("mesh.stats", timeout=2))["connections"]
    finally:
        old_caller.close()
        old_service.close()

    # Wait until the broker has found both connections closed (its disconnect probe hits
    # EHOSTUNREACH), which also means libzmq has released their ids: a new connection
    # that claims an id still held is parked by libzmq, which then takes its first frame
    # for an id. A caller that is not a registered service used to stay tracked forever.
    async def closed_connections_dropped() -> bool:
        return (await operator.call("mesh.stats", timeout=2))["connections"] == tracked - 2

    await eventually(closed_connections_dropped)
    # Same keys, same ids, new connections.
    new_caller = raw(mesh, "meshctl", routing_id=caller_id)
    new_service = raw(mesh, "storage", routing_id=service_id)
    try:
        await expect_custom_id_refusal(new_caller, {"v": 1, "k": "hb"}, 0)
        await expect_custom_id_refusal(new_service, {"v": 1, "k": "reg", "id": 1, "name": "storage"}, 1)
        # The old registration is gone, not owned by the new connection.
        assert [s["name"] for s in await operator.call("mesh.services", timeout=2)] == ["echo"]
        with pytest.raises(Unavailable, match="not registered"):
            await operator.call("storage.health", timeout=2)
        # An event on the old subscription's topic, and the old request's reply, reach the
        # broker and go nowhere: the reply is counted as stray, never handed to the new one.
        stray_before = (await operator.call("mesh.stats", timeout=2))["totals"]["stray_replies"]
        await operator.publish("test.leak", timeout=2)
        echo.release.set()

        async def reply_dropped() -> bool:
            stats = await operator.call("mesh.stats", timeout=2)
            return stats["totals"]["stray_replies"] > stray_before

        await eventually(reply_dropped)
        with pytest.raises(TimeoutError):
            await new_caller.recv(timeout=0.3)
    finally:
        new_caller.close()
        new_service.close()


async def service_ids(mesh: InProcessMesh, calls: int) -> list[int]:
    """The broker ids a registered service sees for ``calls`` sequential requests."""
    service, caller = raw(mesh, "storage"), raw(mesh, "meshctl")
    try:
        await service.send({"v": 1, "k": "reg", "id": 1, "name": "storage"})
        assert (await service.recv(timeout=2))[0]["k"] == "rep"
        seen = []
        for request_id in range(1, calls + 1):
            await caller.send({"v": 1, "k": "req", "id": request_id, "to": "storage.health", "ttl": 2000})
            header, _ = await service.recv(timeout=2)
            assert header["k"] == "req"
            seen.append(header["id"])
            await service.send({"v": 1, "k": "rep", "id": header["id"]}, {"status": "ok"})
            reply, _ = await caller.recv(timeout=2)
            assert (reply["k"], reply["id"]) == ("rep", request_id)  # mapped back to the caller's id
        return seen
    finally:
        service.close()
        caller.close()


async def test_request_ids_a_service_sees_are_unpredictable(mesh: InProcessMesh) -> None:
    first = await service_ids(mesh, 8)
    mesh.stop_broker()
    mesh.start_broker()
    second = await service_ids(mesh, 8)
    for ids in (first, second):
        assert len(set(ids)) == len(ids)
        # 63-bit random ids: each is below 2**32 with probability 2**-31, so a counter
        # (or any small, guessable sequence) fails here.
        assert all(2**32 <= i < 2**63 for i in ids), ids
        assert not any(b - a == 1 for a, b in itertools.pairwise(ids)), ids
    assert set(first).isdisjoint(second)  # a restarted broker does not repeat itself


FIRST_ROUTING_ID = """
import asyncio, sys, tempfile
from pathlib import Path
from tests.mesh import InProcessMesh
from tests.conftest import FAST_CONFIG, TEST_IDENTITIES
from tests.rawpeer import RawPeer

async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cm") as path:
        async with InProcessMesh(Path(path) / "h", FAST_CONFIG, dict(TEST_IDENTITIES)) as mesh:
            peer = RawPeer(mesh.context, mesh.home.broker_endpoint, keypair=mesh.pairs["meshctl"],
                           broker_key=mesh.pairs["broker"].certificate.public_key)
            try:
                await peer.send({"v": 1, "k": "sub", "id": 1, "topic": "test."})
                assert (await peer.recv(timeout=5))[0]["k"] == "rep"
                print(next(iter(mesh.broker.state.peers)).hex())
            finally:
                peer.close()

asyncio.run(main())
"""


def test_the_first_generated_routing_id_differs_between_broker_processes() -> None:
    # A predictable id start would let a peer claim the id the next connection gets, and
    # libzmq aborts the broker when its generated id is already taken (protocol §1.1).
    firsts = set()
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", FIRST_ROUTING_ID], capture_output=True, text=True,
                              timeout=60, check=True, cwd=Path(__file__).resolve().parent.parent)
        rid = bytes.fromhex(done.stdout.strip().splitlines()[-1])
        assert len(rid) == 5 and rid[0] == 0
        firsts.add(rid)
    assert len(firsts) == 2

"""``shared.OneShot`` / ``call_once``: one call over a fresh connection without an event loop, with
the errors and deadlines of ``MeshClient`` (meshctl ping uses it; issue 13)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared import (
    BadRequest,
    HandshakeError,
    MeshHome,
    OneShot,
    Timeout,
    Unavailable,
    call_once,
    certs,
)
from shared.provision import provision

from .echo_service import Echo
from .mesh import InProcessMesh


async def test_one_call_gets_the_reply_stamped_with_the_caller_s_identity(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    reply = await asyncio.to_thread(call_once, mesh.home, "meshctl", "echo.echo", {"value": [1, "x"]}, timeout=5)
    assert reply == {"value": [1, "x"], "caller": "meshctl", "role": "operator",
                     "fingerprint": mesh.pairs["meshctl"].certificate.fingerprint}


async def test_several_calls_on_one_connection_and_the_callee_s_errors(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())

    def calls() -> list[object]:
        with OneShot(mesh.home, "meshctl", timeout=5) as peer:
            first = peer.call("echo.echo", {"value": 1})
            second = peer.call("echo.echo", {"value": 2})
            with pytest.raises(BadRequest, match="unknown method"):
                peer.call("echo.nope")
            return [first["value"], second["value"]]
    assert await asyncio.to_thread(calls) == [1, 2]


async def test_a_round_of_calls_answers_each_in_order_and_a_slow_callee_delays_none(mesh: InProcessMesh) -> None:
    echo = Echo()
    await mesh.start_service(echo)

    def round_of_calls() -> tuple[list[Any], float, Any]:
        with OneShot(mesh.home, "meshctl", timeout=5) as peer:
            started = time.monotonic()
            replies = peer.calls([("echo.block_concurrent", None), ("echo.echo", {"value": 1}), ("echo.refuse", None),
                                  ("echo.echo", {"value": 2})], timeout=0.5)
            elapsed = time.monotonic() - started
            return replies, elapsed, peer.call("echo.echo", {"value": 3})  # the connection outlives the round

    replies, elapsed, after = await asyncio.to_thread(round_of_calls)
    echo.release.set()
    assert isinstance(replies[0], Timeout)  # the round's own deadline, not the connection's 5 s
    assert [replies[1]["value"], replies[3]["value"], after["value"]] == [1, 2, 3]
    assert isinstance(replies[2], BadRequest) and "no such thing" in replies[2].message
    assert 0.4 < elapsed < 4


async def test_a_key_the_broker_does_not_know_is_a_handshake_error(mesh: InProcessMesh) -> None:
    certs.save_keypair(certs.generate("stranger", "device"), mesh.home.keys)  # never on the allow-list
    with pytest.raises(HandshakeError, match="refused our certificate"):
        await asyncio.to_thread(call_once, mesh.home, "stranger", "echo.echo", timeout=5)


async def test_every_wait_has_the_one_deadline(mesh: InProcessMesh) -> None:
    echo = Echo()
    await mesh.start_service(echo)
    started = time.monotonic()
    with pytest.raises(Timeout, match="no reply within"):
        await asyncio.to_thread(call_once, mesh.home, "meshctl", "echo.block", timeout=0.5)
    assert time.monotonic() - started < 5  # bounded by the deadline, not by the blocked handler
    echo.release.set()


def test_no_broker_is_unavailable_within_the_deadline(short_tmp: Path) -> None:
    home = MeshHome(short_tmp / "h")
    provision(home, {"meshctl": "operator"})  # keys, but no broker running
    started = time.monotonic()
    with pytest.raises(Unavailable, match="no CURVE handshake"):
        call_once(home, "meshctl", "mesh.ping", timeout=0.3)
    assert time.monotonic() - started < 5


def test_it_needs_no_event_loop() -> None:
    code = "import sys, shared; shared.call_once; shared.OneShot; print('asyncio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"


async def test_a_call_made_loads_no_event_loop_either(mesh: InProcessMesh) -> None:
    # The handshake is read from the monitor socket without pyzmq's monitor helper, which would
    # import zmq.asyncio (and asyncio with it) into a command that runs no event loop.
    await mesh.start_service(Echo())
    code = ("import sys; from pathlib import Path; import shared; "
            f"home = shared.MeshHome(Path({str(mesh.home.root)!r})); "
            "reply = shared.call_once(home, 'meshctl', 'echo.echo', {'value': 7}, timeout=5); "
            "print(reply['value'], 'asyncio' in sys.modules)")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert out.decode().split() == ["7", "False"], err.decode()

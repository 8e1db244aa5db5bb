"""The service runtime: dispatch, actor semantics, errors, deadlines, shutdown, reconnects."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest
import structlog

from shared import (
    BadRequest,
    Forbidden,
    HandshakeError,
    Internal,
    MeshHome,
    RequestContext,
    Service,
    Timeout,
    Unavailable,
    configure_logging,
    decode_body,
    handler,
    message,
    serve,
)
from shared.keeper import keep_unsealed
from shared.testing import call_handler

from .conftest import eventually, holds
from .echo_service import Echo, EchoRequest
from .mesh import InProcessMesh
from .rawpeer import RawPeer


async def test_handlers_can_be_called_directly_without_a_mesh() -> None:
    echo = Echo()
    assert await call_handler(echo, "echo", {"value": [1, "two"]}, caller="tester") == {
        "value": [1, "two"], "caller": "tester", "role": "operator", "fingerprint": ""}
    assert (await call_handler(echo, "health"))["state"] == "ready"
    with pytest.raises(BadRequest, match="unknown field"):
        await call_handler(echo, "echo", {"value": 1, "other": 2})


def test_dispatch_table_is_explicit_and_refuses_private_names() -> None:
    assert set(Echo.handlers) == {"health", "echo", "block", "block_concurrent", "fail", "refuse", "login",
                                  "pong", "verbose"}
    async def hidden(self: object, ctx: object, req: object) -> None:
        return None

    for bad_name in ("_hidden", "a._b", "Upper", "a..b"):
        with pytest.raises(ValueError, match="lowercase words separated by dots"):
            handler(bad_name)(hidden)
    with pytest.raises(TypeError, match="must be an async function"):
        handler("sync")(lambda self, ctx, req: None)  # type: ignore[arg-type]


async def test_requests_reach_handlers_with_the_stamped_caller(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    reply = await client.call("echo.echo", {"value": {"nested": [1, 2.5, None, b"\x00"]}}, timeout=2)
    assert reply == {"value": {"nested": [1, 2.5, None, b"\x00"]}, "caller": "meshctl", "role": "operator",
                     "fingerprint": mesh.pairs["meshctl"].certificate.fingerprint}  # stamped by the broker


async def test_schema_violations_are_bad_requests(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    with pytest.raises(BadRequest, match="unknown field"):
        await client.call("echo.echo", {"value": 1, "sneaky": 2}, timeout=2)
    with pytest.raises(BadRequest, match="missing field"):
        await client.call("echo.login", {}, timeout=2)
    with pytest.raises(BadRequest, match="must be of type str"):
        await client.call("echo.login", {"password": 5}, timeout=2)
    with pytest.raises(BadRequest, match="must be a map"):
        await client.call("echo.echo", [1, 2], timeout=2)
    with pytest.raises(BadRequest, match="no such thing"):
        await client.call("echo.refuse", timeout=2)
    with pytest.raises(BadRequest) as info:  # a long error still arrives, cut to fit a header
        await client.call("echo.verbose", timeout=2)
    assert info.value.message.startswith("é") and len(info.value.message.encode()) <= 900
    assert await client.call("echo.pong", {"value": 3}, timeout=2) == {"pong": 3}
    with pytest.raises(Internal):  # the handler broke its declared reply type: its fault
        await client.call("echo.pong", {"value": "three"}, timeout=2)


async def test_an_unknown_method_lists_the_services_methods(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    with pytest.raises(BadRequest) as info:
        await client.call("echo.nope", timeout=2)
    assert info.value.message == ("unknown method echo.nope; methods: block, block_concurrent, echo, fail, "
                                  "health, login, pong, refuse, verbose")
    with pytest.raises(BadRequest) as info:  # nothing in that namespace: no list at all
        await client.call("echo.drafts.nope", timeout=2)
    assert info.value.message == "unknown method echo.drafts.nope"


class GroupedEcho(Service):
    """Registers as ``echo`` with methods in groups, as storage has (``kv.*``, ``backup.*``)."""

    name = "echo"

    @handler("drafts.get", request=EchoRequest)
    async def drafts_get(self, ctx: RequestContext, req: EchoRequest) -> dict[str, Any]:
        return {}

    @handler("drafts.put", request=EchoRequest)
    async def drafts_put(self, ctx: RequestContext, req: EchoRequest) -> dict[str, Any]:
        return {}

    @handler("secrets.rotate", request=EchoRequest)
    async def secrets_rotate(self, ctx: RequestContext, req: EchoRequest) -> dict[str, Any]:
        return {}


async def test_an_unknown_method_in_a_group_lists_only_that_group(mesh: InProcessMesh) -> None:
    # A caller granted only echo.drafts.* reaches echo.drafts.nope: it must not learn secrets.rotate.
    await mesh.start_service(GroupedEcho())
    client = await mesh.client("meshctl")
    with pytest.raises(BadRequest) as info:
        await client.call("echo.drafts.nope", timeout=2)
    assert info.value.message == "unknown method echo.drafts.nope; methods: drafts.get, drafts.put"
    with pytest.raises(BadRequest) as info:
        await client.call("echo.nope", timeout=2)
    assert info.value.message.endswith("methods: drafts.get, drafts.put, health, secrets.rotate")


async def test_mailbox_takes_one_message_at_a_time_unless_concurrent(mesh: InProcessMesh) -> None:
    echo = Echo()
    await mesh.start_service(echo)
    client = await mesh.client("meshctl")
    calls = [asyncio.create_task(client.call("echo.block", timeout=5)) for _ in range(3)]
    await asyncio.wait_for(echo.entered.wait(), 5)
    health = asyncio.create_task(client.call("echo.health", timeout=5))
    # All four requests reached the service (in flight at the broker); only one runs.
    await eventually(lambda: holds(len(mesh.broker.state.in_flight) == 4))
    assert echo.active == 1 and not health.done()
    echo.release.set()
    await asyncio.gather(*calls, health)
    assert echo.max_active == 1

    echo.release.clear()
    echo.max_active = 0
    concurrent = [asyncio.create_task(client.call("echo.block_concurrent", timeout=5)) for _ in range(3)]
    await eventually(lambda: holds(echo.active == 3))
    echo.release.set()
    await asyncio.gather(*concurrent)
    assert echo.max_active == 3



async def test_a_full_mailbox_answers_unavailable_and_the_queued_requests_are_served(mesh: InProcessMesh) -> None:
    echo = Echo()
    runner = await mesh.start_service(echo)
    runner.mailbox.bound = 1  # (10000 in service)
    client = await mesh.client("meshctl")
    running = asyncio.create_task(client.call("echo.block", timeout=5))
    await asyncio.wait_for(echo.entered.wait(), 5)  # taken by the worker: the mailbox is empty again
    queued = asyncio.create_task(client.call("echo.block", timeout=5))
    await eventually(lambda: holds(runner.mailbox.qsize() == 1))
    with pytest.raises(Unavailable, match=r"^echo is overloaded$"):
        await client.call("echo.health", timeout=5)
    echo.release.set()
    assert await running == await queued == {"released": True}
    assert runner.mailbox.qsize() == 0
    await asyncio.wait_for(runner.mailbox.join(), 5)  # nothing left unfinished


async def _suspend_once() -> None:
    """Suspend the handler for one pass of the event loop, as a handler awaiting I/O does (the
    future is resolved by the loop itself, on its next pass; nothing here waits for time)."""
    loop = asyncio.get_running_loop()
    resumed = loop.create_future()
    loop.call_soon(resumed.set_result, None)
    await resumed


class Waiting(Echo):
    """Echo, plus handlers that wait (suspend) before they answer or fail."""

    @handler("late", request=EchoRequest)
    async def late(self, ctx: RequestContext, req: EchoRequest) -> dict[str, Any]:
        await _suspend_once()
        await _suspend_once()
        return {"late": req.value}

    @handler("late_refuse", request=EchoRequest)
    async def late_refuse(self, ctx: RequestContext, req: EchoRequest) -> None:
        await _suspend_once()
        raise BadRequest("refused after waiting")

    @handler("late_fail", request=EchoRequest)
    async def late_fail(self, ctx: RequestContext, req: EchoRequest) -> None:
        await _suspend_once()
        raise RuntimeError("failed after waiting")


async def test_handlers_that_wait_answer_and_fail_as_those_that_do_not(mesh: InProcessMesh) -> None:
    """The runtime runs a handler to its first suspension at once and arms the deadline only then
    (issue 18): what a handler that waits returns or raises reaches the caller the same way."""
    await mesh.start_service(Waiting())
    client = await mesh.client("meshctl")
    assert await client.call("echo.late", {"value": [1, "two"]}, timeout=5) == {"late": [1, "two"]}
    with pytest.raises(BadRequest, match="refused after waiting"):
        await client.call("echo.late_refuse", timeout=5)
    with pytest.raises(Internal, match=r"^internal error$"):
        await client.call("echo.late_fail", timeout=5)
    assert (await client.call("echo.echo", {"value": 1}, timeout=5))["value"] == 1


async def test_a_handler_still_running_at_its_deadline_is_cancelled_and_the_mailbox_moves_on(
        mesh: InProcessMesh) -> None:
    """At its request's deadline a handler is cancelled, and nothing is sent (the broker has answered
    the caller TIMEOUT). ``echo.block`` is never released here: only that cancellation frees the
    one-at-a-time mailbox for the next request."""
    echo = Echo()
    runner = await mesh.start_service(echo)
    client = await mesh.client("meshctl")
    with pytest.raises(Timeout):
        await client.call("echo.block", timeout=0.3)
    assert echo.entered.is_set()
    assert (await client.call("echo.health", timeout=5))["state"] == "ready"
    assert echo.active == 0  # block's finally ran: it was cancelled, not left waiting
    assert not echo.release.is_set() and runner.mailbox.qsize() == 0


async def test_unexpected_failures_are_internal_and_leak_nothing(mesh: InProcessMesh) -> None:
    planted = "correct-horse-battery-staple-7731"
    stream = io.StringIO()
    configure_logging("test", stream=stream)
    try:
        await mesh.start_service(Echo())
        client = await mesh.client("meshctl")
        with pytest.raises(Internal) as info:
            await client.call("echo.fail", timeout=2)
        assert info.value.message == "internal error"
        with pytest.raises(Internal) as info:
            await client.call("echo.login", {"password": planted}, timeout=2)
        assert planted not in info.value.message
    finally:
        structlog.reset_defaults()
    output = stream.getvalue()
    events = [json.loads(line) for line in output.splitlines()]
    failures = [e for e in events if e["event"] == "handler_failed"]
    assert [f["method"] for f in failures] == ["fail", "login"]
    assert failures[0]["error_type"] == "RuntimeError"
    assert planted not in output and "/etc/secret-path" not in output
    spool = mesh.home.spool / "broker-audit.spool"
    assert planted.encode() not in (spool.read_bytes() if spool.exists() else b"")


def test_redaction_processor_hides_declared_sensitive_fields() -> None:
    stream = io.StringIO()
    configure_logging("test", stream=stream)
    try:
        structlog.get_logger().info("login", password="pw-1", context={"token": "tk-2", "user": "ann"},
                                    items=[{"secret": "s-3"}])
    finally:
        structlog.reset_defaults()
    line = json.loads(stream.getvalue())
    assert line["password"] == "<redacted>" and line["context"] == {"token": "<redacted>", "user": "ann"}
    assert "s-3" not in stream.getvalue()


def test_logged_tracebacks_never_show_local_variables() -> None:
    stream = io.StringIO()
    configure_logging("test", stream=stream)

    def failing(key_material: bytes) -> None:
        planted_local = "planted-local-value-5531"  # what structlog would print with show_locals
        raise ValueError(f"failed after {len(planted_local)} characters")
    try:
        try:
            failing(b"planted-argument-bytes-9917")
        except ValueError:
            structlog.get_logger().exception("crashed")
    finally:
        structlog.reset_defaults()
    output = stream.getvalue()
    assert "failed after 24 characters" in output  # the traceback is there ...
    assert "planted-local-value" not in output and "planted-argument" not in output  # ... its locals are not


async def test_the_broker_expires_requests_past_their_deadline(mesh: InProcessMesh) -> None:
    echo = Echo()
    await mesh.start_service(echo)
    peer = RawPeer(mesh.context, mesh.home.broker_endpoint, keypair=mesh.pairs["meshctl"],
                   broker_key=mesh.pairs["broker"].certificate.public_key)
    try:
        await peer.send({"v": 1, "k": "req", "id": 9, "to": "echo.block", "ttl": 200})
        header, _ = await peer.recv(timeout=3)
        assert (header["k"], header["code"], header["id"]) == ("err", "TIMEOUT", 9)
        await peer.send({"v": 1, "k": "req", "id": 10, "to": "echo.health", "ttl": 10**9})
        assert (await peer.recv(timeout=3))[0]["code"] == "BAD_REQUEST"  # above max_ttl_ms
    finally:
        echo.release.set()
        peer.close()


async def test_graceful_stop_finishes_in_flight_work_then_deregisters(mesh: InProcessMesh) -> None:
    echo = Echo()
    runner = await mesh.start_service(echo)
    client = await mesh.client("meshctl")
    in_flight = asyncio.create_task(client.call("echo.block", timeout=5))
    await asyncio.wait_for(echo.entered.wait(), 5)
    stopping = asyncio.create_task(runner.stop())

    async def deregistered() -> bool:
        return not await client.call("mesh.services", timeout=2)

    await eventually(deregistered)
    with pytest.raises(Unavailable):
        await client.call("echo.health", timeout=2)
    echo.release.set()
    assert await in_flight == {"released": True}
    await asyncio.wait_for(stopping, 5)


async def test_services_and_subscriptions_come_back_after_a_broker_restart(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    subscription = await client.subscribe("test.")
    mesh.stop_broker()
    with pytest.raises(Unavailable):
        await client.call("echo.health", timeout=1)
    mesh.start_broker()

    async def healthy() -> bool:
        try:
            return (await client.call("echo.health", timeout=0.5))["state"] == "ready"
        except (Unavailable, Timeout):  # the broker or echo is not back yet; anything else is a failure
            return False

    await eventually(healthy, deadline=10)

    async def published() -> bool:
        await client.publish("test.after-restart", {"n": 1}, timeout=1)
        try:
            event = await subscription.next(timeout=0.2)
        except Timeout:  # published before the subscription was renewed: publish again
            return False
        return event.topic == "test.after-restart" and event.sender == "meshctl"

    await eventually(published, deadline=5)


async def test_events_carry_the_authenticated_publisher(mesh: InProcessMesh) -> None:
    listener = await mesh.client("meshctl")
    subscription = await listener.subscribe("outsider.")
    outsider = await mesh.client("outsider")
    await outsider.publish("outsider.news", {"x": 1}, timeout=2)
    event = await subscription.next(timeout=2)
    assert (event.topic, event.sender, event.body) == ("outsider.news", "outsider", {"x": 1})
    everything = await listener.subscribe("*")
    await outsider.publish("outsider.all", timeout=2)
    assert (await everything.next(timeout=2)).topic == "outsider.all"
    assert (await subscription.next(timeout=2)).topic == "outsider.all"
    with pytest.raises(Forbidden):  # "*" is a wildcard only for identities granted "*"
        await outsider.subscribe("*", timeout=2)
    await subscription.close()
    await outsider.publish("outsider.more", timeout=2)
    # The "*" subscription on the same connection hears the event: it has reached this client, so a
    # closed subscription that still took events would hold it by now. Closing one subscription
    # leaves the client's others working.
    assert (await everything.next(timeout=2)).topic == "outsider.more"
    assert subscription.queue.empty()
    with pytest.raises(Timeout, match=re.escape("no event on 'outsider.'")):  # nothing arrives, as opposed to an error
        await subscription.next(timeout=0.3)


@message
class _Probe:
    n: int


def test_messages_round_trip_and_refuse_wrong_types() -> None:
    assert _Probe.from_wire({"n": 3}).to_wire() == {"n": 3}  # type: ignore[attr-defined]
    for bad in ({"n": "3"}, {"n": True}, {}, None, []):
        with pytest.raises(BadRequest):
            _Probe.from_wire(bad)  # type: ignore[attr-defined]
    assert decode_body(b"\x81\xa1n\x03", 100) == {"n": 3}


async def test_a_service_dropped_for_silence_reconnects_and_registers_again(mesh: InProcessMesh) -> None:
    runner = await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    connection = runner.client.connection
    beat = next(t for t in connection._tasks if t.get_name().endswith("-heartbeat"))
    beat.cancel()  # the service stalls: no heartbeats reach the broker

    async def dropped() -> bool:
        return not await operator.call("mesh.services", timeout=2)

    await eventually(dropped, deadline=5)
    connection._tasks.append(asyncio.create_task(connection._beat()))  # it recovers

    async def back() -> bool:
        try:
            return (await operator.call("echo.health", timeout=0.5))["state"] == "ready"
        except (Unavailable, Timeout):  # echo has not registered again yet; anything else is a failure
            return False

    await eventually(back, deadline=5)


async def test_a_revoked_service_exits_with_a_clear_error(mesh: InProcessMesh) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(serve(Echo(), MeshHome(mesh.home.root), stop=stop))
    operator = await mesh.client("meshctl")

    async def registered() -> bool:
        return [s["name"] for s in await operator.call("mesh.services", timeout=2)] == ["echo"]

    await eventually(registered)
    await operator.call("mesh.certs.revoke", {"ref": "echo"}, timeout=2)
    with pytest.raises(HandshakeError, match="revoked"):
        await asyncio.wait_for(running, 5)


async def test_answered_requests_do_not_pile_up_in_the_deadline_heap(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    for _ in range(3):
        await asyncio.gather(*(client.call("echo.health", timeout=5) for _ in range(500)))
    # The heap is compacted when a request is pushed onto a heap more than twice the size
    # of what is in flight (plus slack): one more request after the bursts triggers it.
    await client.call("echo.health", timeout=5)
    assert not mesh.broker.state.in_flight
    assert len(mesh.broker.state.deadlines) <= 2 * 1 + 1024 + 1  # the bound, with one request in flight


async def test_a_keeper_loop_stops_when_cancelled_as_it_is_woken() -> None:
    """A service's keeper loop (shared/_keeper.py) must end when its service stops, even if the stop
    comes in the same turn of the event loop as a wake-up. With ``asyncio.wait_for`` on Python 3.11
    the wake-up won and the cancellation was lost, so audit, stopped just as keyvault announced
    ``security.unsealed``, never finished stopping."""
    wake = asyncio.Event()
    rounds = 0

    async def unsealed_round() -> None:
        nonlocal rounds
        rounds += 1

    async def never_called() -> bool:
        raise AssertionError("the keeper is not sealed here")

    keeper = asyncio.create_task(keep_unsealed(wake, lambda: False, never_called, unsealed_round, period=3600,
                                               retry_min=1, retry_max=1))
    try:
        await eventually(lambda: holds(rounds == 1))  # its first round is done: it now waits to be woken
        wake.set()
        keeper.cancel()  # no await in between: the wake-up and the cancellation race
        done, _ = await asyncio.wait({keeper}, timeout=5)
        assert keeper in done and keeper.cancelled(), f"the keeper ignored its cancellation ({rounds} rounds)"
        assert rounds == 1
    finally:
        keeper.cancel()


async def test_a_request_cancelled_as_its_reply_arrives_is_cancelled(mesh: InProcessMesh) -> None:
    """A caller stopped just as its reply arrives must stop: with ``asyncio.wait_for`` on Python 3.11
    the reply won and the cancellation was lost, so a service stopping mid-call (audit fetching its
    keys as it was stopped) carried on and its stop never ended."""
    echo = Echo()
    await mesh.start_service(echo)
    client = await mesh.client("meshctl")
    connection = client.connection
    call = asyncio.create_task(client.call("echo.block", timeout=30))
    try:
        await asyncio.wait_for(echo.entered.wait(), 5)  # the request is out; echo holds its reply
        (waiting,) = connection._waiting.values()
        waiting.set_result(({"k": "rep"}, None))  # the reply arrives ...
        call.cancel()  # ... in the same turn of the event loop as the cancellation
        done, _ = await asyncio.wait({call}, timeout=5)
        assert call in done and call.cancelled()
    finally:
        call.cancel()
        echo.release.set()


async def test_waiting_for_an_event_cancelled_as_it_arrives_is_cancelled(mesh: InProcessMesh) -> None:
    """The same race for a subscriber (audit and storage follow keyvault's ``security.*`` events):
    the event must not win over the cancellation."""
    client = await mesh.client("meshctl")
    subscription = await client.subscribe("test.")
    waiter = asyncio.create_task(subscription.next(timeout=30))
    try:
        await eventually(lambda: holds(len(subscription.queue._getters) == 1))  # type: ignore[attr-defined]
        client._on_event("test.raced", "meshctl", None)  # the event arrives ...
        waiter.cancel()  # ... in the same turn of the event loop as the cancellation
        done, _ = await asyncio.wait({waiter}, timeout=5)
        assert waiter in done and waiter.cancelled()
        assert (await subscription.next(timeout=1)).topic == "test.raced"  # the event stays queued
    finally:
        waiter.cancel()


async def test_a_request_past_its_own_deadline_times_out_and_leaves_nothing_waiting(mesh: InProcessMesh) -> None:
    """The client's deadline is one timer on the reply's future (issue 18): it fails the call with
    Timeout even while the broker would still wait, and the request is forgotten."""
    echo = Echo()
    await mesh.start_service(echo)
    client = await mesh.client("meshctl")
    try:
        with pytest.raises(Timeout, match=re.escape("no reply within 0.200 s")):
            await client.connection.request({"k": "req", "to": "echo.block", "ttl": 5000}, None, 0.2)
        assert client.connection._waiting == {}
    finally:
        echo.release.set()
    # The connection still works, and an answered call leaves nothing waiting either.
    assert (await client.call("echo.echo", {"value": 1}, timeout=2))["value"] == 1
    assert client.connection._waiting == {}


async def test_many_calls_in_flight_on_one_connection_are_all_answered(mesh: InProcessMesh) -> None:
    """More replies than one reader pass handles (256) arrive while calls are being sent: the reader
    drains them across passes, and a send that consumed the socket's edge-triggered signal still
    lets the waiting replies be read (issue 18: the DEALER is read from the loop's own reader)."""
    await mesh.start_service(Echo())
    client = await mesh.client("meshctl")
    replies = await asyncio.gather(*(client.call("echo.echo", {"value": i}, timeout=10) for i in range(700)))
    assert [r["value"] for r in replies] == list(range(700))
    assert client.connection._waiting == {}

"""The attack suite: one test per attack on the broker (issue 2, invariants 1-4 and 8)."""

from __future__ import annotations

import asyncio
import os
import struct

import msgpack
import pytest
import zmq

from shared import (
    BadRequest,
    Forbidden,
    HandshakeError,
    MeshClient,
    RateLimited,
    Unauthenticated,
    Unavailable,
    certs,
    encode_header,
)

from .conftest import eventually
from .echo_service import Echo
from .mesh import InProcessMesh
from .rawpeer import RawPeer


def read_spool(mesh: InProcessMesh) -> list[dict]:
    """Parse the broker's audit spool file as it is on disk."""
    data = (mesh.home.spool / "broker-audit.spool").read_bytes()
    records, offset = [], 0
    while offset + 4 <= len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        records.append(msgpack.unpackb(data[offset + 4:offset + 4 + size]))
        offset += 4 + size
    return records


def raw(mesh: InProcessMesh, name: str, **kwargs) -> RawPeer:
    return RawPeer(mesh.context, mesh.home.broker_endpoint, keypair=mesh.pairs.get(name),
                   broker_key=mesh.pairs["broker"].certificate.public_key, **kwargs)


async def test_unknown_key_is_refused_and_becomes_pending(mesh: InProcessMesh) -> None:
    stranger = certs.generate("stranger", "device")
    certs.save_keypair(stranger, mesh.home.keys)  # keys exist, but not on the allow-list
    with pytest.raises(HandshakeError, match="refused our certificate"):
        await MeshClient.connect(mesh.home, "stranger", config=mesh.config, context=mesh.context, timeout=3)
    operator = await mesh.client("meshctl")

    async def pending() -> bool:
        entries = await operator.call("mesh.certs.pending", timeout=2)
        return any(e["fingerprint"] == stranger.certificate.fingerprint for e in entries)

    await eventually(pending)
    stats = await operator.call("mesh.stats", timeout=2)
    assert stats["handshake_failures"]["auth"] >= 1


@pytest.mark.parametrize("mechanism", ["null", "plain"])
async def test_null_and_plain_clients_are_refused(mesh: InProcessMesh, mechanism: str) -> None:
    peer = raw(mesh, "meshctl", mechanism=mechanism)
    try:
        await peer.send({"v": 1, "k": "req", "id": 1, "to": "mesh.ping", "ttl": 1000})
        with pytest.raises(TimeoutError):
            await peer.recv(timeout=0.5)
        assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in await peer.events({zmq.EVENT_HANDSHAKE_SUCCEEDED}, 0.3)
    finally:
        peer.close()
    operator = await mesh.client("meshctl")
    stats = await operator.call("mesh.stats", timeout=2)
    assert sum(stats["handshake_failures"].values()) >= 1


async def test_wrong_broker_key_gives_a_clear_handshake_error(mesh: InProcessMesh) -> None:
    impostor = certs.generate("broker", "service").certificate.public_key
    with pytest.raises(HandshakeError, match="broker public key we pinned"):
        await MeshClient.connect(mesh.home, "meshctl", config=mesh.config, context=mesh.context,
                                 broker_key=impostor, timeout=3)


async def test_registering_another_services_name_is_refused(mesh: InProcessMesh) -> None:
    peer = raw(mesh, "storage")
    try:
        for request_id, name in enumerate(["keyvault", "mesh"], 1):
            await peer.send({"v": 1, "k": "reg", "id": request_id, "name": name})
            header, _ = await peer.recv(timeout=2)
            assert (header["k"], header["code"], header["id"]) == ("err", "FORBIDDEN", request_id)
        await peer.send({"v": 1, "k": "reg", "id": 3, "name": "storage"})
        assert (await peer.recv(timeout=2))[0]["k"] == "rep"
        await peer.send({"v": 1, "k": "reg", "id": 4, "name": "storage"})
        header, _ = await peer.recv(timeout=2)
        assert header["code"] == "CONFLICT"  # once per connection
    finally:
        peer.close()
    fresh = raw(mesh, "storage")
    try:  # a goodbye before registering does not block a later registration
        await fresh.send({"v": 1, "k": "bye", "id": 1})
        assert (await fresh.recv(timeout=2))[0]["k"] == "rep"
        await fresh.send({"v": 1, "k": "reg", "id": 2, "name": "storage"})
        assert (await fresh.recv(timeout=2))[0]["k"] == "rep"
    finally:
        fresh.close()
    operator_peer = raw(mesh, "meshctl")
    try:  # an operator certificate may not register a service at all
        await operator_peer.send({"v": 1, "k": "reg", "id": 1, "name": "meshctl"})
        assert (await operator_peer.recv(timeout=2))[0]["code"] == "FORBIDDEN"
    finally:
        operator_peer.close()
    records = read_spool(mesh)
    assert any(r["type"] == "mesh.deny" and r["target"] == "keyvault" and r["actor"] == "storage"
               for r in records)


async def test_forged_sender_field_is_ignored(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    peer = raw(mesh, "meshctl")
    try:
        await peer.send({"v": 1, "k": "req", "id": 7, "to": "echo.echo", "ttl": 2000,
                         "from": "keyvault", "role": "service", "fp": "0" * 64}, {"value": 1})
        header, body = await peer.recv(timeout=2)
        assert header["k"] == "rep" and header["from"] == "echo"
        reply = msgpack.unpackb(body)
        assert (reply["caller"], reply["role"]) == ("meshctl", "operator")
        # The key fingerprint is the broker's stamp from the handshake, never the sender's word.
        assert reply["fingerprint"] == mesh.pairs["meshctl"].certificate.fingerprint
    finally:
        peer.close()


async def test_duplicate_routing_id_cannot_steal_replies(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    victim = raw(mesh, "meshctl")
    thief = raw(mesh, "outsider", routing_id=b"thief")
    # The thief's connection is up before its twin claims the same routing id.
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED in await thief.events({zmq.EVENT_HANDSHAKE_SUCCEEDED}, 3)
    twin = raw(mesh, "outsider", routing_id=b"thief")
    try:
        await victim.send({"v": 1, "k": "req", "id": 1, "to": "echo.echo", "ttl": 2000}, {"value": "mine"})
        await thief.send({"v": 1, "k": "req", "id": 1, "to": "echo.health", "ttl": 2000})
        await twin.send({"v": 1, "k": "req", "id": 2, "to": "echo.health", "ttl": 2000})
        header, body = await victim.recv(timeout=2)
        assert header["k"] == "rep" and msgpack.unpackb(body)["value"] == "mine"
        header, _ = await thief.recv(timeout=2)
        assert header["code"] == "BAD_REQUEST" and "routing id" in header["msg"]
        with pytest.raises(TimeoutError):  # never served, never handed the thief's traffic
            await twin.recv(timeout=0.3)
    finally:
        for peer in (victim, thief, twin):
            peer.close()


async def test_revoked_peer_on_a_live_connection_is_cut_off(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    victim = await mesh.client("outsider")
    assert (await victim.call("echo.health", timeout=2))["state"] == "ready"
    operator = await mesh.client("meshctl")
    await operator.call("mesh.certs.revoke", {"ref": "outsider"}, timeout=2)
    # Refused by the broker on the request itself (UNAUTHENTICATED), or already known to be
    # revoked from a refused heartbeat (HandshakeError): either way, cut off.
    with pytest.raises((Unauthenticated, HandshakeError), match="revoked"):
        await victim.call("echo.health", timeout=1)
    listed = await operator.call("mesh.certs.list", {"state": "revoked"}, timeout=2)
    assert [e["name"] for e in listed] == ["outsider"]
    assert any(r["type"] == "mesh.cert_revoke" for r in read_spool(mesh))


async def test_removing_a_certificate_file_cuts_off_within_one_second(mesh: InProcessMesh) -> None:
    victim = await mesh.client("outsider")
    await mesh.start_service(Echo())
    assert (await victim.call("echo.health", timeout=2))["state"] == "ready"
    (mesh.home.certs / "allowed" / "outsider.key").unlink()

    async def refused() -> bool:
        try:
            await victim.call("echo.health", timeout=0.5)
        except (Unauthenticated, HandshakeError):
            return True
        return False

    await eventually(refused, deadline=1.0)


async def test_corrupt_certificate_file_does_not_keep_a_revoked_key_allowed(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    victim = await mesh.client("outsider")
    operator = await mesh.client("meshctl")
    assert (await victim.call("echo.health", timeout=2))["state"] == "ready"
    allowed = mesh.home.certs / "allowed"
    outsider = mesh.pairs["outsider"].certificate
    original = (allowed / "outsider.key").read_bytes()
    # Corrupt files appear beside the victim's intact allow-list file: garbage, and a
    # damaged copy naming the same identity. They are reported, and by themselves they
    # cut nobody off, so the refusal below can only come from the revocation.
    (allowed / "junk.key").write_bytes(os.urandom(64))
    damaged = b"metadata\n    name = \"outsider\"\ncurve\n    public-key = \"\x00\"\n"
    (allowed / "outsider-copy.key").write_bytes(damaged)
    reply = await operator.call("mesh.certs.reload", timeout=2)
    assert {p["file"] for p in reply["problems"]} == {"allowed/junk.key", "allowed/outsider-copy.key"}
    assert (await victim.call("echo.health", timeout=2))["state"] == "ready"
    certs.save_public(outsider, mesh.home.certs / "revoked" / f"{outsider.fingerprint}.key")
    reply = await operator.call("mesh.certs.reload", timeout=2)
    assert {"file": "allowed/outsider.key", "problem": "key is revoked"} in reply["problems"]
    with pytest.raises((Unauthenticated, HandshakeError), match="revoked"):
        await victim.call("echo.health", timeout=1)
    # The allow-list file was never touched: the revocation alone keeps the key out.
    assert (allowed / "outsider.key").read_bytes() == original
    assert certs.load_certificate(allowed / "outsider.key").public_key == outsider.public_key
    assert (await operator.call("echo.health", timeout=2))["state"] == "ready"


async def test_acl_deny_is_answered_and_audited(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    outsider = await mesh.client("outsider")
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)
    with pytest.raises(Forbidden):
        await outsider.call("mesh.stats", timeout=2)
    with pytest.raises(Forbidden):
        await outsider.publish("test.hello", timeout=2)
    with pytest.raises(Forbidden):
        await outsider.subscribe("mesh.", timeout=2)
    await outsider.publish("outsider.ok", timeout=2)  # what the ACL grants still works
    denies = [r for r in read_spool(mesh) if r["type"] == "mesh.deny"]
    assert {(r["actor"], r["action"], r["target"]) for r in denies} >= {
        ("outsider", "call", "echo.echo"), ("outsider", "call", "mesh.stats"),
        ("outsider", "publish", "test.hello"), ("outsider", "subscribe", "mesh.")}


async def test_malformed_and_oversize_messages_are_refused_while_others_are_served(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    bystander = await mesh.client("meshctl")
    attacker = raw(mesh, "outsider")
    try:
        bad_headers = [
            b"\xc1garbage",                                   # not msgpack
            msgpack.packb([1, 2, 3]),                         # not a map
            msgpack.packb({1: "int key"}),                    # non-string key
            msgpack.packb({"v": 1, "k": "req", "id": 1, "to": "echo.health", "ttl": 1, "x": 1}),
            msgpack.packb({"v": 1, "k": "req", "id": -1, "to": "echo.health", "ttl": 1}),
            msgpack.packb({"v": 1, "k": "hb", "deep": [[[[[]]]]]}),
            msgpack.packb({"v": 1, "k": "req", "id": 1, "to": msgpack.ExtType(1, b"x"), "ttl": 1}),
            b"\x81" + msgpack.packb("v") + b"\xc7\x01\x05x",  # ext type inside
            msgpack.packb({"v": 1, "k": "req", "id": 1, "to": "x" * 5000, "ttl": 1}),  # header limit
        ]
        for header in bad_headers:
            await attacker.send(header)
            reply, _ = await attacker.recv(timeout=2)
            assert reply["k"] == "err" and reply["code"] == "BAD_REQUEST", header
            assert (await bystander.call("echo.health", timeout=2))["state"] == "ready"
        await attacker.sock.send_multipart([encode_header({"v": 1, "k": "hb"}), b"a", b"b"])
        assert (await attacker.recv(timeout=2))[0]["code"] == "BAD_REQUEST"
        # Over MAXMSGSIZE: libzmq drops the connection; the broker never sees the message.
        await attacker.sock.send_multipart([encode_header({"v": 1, "k": "hb"}), b"x" * (2 << 20)])
        assert zmq.EVENT_DISCONNECTED in await attacker.events({zmq.EVENT_DISCONNECTED}, 3)
        assert (await bystander.call("echo.health", timeout=2))["state"] == "ready"
    finally:
        attacker.close()


async def test_unknown_and_underscore_methods_are_refused(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    for target in ("echo.nope", "echo._private", "echo.__init__", "mesh.nope", "mesh._stop", "noservice"):
        with pytest.raises(BadRequest):
            await operator.call(target, timeout=2)
    assert (await operator.call("echo.health", timeout=2))["state"] == "ready"


async def test_unknown_protocol_version_is_refused(mesh: InProcessMesh) -> None:
    peer = raw(mesh, "meshctl")
    try:
        await peer.send({"v": 2, "k": "req", "id": 5, "to": "mesh.ping", "ttl": 1000})
        header, _ = await peer.recv(timeout=2)
        assert header["code"] == "BAD_REQUEST" and "version" in header["msg"]
    finally:
        peer.close()


async def test_request_to_a_dead_service_fails_with_unavailable(mesh: InProcessMesh) -> None:
    operator = await mesh.client("meshctl")
    with pytest.raises(Unavailable, match="not registered"):
        await operator.call("echo.echo", timeout=5)
    echo = Echo()
    runner = await mesh.start_service(echo)
    call = asyncio.create_task(operator.call("echo.block", timeout=10))
    await asyncio.wait_for(echo.entered.wait(), 5)
    await runner.client.close()  # the service dies mid-request
    # The broker notices the closed connection and fails the call long before its deadline:
    # a TIMEOUT here would mean the caller waited the full 10 s.
    with pytest.raises(Unavailable, match="went away"):
        await call


async def test_peer_that_stops_heartbeating_is_deregistered(mesh: InProcessMesh) -> None:
    peer = raw(mesh, "storage")
    operator = await mesh.client("meshctl")
    try:
        await peer.send({"v": 1, "k": "reg", "id": 1, "name": "storage"})
        assert (await peer.recv(timeout=2))[0]["k"] == "rep"
        names = [s["name"] for s in await operator.call("mesh.services", timeout=2)]
        assert names == ["storage"]

        async def gone() -> bool:  # the raw peer never sends a heartbeat
            return not await operator.call("mesh.services", timeout=2)

        await eventually(gone, deadline=3)
        with pytest.raises(Unavailable):
            await operator.call("storage.health", timeout=2)
        # If the silent connection speaks again it is told to reconnect, not silently
        # treated as a fresh, unregistered peer.
        await peer.send({"v": 1, "k": "hb"})
        header, _ = await peer.recv(timeout=2)
        assert (header["k"], header["id"], header["code"]) == ("err", 0, "UNAVAILABLE")
    finally:
        peer.close()


async def test_flooding_identity_is_rate_limited_while_others_are_not(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    flooder = await mesh.client("flooder")
    operator = await mesh.client("meshctl")
    results = await asyncio.gather(*(flooder.call("echo.echo", timeout=2) for _ in range(30)),
                                   return_exceptions=True)
    limited = [r for r in results if isinstance(r, RateLimited)]
    served = [r for r in results if isinstance(r, dict)]
    assert len(served) <= 6 and len(limited) >= 24 and len(served) + len(limited) == 30
    for _ in range(30):
        assert (await operator.call("echo.health", timeout=2))["state"] == "ready"
    # A second connection of the same identity shares the limit instead of doubling it.
    second = await mesh.client("flooder")
    with pytest.raises(RateLimited):
        for _ in range(3):
            await second.call("echo.echo", timeout=2)
    stats = await operator.call("mesh.stats", timeout=2)
    assert stats["identities"]["flooder"]["rate_limited"] >= 24
    assert stats["identities"]["meshctl"]["rate_limited"] == 0

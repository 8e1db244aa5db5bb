"""Pairing end to end in one process: a real broker with a tcp endpoint, keyvault, audit, authn, authz,
storage and pairing; devices pair over real tcp with SPAKE2 (:mod:`shared.device`) and connect
detached with CURVE. The hostile cases come first: wrong codes, anything that is not pairing,
replays, relays, and a revoked device on a live connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.pairing.service import Pairing
from shared import ConfigError, HandshakeError, MeshError, Unauthenticated, Unavailable, certs, device, pake
from shared.tokens import MESH_AUDIENCE

from .conftest import eventually
from .pairing_rig import PairingRig, pairing_rig
from .people_rig import USER_PASSWORD, people_rig

pytestmark = pytest.mark.asyncio


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def _other_code(code: str) -> str:
    digits = pake.normalize_code(code)
    return f"{(int(digits) + 1) % 10**8:08d}"


async def _audited(r: PairingRig, event: str, count: int = 1) -> list[dict[str, Any]]:
    """The audit records of ``event`` once at least ``count`` of them are in the log."""
    async def enough() -> list[dict[str, Any]] | None:
        tail = await r.operator.call("audit.tail", {"type": event, "limit": 100}, timeout=10)
        records = list(tail["records"])
        return records if len(records) >= count else None
    found: list[dict[str, Any]] = await eventually(enough, deadline=20)
    return found


@contextlib.asynccontextmanager
async def _relay(target: str, record: list[tuple[str, bytes]]) -> AsyncIterator[str]:
    """A tcp relay in front of ``target`` that records every chunk it passes on."""
    host, port = _host_port(target)

    async def pump(name: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await src.read(65536):
                record.append((name, chunk))
                dst.write(chunk)
                await dst.drain()
        dst.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(pump("device", reader, up_writer), pump("mesh", up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def _closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """The entry point hung up without a byte (a reset, when it closed before reading what was sent)."""
    try:
        return await asyncio.wait_for(reader.read(1), 10) == b""
    except ConnectionResetError:
        return True


async def test_wrong_codes_reveal_nothing_and_three_close_the_window(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path) as r:
        started = await r.start()
        for attempt in range(3):
            where = r.device_dir(f"guess{attempt}")
            with pytest.raises(Unavailable) as refused:
                await device.join(_other_code(started["code"]), started["endpoint"], where)
            assert refused.value.message == device.PAIRING_FAILED  # the same words whatever failed
            assert os.listdir(where) == []  # nothing of the failed attempt is kept
        # A device that finds the code wrong from the mesh's reply hangs up at once; the mesh counts
        # that attempt when it reads the hang-up, which may be just after join raised. The guess
        # itself was spent before the reply went out (spend_guess), so no fourth could have run.
        async def counted() -> bool:
            window = await r.window()
            return (window["state"], window["failures"], window["max_failures"]) == ("failures", 3, 3)

        await eventually(counted, deadline=10)
        await eventually(r.entry_closed, deadline=10)
        with pytest.raises(Unavailable):  # the right code is no use once the window closed
            await device.join(started["code"], started["endpoint"], r.device_dir("late"))
        allowed = await r.operator.call("mesh.certs.list", {"state": "allowed"}, timeout=10)
        assert not [c for c in allowed if c["role"] == "device" and c["name"] != "phone"]
        reasons = [a["details"]["reason"] for a in await _audited(r, "pairing.attempt", 3)]
        assert reasons.count("incomplete") + reasons.count("wrong_code") == 3
        assert (await _audited(r, "pairing.window_closed"))[0]["details"]["reason"] == "failures"


async def test_entry_point_refuses_everything_but_pairing_and_spends_no_guess(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path) as r:
        assert not r.pairing.entry.listening  # no window: nothing listens
        started = await r.start()
        host, port = _host_port(started["endpoint"])
        hello = pake.DeviceSide(started["code"]).hello()
        garbage = [
            b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n",                     # a web request
            b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00CURVE",     # a ZMTP greeting (the broker's protocol)
            b"\xff\xff" + b"A" * 64,                                       # a frame longer than MAX_FRAME
            b"\x00\x00",                                                   # an empty frame
            pake.encode_frame({**hello, "t": "confirm"}),                 # a pairing message out of order
            pake.encode_frame({"k": "req", "to": "storage.kv.get", "ttl": 1000}),  # a mesh request
        ]
        for payload in garbage:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            await writer.drain()
            assert await _closed_without_answer(reader)
            writer.close()
        window = await r.window()
        assert (window["state"], window["failures"]) == ("open", 0)
        reasons = {a["details"]["reason"] for a in await _audited(r, "pairing.attempt", len(garbage))}
        assert reasons == {"not_a_pairing_message"}
        await r.operator.call("pairing.cancel", {}, timeout=10)
        await eventually(r.entry_closed, deadline=10)
        with pytest.raises(OSError):  # outside a window the port is closed
            await asyncio.open_connection(host, port)


async def test_sources_are_rate_limited_and_no_guess_is_spent(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path, pairing_config="per_source_per_minute = 2\n") as r:
        started = await r.start()
        host, port = _host_port(started["endpoint"])
        for _ in range(6):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"not pairing")
            writer.write_eof()
            assert await _closed_without_answer(reader)
            writer.close()
        # The limited source is refused before a byte is read, even with the right code.
        with pytest.raises(Unavailable):
            await device.join(started["code"], started["endpoint"], r.device_dir("limited"))
        window = await r.window()
        assert (window["failures"], window["refused"]) == (0, 5)
        await r.operator.call("pairing.cancel", {}, timeout=10)
        closed = (await _audited(r, "pairing.window_closed"))[0]["details"]
        assert (closed["reason"], closed["refused"]) == ("cancelled", 5)
        # A flood is counted, not written to the log once per connection: one record per source a minute.
        reasons = [a["details"]["reason"] for a in await _audited(r, "pairing.attempt", 3)]
        assert sorted(reasons) == ["not_a_pairing_message", "not_a_pairing_message", "rate_limited"]


async def test_a_relay_without_the_code_learns_nothing_and_cannot_complete(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path) as r:
        started = await r.start()
        host, port = _host_port(started["endpoint"])
        guess = _other_code(started["code"])
        learned: list[Any] = []

        async def man_in_the_middle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Toward the device it plays the mesh, toward the mesh the device, with its own guess.
            as_mesh, as_device = pake.MeshSide(guess), pake.DeviceSide(guess)
            with contextlib.suppress(pake.PairingError, OSError):
                up_reader, up_writer = await asyncio.open_connection(host, port)
                up_writer.write(pake.encode_frame(as_device.hello()))
                writer.write(pake.encode_frame(as_mesh.reply(await pake.read_frame(reader, timeout=5))))
                forged = pake.DeviceHello(certs.generate("device", "device").certificate.public_key, "evil", "x")
                up_writer.write(pake.encode_frame(
                    as_device.confirm(await pake.read_frame(up_reader, timeout=5), forged)))
                learned.append(as_mesh.confirm(await pake.read_frame(reader, timeout=5)))
            writer.close()

        server = await asyncio.start_server(man_in_the_middle, "127.0.0.1", 0)
        relay = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            with pytest.raises(Unavailable):
                await device.join(started["code"], relay, r.device_dir("victim"))
        finally:
            server.close()
        assert learned == []  # neither the device's key nor anything sealed reached the relay
        window = await eventually(lambda: _failed_once(r), deadline=10)
        assert window["state"] == "open"
        allowed = await r.operator.call("mesh.certs.list", {"state": "allowed"}, timeout=10)
        assert [c["name"] for c in allowed if c["role"] == "device"] == ["phone"]


async def _failed_once(r: PairingRig) -> dict[str, Any] | None:
    window = await r.window()
    return window if window["failures"] == 1 else None


async def test_pairing_end_to_end_and_a_recorded_exchange_replayed(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path) as r:
        started = await r.start(name="Alice's phone")
        offer = pake.decode_offer(started["offer"])
        assert (offer.endpoint, offer.code) == (started["endpoint"], pake.normalize_code(started["code"]))
        chunks: list[tuple[str, bytes]] = []
        async with _relay(started["endpoint"], chunks) as relayed:
            profile = await device.join(started["code"], relayed, r.device_dir("alice"),
                                        expect_broker=offer.broker_fingerprint)
        assert profile.name == "alice-s-phone"
        assert profile.broker_fingerprint == offer.broker_fingerprint
        for name in os.listdir(r.device_dir("alice")):
            assert stat.S_IMODE(os.stat(r.device_dir("alice") / name).st_mode) == 0o600
        window = await r.window()
        assert (window["state"], window["device"]) == ("joined", "alice-s-phone")
        await eventually(r.entry_closed, deadline=10)

        # What crossed the wire carries neither the code nor any key.
        wire = b"".join(chunk for _, chunk in chunks)
        keypair = certs.load_keypair(r.device_dir("alice") / "device.key_secret")
        for secret in (pake.normalize_code(started["code"]).encode(), started["code"].encode(),
                       keypair.certificate.public_key, keypair.secret_key, profile.broker_public_key,
                       profile.name.encode()):
            assert secret not in wire

        # Replayed to a new window, the device's recorded messages get nowhere.
        again = await r.start()
        host, port = _host_port(again["endpoint"])
        reader, writer = await asyncio.open_connection(host, port)
        for name, chunk in chunks:
            if name == "device":
                writer.write(chunk)
                await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10)  # the mesh's own reply, then it hangs up
        writer.close()
        window = await eventually(lambda: _failed_once(r), deadline=10)
        assert window["device"] is None

        # The paired device connects detached (tcp, CURVE, pinned key) and is seen as such.
        client = await r.connect("alice")
        await client.call("audit.checkpoint", {"since": 0}, timeout=10)
        # The client library picks the mode from what it is given: a device directory is detached,
        # a mesh home is coupled (ipc, one of the home's own identities, no pairing).
        picked = await device.connect_frontend(r.device_dir("alice"))
        assert isinstance(picked, device.DeviceClient) and picked.connection.endpoint.startswith("tcp://")
        await picked.close()
        coupled = await device.connect_frontend(r.rig.home.root, "frontend")
        assert coupled.connection.endpoint.startswith("ipc://")
        await coupled.close()
        with pytest.raises(ConfigError):
            await device.connect_frontend(r.rig.home.root)
        listed = await r.operator.call("pairing.devices.list", {}, timeout=10)
        alice = next(d for d in listed if d["identity"] == "alice-s-phone")
        assert (alice["name"], alice["connected"], alice["mode"], alice["address"]) == \
            ("Alice's phone", 1, "detached", "127.0.0.1")
        assert alice["client_version"] == device.CLIENT_VERSION and alice["trust"] == "paired"
        stats = await r.operator.call("mesh.stats", {}, timeout=10)
        # Coupled mode needs no pairing: the rig's own device identity is connected over ipc.
        assert [(d["name"], d["mode"]) for d in stats["devices"]] == [("alice-s-phone", "detached"),
                                                                       ("phone", "coupled")]
        paired = (await _audited(r, "pairing.device_paired"))[0]
        assert paired["details"]["device"] == "alice-s-phone"

        renamed = await r.operator.call("pairing.devices.rename", {"ref": "Alice's phone", "name": "Old phone"},
                                        timeout=10)
        assert (renamed["name"], renamed["identity"]) == ("Old phone", "alice-s-phone")


async def test_revoking_a_device_cuts_its_connection_sessions_and_grants(tmp_path: Path) -> None:
    async with pairing_rig(tmp_path) as r:
        await r.pair("phone-a")
        await r.pair("phone-b")
        a, b = await r.connect("phone-a"), await r.connect("phone-b")
        await r.rig.add_user("alice")
        tokens = await a.call("authn.login.password", {"username": "alice", "password": USER_PASSWORD}, timeout=10)
        token = tokens["access_token"]
        # A device-bound token: refused when another device presents it.
        with pytest.raises(Unauthenticated):
            await b.call("authn.verify", {"access_token": token, "audience": MESH_AUDIENCE}, timeout=10)
        assert (await a.call("authn.verify", {"access_token": token, "audience": MESH_AUDIENCE}, timeout=10))["sub"]
        grant = await a.call("authz.consent.grant", {"access_token": token, "grantee": "device:phone-a",
                                                     "categories": ["notes"], "actions": ["read"],
                                                     "purpose": "sync"}, timeout=10)
        a_fp = certs.load_keypair(r.device_dir("phone-a") / "device.key_secret").certificate.fingerprint

        done = await r.operator.call("pairing.devices.revoke", {"ref": "phone-a"}, timeout=20)
        assert (done["connections_cut"], done["sessions_ended"], done["grants_revoked"]) == (1, 1, 1)

        # The live connection is refused on its very next message ...
        with pytest.raises(MeshError) as cut:
            await a.call("authn.verify", {"access_token": token, "audience": MESH_AUDIENCE}, timeout=10)
        assert cut.value.code == "UNAUTHENTICATED"
        # ... its token fails wherever it is presented, its grant is revoked ...
        with pytest.raises(Unauthenticated):
            await r["frontend"].call("authn.verify", {"access_token": token, "presenter": a_fp,
                                                      "audience": MESH_AUDIENCE}, timeout=10)
        shown = await r.operator.call("authz.consent.show", {"grant_id": grant["id"]}, timeout=10)
        assert shown["state"] == "revoked"
        # ... and it cannot connect again, while the other device carries on.
        with pytest.raises(HandshakeError):
            await device.connect_device(r.device_dir("phone-a"), timeout=5)
        await b.call("audit.checkpoint", {"since": 0}, timeout=10)
        listed = await r.operator.call("pairing.devices.list", {"all": True}, timeout=10)
        assert {d["identity"]: d["trust"] for d in listed if d["identity"].startswith("phone-")} == \
            {"phone-a": "revoked", "phone-b": "paired"}
        record = (await _audited(r, "pairing.device_revoked"))[0]
        assert record["outcome"] == "ok" and record["details"]["steps"] == "key,sessions,grants"
        # Revoking again finishes nothing new and says so.
        again = await r.operator.call("pairing.devices.revoke", {"ref": "phone-a"}, timeout=20)
        assert (again["connections_cut"], again["sessions_ended"], again["grants_revoked"]) == (0, 0, 0)


async def test_windows_need_detached_mode_and_come_one_at_a_time(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    async with pairing_rig(tmp_path) as r:
        started = await r.start()
        with pytest.raises(MeshError) as second:
            await r.start()
        assert second.value.code == "CONFLICT" and "pair cancel" in second.value.message
        with pytest.raises(MeshError) as too_long:
            await r.operator.call("pairing.start", {"ttl_s": 100000}, timeout=10)
        assert too_long.value.code == "BAD_REQUEST"
        cancelled = await r.operator.call("pairing.cancel", {"window": started["window"]}, timeout=10)
        assert cancelled["state"] == "cancelled" and "code" not in cancelled
        with pytest.raises(MeshError):  # a device only ever hears that pairing failed
            await device.join(started["code"], started["endpoint"], r.device_dir("late"))
        # The code went to the operator once, and nowhere else: not to any log.
        logs = capsys.readouterr()
        for secret in (started["code"], pake.normalize_code(started["code"])):
            assert secret not in logs.out and secret not in logs.err
    async with people_rig(tmp_path / "coupled-only", identities={"pairing": "service"}) as rig:
        pairing = Pairing(rig.home, rig.mesh.config)
        await rig.mesh.start_service(pairing)
        await eventually(lambda: rig.ready("pairing"), deadline=20)
        with pytest.raises(MeshError) as off:
            await rig["meshctl"].call("pairing.start", {}, timeout=10)
        assert off.value.code == "CONFLICT" and "[broker] tcp_endpoints" in off.value.message

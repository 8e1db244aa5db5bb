"""Device pairing (shared.pake): codes, offers, frames and the two SPAKE2 state machines, attacked.

The hostile cases come first: a wrong code, a device that ignores the mesh's refusal, a relay in the
middle without the code, replays, reordering, tampering, malformed messages and frames, and secrets
leaking into messages. ``Spec`` rebuilds the key schedule from what shared/pake.py's docstring says,
straight from the primitives, so the tests can play a peer that speaks the protocol but lies.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from spake2 import SPAKE2_A, SPAKE2_B
from zmq.utils import z85

from shared import BadRequest
from shared.crypto import open_sealed, seal
from shared.pake import (
    CODE_DIGITS,
    MAX_FRAME,
    DeviceHello,
    DeviceSide,
    MeshSide,
    Offer,
    PairingError,
    PairingProtocolError,
    Welcome,
    WrongCode,
    decode_offer,
    encode_frame,
    encode_offer,
    new_code,
    normalize_code,
    read_frame,
)

CODE = "31415926"
OTHER_CODE = "27182818"
DEVICE_KEY = z85.encode(bytes([7] * 32))
BROKER_KEY = z85.encode(bytes([9] * 32))
FINGERPRINT = hashlib.sha256(bytes([9] * 32)).hexdigest()
HELLO = DeviceHello(public_key=DEVICE_KEY, name="Ada's phone", client_version="curvemesh-ios 1.0")
WELCOME = Welcome(broker_public_key=BROKER_KEY, endpoints=("tcp://mesh.local:7000", "tcp://[::1]:7001"),
                  device_name="ada-phone", audit_public_key=bytes(range(32)), checkpoint=b"checkpoint 17 signed")
CODE_MESSAGE = "a pairing code is 8 digits, like 1234-5678"
FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True)


# -- a peer rebuilt from the documented protocol -------------------------------------------------

LABEL = b"curvemesh-pair/1"
IDS = {"idA": b"curvemesh-device/1", "idB": b"curvemesh-mesh/1"}
DIRECTIONS = {"mesh": b"mesh->device", "device": b"device->mesh"}


class Spec:
    """The key schedule as documented: transcript hash, HKDF per purpose, HMAC, sealing."""

    def __init__(self, spake_key: bytes, device_message: bytes, mesh_message: bytes) -> None:
        self.spake_key = spake_key
        self.transcript = hashlib.sha256(b"".join(struct.pack(">H", len(part)) + part
                                                  for part in (LABEL, device_message, mesh_message))).digest()

    def key(self, purpose: str) -> bytes:
        return HKDF(hashes.SHA256(), 32, salt=self.transcript,
                    info=LABEL + b" " + purpose.encode()).derive(self.spake_key)

    def mac(self, direction: str) -> bytes:
        return hmac.new(self.key(f"{direction}-confirm"), self.transcript + DIRECTIONS[direction],
                        hashlib.sha256).digest()

    def seal(self, direction: str, payload: bytes) -> bytes:
        return seal(self.key(f"{direction}-seal"), payload, self.transcript + DIRECTIONS[direction])

    def open(self, direction: str, sealed: bytes) -> bytes:
        return open_sealed(self.key(f"{direction}-seal"), sealed, self.transcript + DIRECTIONS[direction])


def spec_device(code: str, mesh: MeshSide) -> tuple[Spec, dict[str, Any]]:
    """A device built from the spec that runs SPAKE2 with ``code`` against ``mesh`` and, whatever
    the mesh's confirmation says, carries on; returns its keys and the mesh's reply."""
    spake = SPAKE2_A(code.encode(), **IDS)
    sent = spake.start()
    reply = mesh.reply({"v": 1, "t": "pake", "m": sent})
    return Spec(spake.finish(reply["m"]), sent, reply["m"]), reply


def hello_payload(**changes: Any) -> bytes:
    body = {"public_key": DEVICE_KEY, "name": "phone", "client_version": "1"} | changes
    return msgpack.packb(body, use_bin_type=True)


def welcome_payload(**changes: Any) -> bytes:
    body = {"broker_public_key": BROKER_KEY, "endpoints": ["tcp://mesh.local:7000"], "device_name": "ada-phone",
            "audit_public_key": bytes(32), "checkpoint": b""} | changes
    return msgpack.packb(body, use_bin_type=True)


def spec_mesh(code: str, device: DeviceSide) -> tuple[Spec, dict[str, Any]]:
    """A mesh built from the spec, answering ``device``'s hello with its own confirmation, and the
    device's confirm message."""
    hello = device.hello()
    spake = SPAKE2_B(code.encode(), **IDS)
    sent = spake.start()
    keys = Spec(spake.finish(hello["m"]), hello["m"], sent)
    confirm = device.confirm({"v": 1, "t": "pake", "m": sent, "c": keys.mac("mesh")}, HELLO)
    return keys, confirm


# -- helpers --------------------------------------------------------------------------------------

def pair(device_code: str = CODE, mesh_code: str = CODE) -> tuple[DeviceSide, MeshSide, list[dict[str, Any]]]:
    """Two sides and the first two messages: hello and the mesh's reply."""
    device, mesh = DeviceSide(device_code), MeshSide(mesh_code)
    hello = device.hello()
    return device, mesh, [hello, mesh.reply(hello)]


def confirmed() -> tuple[DeviceSide, MeshSide, list[dict[str, Any]]]:
    """A pairing up to the device's confirm message, which the mesh has not seen yet."""
    device, mesh, messages = pair()
    messages.append(device.confirm(messages[1], HELLO))
    return device, mesh, messages


def full() -> tuple[DeviceSide, MeshSide, list[dict[str, Any]]]:
    """A pairing up to the welcome message, which the device has not seen yet."""
    device, mesh, messages = confirmed()
    assert mesh.confirm(messages[2]) == HELLO
    messages.append(mesh.welcome(WELCOME))
    return device, mesh, messages


def flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def reader_with(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


# -- the protocol works ---------------------------------------------------------------------------

def test_both_sides_pair_and_the_payloads_arrive_intact() -> None:
    device, mesh = DeviceSide("3141-5926"), MeshSide("3141 5926")  # any typed form of one code
    hello = device.hello()
    assert hello.keys() == {"v", "t", "m"} and hello["t"] == "pake" and len(hello["m"]) == 33
    reply = mesh.reply(hello)
    assert reply.keys() == {"v", "t", "m", "c"} and len(reply["m"]) == 33 and len(reply["c"]) == 32
    confirm = device.confirm(reply, HELLO)
    assert confirm.keys() == {"v", "t", "c", "s"} and confirm["t"] == "confirm"
    assert mesh.confirm(confirm) == HELLO
    welcome = mesh.welcome(WELCOME)
    assert welcome.keys() == {"v", "t", "s"} and welcome["t"] == "welcome"
    assert device.welcome(welcome) == WELCOME
    assert device.state == mesh.state == "done"
    for message in (hello, reply, confirm, welcome):
        assert message["v"] == 1


async def test_a_pairing_of_the_largest_payloads_runs_through_frames() -> None:
    host = ".".join(["a" * 63, "b" * 63, "c" * 60])
    largest = Welcome(broker_public_key=BROKER_KEY, endpoints=tuple(f"tcp://{host}:6000{i}" for i in range(8)),
                      device_name="d" * 63, audit_public_key=bytes(32), checkpoint=b"\xff" * 1024)
    assert all(len(endpoint) == 200 for endpoint in largest.endpoints)
    hello = DeviceHello(public_key=DEVICE_KEY, name="é" * 64, client_version="v" * 64)
    device, mesh = DeviceSide(CODE), MeshSide(CODE)

    async def carried(message: dict[str, Any]) -> dict[str, Any]:
        return await read_frame(reader_with(encode_frame(message)), timeout=5)

    reply = mesh.reply(await carried(device.hello()))
    assert mesh.confirm(await carried(device.confirm(await carried(reply), hello))) == hello
    assert device.welcome(await carried(mesh.welcome(largest))) == largest


def test_the_sides_follow_the_documented_key_schedule() -> None:
    """A device rebuilt from the docstring pairs with MeshSide, and a mesh rebuilt from it with
    DeviceSide: the schedule is what the contract says, not only self-consistent."""
    mesh = MeshSide(CODE)
    keys, reply = spec_device(CODE, mesh)
    assert hmac.compare_digest(reply["c"], keys.mac("mesh"))
    sealed = keys.seal("device", hello_payload())
    assert mesh.confirm({"v": 1, "t": "confirm", "c": keys.mac("device"), "s": sealed}).name == "phone"
    assert msgpack.unpackb(keys.open("mesh", mesh.welcome(WELCOME)["s"]))["device_name"] == "ada-phone"

    device = DeviceSide(CODE)
    keys, confirm = spec_mesh(CODE, device)
    assert hmac.compare_digest(confirm["c"], keys.mac("device"))
    assert msgpack.unpackb(keys.open("device", confirm["s"]))["public_key"] == DEVICE_KEY
    assert device.welcome({"v": 1, "t": "welcome", "s": keys.seal("mesh", welcome_payload())}).device_name \
        == "ada-phone"


# -- wrong codes, relays, replays -----------------------------------------------------------------

def test_a_wrong_code_fails_at_the_device_before_it_sends_anything_sealed() -> None:
    device, _, (_, reply) = pair(OTHER_CODE, CODE)
    with pytest.raises(WrongCode):
        device.confirm(reply, HELLO)
    assert device.state == "failed"
    with pytest.raises(PairingProtocolError, match="out of order"):
        device.confirm(reply, HELLO)  # one try per session


def test_a_device_that_ignores_the_refusal_and_forges_a_confirm_is_refused_by_the_mesh() -> None:
    mesh = MeshSide(CODE)
    keys, reply = spec_device(OTHER_CODE, mesh)  # the device's SPAKE2 key is not the mesh's
    assert not hmac.compare_digest(reply["c"], keys.mac("mesh"))
    with pytest.raises(WrongCode):
        mesh.confirm({"v": 1, "t": "confirm", "c": keys.mac("device"), "s": keys.seal("device", hello_payload())})
    assert mesh.state == "failed"
    with pytest.raises(PairingProtocolError):
        mesh.welcome(WELCOME)


def test_a_device_cannot_pass_off_the_meshs_own_confirmation_or_seal_as_its_own() -> None:
    mesh = MeshSide(CODE)
    keys, reply = spec_device(CODE, mesh)
    with pytest.raises(WrongCode):
        mesh.confirm({"v": 1, "t": "confirm", "c": reply["c"], "s": keys.seal("device", hello_payload())})
    mesh = MeshSide(CODE)
    keys, reply = spec_device(CODE, mesh)
    with pytest.raises(PairingProtocolError, match="integrity"):  # right MAC, payload sealed the other way
        mesh.confirm({"v": 1, "t": "confirm", "c": keys.mac("device"), "s": keys.seal("mesh", hello_payload())})


def test_a_relay_without_the_code_completes_neither_side_and_learns_neither_payload() -> None:
    device, mesh = DeviceSide(CODE), MeshSide(CODE)
    guess = "00000000"
    toward_device, toward_mesh = MeshSide(guess), DeviceSide(guess)
    # The device talks to the relay's mesh side; the relay's device side talks to the mesh.
    relayed_reply = toward_device.reply(device.hello())
    mesh_reply = mesh.reply(toward_mesh.hello())
    with pytest.raises(WrongCode):
        device.confirm(relayed_reply, HELLO)  # the device never seals its hello for the relay
    with pytest.raises(WrongCode):
        toward_mesh.confirm(mesh_reply, HELLO)
    # The relay has nothing sealed from the device to pass on, and nothing it makes is accepted.
    with pytest.raises(WrongCode):
        mesh.confirm({"v": 1, "t": "confirm", "c": bytes(32), "s": seal(bytes(32), hello_payload(), b"")})
    assert device.state == mesh.state == "failed"
    with pytest.raises(PairingProtocolError):
        mesh.welcome(WELCOME)  # so no welcome is ever sealed


def test_a_relay_that_only_forwards_sees_nothing_in_the_clear_and_cannot_swap_payloads() -> None:
    device, _, messages = full()
    for message in messages:
        packed = msgpack.packb(message)
        for secret in (DEVICE_KEY, b"Ada's phone", BROKER_KEY, b"ada-phone", b"checkpoint 17", bytes(range(32))):
            assert secret not in packed
    # A sealed payload from another pairing, under other keys, does not open here.
    _, _, other = confirmed()
    _, mesh2, mine = confirmed()
    with pytest.raises(PairingProtocolError, match="integrity"):
        mesh2.confirm(mine[2] | {"s": other[2]["s"]})
    assert device.welcome(messages[3]) == WELCOME


def test_a_recorded_transcript_replayed_to_a_fresh_mesh_is_refused() -> None:
    _, _, recorded = full()
    fresh = MeshSide(CODE)  # even with the same code: the mesh's fresh SPAKE2 share changes every key
    fresh.reply(recorded[0])
    with pytest.raises(WrongCode):
        fresh.confirm(recorded[2])


def test_a_recorded_reply_replayed_to_a_fresh_device_is_refused() -> None:
    _, _, recorded = full()
    fresh = DeviceSide(CODE)
    fresh.hello()
    with pytest.raises(WrongCode):
        fresh.confirm(recorded[1], HELLO)


@pytest.mark.parametrize("step", range(6), ids=["device.hello", "mesh.reply", "device.confirm", "mesh.confirm",
                                                 "mesh.welcome", "device.welcome"])
def test_a_step_taken_twice_is_refused_and_ends_the_session(step: int) -> None:
    """Each step once, then the same step again with the same message: a replay to the same side."""
    device, mesh = DeviceSide(CODE), MeshSide(CODE)
    sent: list[Any] = []
    steps: list[tuple[DeviceSide | MeshSide, Callable[[], object]]] = [
        (device, device.hello),
        (mesh, lambda: mesh.reply(sent[0])),
        (device, lambda: device.confirm(sent[1], HELLO)),
        (mesh, lambda: mesh.confirm(sent[2])),
        (mesh, lambda: mesh.welcome(WELCOME)),
        (device, lambda: device.welcome(sent[4])),
    ]
    for _, action in steps[: step + 1]:
        sent.append(action())
    side, action = steps[step]
    with pytest.raises(PairingProtocolError, match="out of order"):
        action()
    assert side.state == "failed"


def test_steps_out_of_order_are_refused() -> None:
    _, _, messages = full()
    device = DeviceSide(CODE)
    with pytest.raises(PairingProtocolError, match="out of order"):
        device.confirm(messages[1], HELLO)  # confirm before hello
    device = DeviceSide(CODE)
    device.hello()
    with pytest.raises(PairingProtocolError, match="out of order"):
        device.welcome(messages[3])  # welcome before confirm
    mesh = MeshSide(CODE)
    with pytest.raises(PairingProtocolError, match="out of order"):
        mesh.confirm(messages[2])  # confirm before the reply
    mesh = MeshSide(CODE)
    mesh.reply(messages[0])
    with pytest.raises(PairingProtocolError, match="out of order"):
        mesh.welcome(WELCOME)  # welcome before the device confirmed
    # A message meant for another step, at the right time for its side, is the wrong type.
    device, mesh, messages = pair()
    with pytest.raises(PairingProtocolError, match="type 'pake'"):
        device.confirm({"v": 1, "t": "confirm", "c": bytes(32), "s": bytes(40)}, HELLO)
    with pytest.raises(PairingProtocolError, match="type 'confirm'"):
        mesh.confirm(messages[1])


# -- tampering ------------------------------------------------------------------------------------

@FAST
@given(message=st.integers(0, 3), field=st.integers(0, 1), bit=st.integers(0, 2**16))
def test_any_bit_flipped_in_any_message_aborts_the_pairing(message: int, field: int, bit: int) -> None:
    device, mesh = DeviceSide(CODE), MeshSide(CODE)

    def tamper(index: int, sent: dict[str, Any]) -> dict[str, Any]:
        if index != message:
            return sent
        name = [name for name in ("m", "c", "s") if name in sent][field % (len(sent) - 2)]
        return sent | {name: flip(sent[name], bit)}

    with pytest.raises(PairingError):
        reply = mesh.reply(tamper(0, device.hello()))
        mesh.confirm(tamper(2, device.confirm(tamper(1, reply), HELLO)))
        device.welcome(tamper(3, mesh.welcome(WELCOME)))
    assert "failed" in (device.state, mesh.state)


@pytest.mark.parametrize("element", [
    bytes(32),  # y = 0: a point with no x on the curve, or not in the group
    b"\x01" + bytes(31),  # the identity
    b"\xec" + b"\xff" * 30 + b"\x7f",  # (0, -1), of order 2
    b"\xff" * 32,
])
def test_degenerate_spake2_elements_are_refused(element: bytes) -> None:
    with pytest.raises(PairingProtocolError, match="SPAKE2"):
        MeshSide(CODE).reply({"v": 1, "t": "pake", "m": b"A" + element})
    device = DeviceSide(CODE)
    device.hello()
    with pytest.raises(PairingProtocolError, match="SPAKE2"):
        device.confirm({"v": 1, "t": "pake", "m": b"B" + element, "c": bytes(32)}, HELLO)


def test_messages_from_the_wrong_side_or_reflected_are_refused() -> None:
    device = DeviceSide(CODE)
    hello = device.hello()
    with pytest.raises(PairingProtocolError, match="wrong side"):
        MeshSide(CODE).reply({"v": 1, "t": "pake", "m": b"B" + hello["m"][1:]})
    with pytest.raises(PairingProtocolError, match="SPAKE2"):  # our own share sent back as the mesh's
        device.confirm({"v": 1, "t": "pake", "m": b"B" + hello["m"][1:], "c": bytes(32)}, HELLO)
    device = DeviceSide(CODE)
    device.hello()
    with pytest.raises(PairingProtocolError, match="wrong side"):
        device.confirm({"v": 1, "t": "pake", "m": hello["m"], "c": bytes(32)}, HELLO)


@pytest.mark.parametrize("payload", [
    welcome_payload(extra=1), welcome_payload(endpoints=[]), welcome_payload(endpoints=["ipc:///tmp/x"]),
    welcome_payload(endpoints=["tcp://h:1"] * 9), welcome_payload(endpoints="tcp://h:1"),
    welcome_payload(device_name="Not A Name"), welcome_payload(device_name="ada\n"), welcome_payload(device_name=""),
    welcome_payload(audit_public_key=bytes(31)), welcome_payload(checkpoint=bytes(1025)),
    welcome_payload(checkpoint="text"), welcome_payload(broker_public_key=b"0" * 40),
    welcome_payload(broker_public_key=BROKER_KEY[:39] + b"\n"), welcome_payload(broker_public_key=BROKER_KEY.decode()),
    msgpack.packb([1, 2]), b"\xc1", msgpack.packb({1: 2}),
])
def test_a_correctly_sealed_but_invalid_welcome_is_refused(payload: bytes) -> None:
    device = DeviceSide(CODE)
    keys, _ = spec_mesh(CODE, device)
    with pytest.raises(PairingProtocolError):
        device.welcome({"v": 1, "t": "welcome", "s": keys.seal("mesh", payload)})
    assert device.state == "failed"


@pytest.mark.parametrize("payload", [
    hello_payload(extra=""), hello_payload(public_key=DEVICE_KEY[:-1]), hello_payload(public_key=b"0" * 40),
    hello_payload(public_key=DEVICE_KEY.decode()), hello_payload(name="x" * 65), hello_payload(name="a\x1b[2J"),
    hello_payload(client_version=1), msgpack.packb({"public_key": DEVICE_KEY}), msgpack.packb("text"),
])
def test_a_correctly_sealed_but_invalid_hello_is_refused(payload: bytes) -> None:
    mesh = MeshSide(CODE)
    keys, _ = spec_device(CODE, mesh)
    with pytest.raises(PairingProtocolError):
        mesh.confirm({"v": 1, "t": "confirm", "c": keys.mac("device"), "s": keys.seal("device", payload)})
    assert mesh.state == "failed"


# -- the shape of every message -------------------------------------------------------------------

MALFORMED: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("extra key", lambda m: m | {"x": 1}),
    ("missing key", lambda m: {k: v for k, v in m.items() if k != sorted(set(m) - {"v", "t"})[0]}),
    ("no version", lambda m: {k: v for k, v in m.items() if k != "v"}),
    ("version 2", lambda m: m | {"v": 2}),
    ("version 0", lambda m: m | {"v": 0}),
    ("version as text", lambda m: m | {"v": "1"}),
    ("version true", lambda m: m | {"v": True}),
    ("unknown type", lambda m: m | {"t": "hello"}),
    ("type as bytes", lambda m: m | {"t": m["t"].encode()}),
    ("a field as text", lambda m: m | {k: "x" * len(v) for k, v in m.items() if isinstance(v, bytes)}),
    ("a field as a list", lambda m: m | {k: list(v) for k, v in m.items() if isinstance(v, bytes)}),
    ("a field one byte short", lambda m: m | {k: v[:-1] for k, v in m.items() if k in ("m", "c")}
     if "c" in m or "m" in m else m | {"s": b""}),
    ("a field one byte long", lambda m: m | {k: v + b"\0" for k, v in m.items() if isinstance(v, bytes)}
     if "s" not in m else m | {"s": b"\0" * (MAX_FRAME + 1)}),
    ("a list", lambda m: list(m.items())),
    ("none", lambda m: None),
    ("bytes", lambda m: msgpack.packb(m)),
]


@pytest.mark.parametrize("change", [change for _, change in MALFORMED], ids=[name for name, _ in MALFORMED])
@pytest.mark.parametrize("step", ["mesh.reply", "device.confirm", "mesh.confirm", "device.welcome"])
def test_malformed_messages_are_refused_at_every_step(step: str, change: Callable[[dict[str, Any]], object]) -> None:
    device, mesh, messages = pair()
    if step == "mesh.reply":
        mesh = MeshSide(CODE)
        target: Callable[[Any], object] = mesh.reply
        message = messages[0]
    elif step == "device.confirm":
        target, message = (lambda m: device.confirm(m, HELLO)), messages[1]
    elif step == "mesh.confirm":
        target, message = mesh.confirm, device.confirm(messages[1], HELLO)
    else:
        device, mesh, messages = full()
        target, message = device.welcome, messages[3]
    with pytest.raises(PairingProtocolError):
        target(change(message))


def test_local_arguments_of_the_wrong_type_are_refused() -> None:
    device, _, messages = pair()
    with pytest.raises(PairingProtocolError, match="DeviceHello"):
        device.confirm(messages[1], {"public_key": DEVICE_KEY})  # type: ignore[arg-type]
    _, mesh, _ = confirmed()
    with pytest.raises(PairingProtocolError, match="out of order"):
        mesh.welcome(WELCOME)
    device, mesh, messages = confirmed()
    mesh.confirm(messages[2])
    with pytest.raises(PairingProtocolError, match="Welcome"):
        mesh.welcome(HELLO)  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [
    lambda: DeviceHello(public_key=DEVICE_KEY.decode(), name="", client_version=""),  # type: ignore[arg-type]
    lambda: DeviceHello(public_key=DEVICE_KEY + b"\n", name="", client_version=""),
    lambda: DeviceHello(public_key=DEVICE_KEY, name="tab\there", client_version=""),
    lambda: DeviceHello(public_key=DEVICE_KEY, name="", client_version="v" * 65),
    lambda: Welcome(BROKER_KEY, ["tcp://h:1"], "ada", bytes(32), b""),  # type: ignore[arg-type]
    lambda: Welcome(BROKER_KEY, ("tcp://*:1",), "ada", bytes(32), b""),
    lambda: Welcome(BROKER_KEY, ("tcp://h:1",), "ada", bytearray(32), b""),  # type: ignore[arg-type]
])
def test_payloads_validate_on_construction(build: Callable[[], object]) -> None:
    with pytest.raises(PairingProtocolError):
        build()


# -- frames ---------------------------------------------------------------------------------------

async def test_frames_round_trip_one_at_a_time() -> None:
    first, second = {"v": 1, "t": "pake", "m": b"\x00" * 33}, {"a": [1, "b", None, 2.5]}
    reader = reader_with(encode_frame(first) + encode_frame(second))
    assert await read_frame(reader, timeout=1) == first
    assert await read_frame(reader, timeout=1) == second
    largest = {"s": b"x" * (MAX_FRAME - 6)}  # a fixmap (1 byte), "s" (2) and a bin16 header (3)
    frame = encode_frame(largest)
    assert len(frame) == 2 + MAX_FRAME and frame[:2] == struct.pack(">H", MAX_FRAME)
    assert await read_frame(reader_with(frame), timeout=1) == largest


def test_encode_frame_refuses_what_read_frame_would_refuse() -> None:
    with pytest.raises(PairingProtocolError, match="at most"):
        encode_frame({"s": b"x" * (MAX_FRAME - 5)})
    with pytest.raises(PairingProtocolError, match="map"):
        encode_frame([1, 2])  # type: ignore[arg-type]
    with pytest.raises(PairingProtocolError):
        encode_frame({"x": {1, 2}})
    with pytest.raises(PairingProtocolError):
        encode_frame({"x": msgpack.ExtType(1, b"")})


@pytest.mark.parametrize(("data", "eof", "why"), [
    (b"\xff\xff" + b"\0" * 100, True, "1 to 4096"),
    (struct.pack(">H", MAX_FRAME + 1) + b"\0" * (MAX_FRAME + 1), True, "1 to 4096"),
    (b"\x00\x00" + msgpack.packb({}), True, "1 to 4096"),
    (b"", True, "ended"),
    (b"\x00", True, "ended"),
    (b"\x00\x10" + b"\x80", True, "ended"),
    (b"\x00\x01\xc1", True, "msgpack"),
    (b"\x00\x02\x81\xa1", True, "msgpack"),  # a map whose key is cut short
    (b"\x00\x03" + msgpack.packb([1, 2]), True, "map"),
    (b"\x00\x03" + msgpack.packb({1: 2}), True, "msgpack"),
    (b"\x00\x03\xd4\x01\x00", True, "msgpack"),  # an extension type
    (struct.pack(">H", 9) + msgpack.packb({"a": 1}) + b"\0" * 5, True, "msgpack"),  # trailing bytes in the body
    (b"", False, "timed out"),
    (b"\x00\x10\x81", False, "timed out"),  # half a frame, then silence
])
async def test_bad_frames_are_refused(data: bytes, eof: bool, why: str) -> None:
    with pytest.raises(PairingProtocolError, match=why):
        await read_frame(reader_with(data, eof=eof), timeout=0.05)


async def test_an_oversize_length_is_refused_before_the_body_is_read() -> None:
    reader = reader_with(b"\xff\xff", eof=False)  # no body, no EOF: refusing must not wait for one
    with pytest.raises(PairingProtocolError, match="1 to 4096"):
        await read_frame(reader, timeout=5)


async def test_a_failed_connection_is_a_protocol_error() -> None:
    reader = reader_with(b"\x00\x05", eof=False)
    reader.set_exception(ConnectionResetError("reset by peer"))
    with pytest.raises(PairingProtocolError, match="connection failed"):
        await read_frame(reader, timeout=5)


# -- codes and offers -----------------------------------------------------------------------------

def test_new_codes_are_eight_random_digits_shown_in_two_groups() -> None:
    codes = [new_code() for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9]{4}-[0-9]{4}", code) for code in codes)
    # 2000 draws from 10**8: a handful of repeats is already a one-in-a-billion event.
    assert len(set(codes)) >= 1995
    assert CODE_DIGITS == 8
    for position in (0, 3, 5, 8):
        assert len({code[position] for code in codes}) == 10  # every digit, every place: no fixed prefix


@pytest.mark.parametrize("text", ["1234-5678", "1234 5678", "12345678"])
def test_normalize_accepts_the_three_forms(text: str) -> None:
    assert normalize_code(text) == "12345678"


@pytest.mark.parametrize("text", [
    "1234-567", "123456789", "1234--5678", " 12345678", "12345678\n", "1234_5678", "1234-5678-", "",
    "abcd-efgh", "١٢٣٤٥٦٧٨", "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",
    "12 34 56 78", "1234\t5678", None, 12345678, b"12345678",
])
def test_normalize_refuses_everything_else_without_echoing_it(text: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        normalize_code(text)
    assert str(caught.value) == CODE_MESSAGE
    with pytest.raises(BadRequest, match=CODE_MESSAGE):
        DeviceSide(text)
    with pytest.raises(BadRequest, match=CODE_MESSAGE):
        MeshSide(text)


@pytest.mark.parametrize("endpoint", ["tcp://mesh.example.org:7000", "tcp://192.168.1.20:1", "tcp://[fe80::1]:65535",
                                      "tcp://localhost:5555"])
def test_offers_round_trip(endpoint: str) -> None:
    offer = Offer(endpoint=endpoint, broker_fingerprint=FINGERPRINT, code="01234567")
    text = encode_offer(offer)
    assert text.startswith("curvemesh-pair:1?e=tcp%3A%2F%2F") and text.endswith(f"&f={FINGERPRINT}&c=01234567")
    assert decode_offer(text) == offer
    reordered = "curvemesh-pair:1?c=01234567&f={}&{}".format(FINGERPRINT, text.split("?")[1].split("&")[0])
    assert decode_offer(reordered) == offer


GOOD_QUERY = f"e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT}&c={CODE}"


@pytest.mark.parametrize(("text", "why"), [
    (f"curvemesh-pair:2?{GOOD_QUERY}", "version"),
    (f"CURVEMESH-PAIR:1?{GOOD_QUERY}", "not a curvemesh"),
    (f"https://x/?{GOOD_QUERY}", "not a curvemesh"),
    ("curvemesh-pair:1", "fields e, f and c"),
    ("curvemesh-pair:1?", "exactly the fields"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT}", "exactly the fields"),
    (f"curvemesh-pair:1?{GOOD_QUERY}&x=1", "exactly the fields"),
    (f"curvemesh-pair:1?{GOOD_QUERY}&c={CODE}", "exactly the fields"),
    (f"curvemesh-pair:1?{GOOD_QUERY}&", "exactly the fields"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT}&c", "exactly the fields"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT.upper()}&c={CODE}", "fingerprint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT[:-1]}&c={CODE}", "fingerprint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT}&c=3141-5926", "8 digits"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1&f={FINGERPRINT}&c=3141592", "8 digits"),
    (f"curvemesh-pair:1?e=ipc%3A%2F%2F%2Ftmp%2Fx&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A0&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A65536&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2F*%3A1&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1%2Fpath&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2F999.1.1.1%3A1&f={FINGERPRINT}&c={CODE}", "host"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2F%5B%3A%3A%3A%3A%5D%3A1&f={FINGERPRINT}&c={CODE}", "host"),
    (f"curvemesh-pair:1?e=tcp%3A%2F%2Fh%3A1%FF&f={FINGERPRINT}&c={CODE}", "endpoint"),
    (f"curvemesh-pair:1?e={'a' * 600}&f={FINGERPRINT}&c={CODE}", "at most"),
])
def test_decode_offer_is_strict_and_never_echoes_the_offer(text: str, why: str) -> None:
    with pytest.raises(BadRequest, match=why) as caught:
        decode_offer(text)
    assert CODE not in str(caught.value) and "3141" not in str(caught.value) and FINGERPRINT not in str(caught.value)


# -- no secret in any message or repr -------------------------------------------------------------

def test_no_code_or_key_appears_in_errors_or_reprs() -> None:
    secrets_planted = [CODE, "3141", "5926", CODE.encode().hex()]
    texts: list[str] = []
    offer = Offer(endpoint="tcp://h:1", broker_fingerprint=FINGERPRINT, code=CODE)
    texts += [repr(offer), str(offer)]
    for code in (CODE, "3141-5926"):
        device, mesh = DeviceSide(code), MeshSide(code)
        texts += [repr(device), repr(mesh), str(device)]
        hello = device.hello()
        reply = mesh.reply(hello)
        texts += [repr(device), repr(mesh)]
        device.confirm(reply, HELLO)
        texts += [repr(device), repr(mesh)]
    # Errors raised on input that carries the code (and key-sized bytes) in every place it can.
    planted_key = bytes.fromhex("31415926" * 8)
    attempts: list[Callable[[], object]] = [
        lambda: normalize_code(CODE + "0"), lambda: decode_offer(f"curvemesh-pair:1?c={CODE}&c={CODE}"),
        lambda: Offer(endpoint="tcp://h:1", broker_fingerprint=CODE, code=CODE),
        lambda: MeshSide(CODE).reply({"v": 1, "t": "pake", "m": b"A" + planted_key, CODE: CODE}),
        lambda: MeshSide(CODE).reply({"v": 1, "t": CODE, "m": CODE.encode()}),
        lambda: MeshSide(CODE).reply({"v": 1, "t": "pake", "m": b"A" + planted_key}),
        lambda: pair(OTHER_CODE, CODE)[0].confirm(pair()[2][1], HELLO),
        lambda: confirmed()[1].confirm({"v": 1, "t": "confirm", "c": planted_key, "s": planted_key}),
        lambda: DeviceHello(public_key=planted_key + planted_key[:8], name=CODE * 9, client_version=""),
    ]
    for attempt in attempts:
        try:
            attempt()
        except (PairingError, BadRequest) as exc:
            texts += [str(exc), repr(exc)]
        else:
            raise AssertionError("expected a refusal")
    for text in texts:
        for secret in secrets_planted:
            assert secret not in text, text
        assert planted_key.hex() not in text and "bytearray" not in text


def test_neither_the_spake2_state_nor_any_key_outlives_its_step() -> None:
    """White-box: the SPAKE2 object (which holds the code) goes at finish, the keys at the end or
    at the first failure."""
    device, mesh, messages = confirmed()
    assert device._spake is None and mesh._spake is None  # type: ignore[attr-defined]
    mesh.confirm(messages[2])
    messages.append(mesh.welcome(WELCOME))
    device.welcome(messages[3])
    for side in (device, mesh):
        assert side._spake is None and side._keys is None  # type: ignore[attr-defined]
    device, _, (_, reply) = pair(OTHER_CODE, CODE)
    with pytest.raises(WrongCode):
        device.confirm(reply, HELLO)
    assert device._spake is None and device._keys is None  # type: ignore[attr-defined]


# -- fuzzing: nothing but PairingError escapes ----------------------------------------------------

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6)
FIELDS = st.sampled_from(["v", "t", "m", "c", "s"]) | st.text(max_size=3)
NEAR = {"v": st.just(1) | VALUES, "t": st.sampled_from(["pake", "confirm", "welcome"]) | VALUES,
        "m": st.sampled_from([b"A", b"B"]).flatmap(lambda side: st.binary(min_size=32, max_size=32).map(
            lambda e: side + e)) | VALUES,
        "c": st.binary(min_size=32, max_size=32) | VALUES,
        "s": st.binary(min_size=30, max_size=200) | VALUES}
MESSAGES = (st.dictionaries(FIELDS, VALUES, max_size=6)
            | st.fixed_dictionaries({}, optional=NEAR)
            | VALUES)


@FAST
@given(message=MESSAGES)
def test_random_messages_to_each_step_raise_only_pairing_errors(message: Any) -> None:
    device, mesh, _ = pair()
    attempts: list[Callable[[], object]] = [
        lambda: MeshSide(CODE).reply(message),
        lambda: device.confirm(message, HELLO),
        lambda: mesh.confirm(message),
        lambda: confirmed()[0].welcome(message),
    ]
    for attempt in attempts:
        try:
            attempt()
        except PairingError:
            pass


@FAST
@given(data=st.binary(max_size=300) | VALUES.map(lambda v: msgpack.packb(v, use_bin_type=True)).map(
    lambda body: struct.pack(">H", len(body)) + body))
def test_random_bytes_to_read_frame_raise_only_protocol_errors(data: bytes) -> None:
    async def read() -> None:
        try:
            await read_frame(reader_with(data), timeout=1)
        except PairingProtocolError:
            pass
    asyncio.run(read())


@FAST
@given(text=st.text(max_size=120) | st.text(alphabet="0123456789- ", max_size=10)
       | st.text(max_size=40).map(lambda t: f"curvemesh-pair:1?{t}"))
def test_random_text_to_codes_and_offers_raises_only_bad_request(text: str) -> None:
    for parse in (normalize_code, decode_offer):
        try:
            parse(text)
        except BadRequest:
            pass

"""The host↔plugin protocol: the codec's strictness, and a child that breaks it or floods the host
(tests/plugins/misbehave) killed with the right reason while plugin-host and its other children
carry on."""

from __future__ import annotations

import datetime
from typing import Any

import msgpack
import pytest

from services.plugin_host.sandbox import Child, ChildGone, ExitInfo
from services.plugin_host.sandbox.exits import EXIT_MEMORY, classify, printable
from services.plugin_host.sandbox.frames import (
    EncodeError,
    ProtocolError,
    check_from_child,
    check_from_host,
    decode,
    encode,
)

from .sandbox_rig import START_TIMEOUT, Rig, gone


async def broken(rig: Rig, function: str, args: Any = None, **options: Any) -> ExitInfo:
    """Call ``function`` of a misbehave child beside a good one; the child must be killed for it."""
    good = await rig.start("good", name=f"good-{len(rig.children)}")
    child = await rig.start("misbehave", name=f"misbehave-{len(rig.children)}", **options)
    with pytest.raises(ChildGone) as killed:
        await rig.call(child, function, args)
    assert killed.value.exit == child.exit
    assert await rig.call(good, "ping", "still here") == {"pong": "still here"}
    return killed.value.exit


async def test_an_oversized_frame(rig: Rig) -> None:
    exit_info = await broken(rig, "oversized", {"size": 4097}, max_message_bytes=4096)
    assert (exit_info.reason, exit_info.returncode) == ("oversized", -9)


@pytest.mark.parametrize(("function", "args"), [("malformed", None), ("extra_key", {"id": 1}), ("wrong_id", None),
                                                ("unknown_op", None)])
async def test_a_frame_that_is_not_the_protocol(rig: Rig, function: str, args: Any) -> None:
    assert (await broken(rig, function, args)).reason == "protocol"


async def test_a_frame_while_nothing_is_expected(rig: Rig) -> None:
    child = await rig.start("misbehave")
    assert await rig.call(child, "late_frame") == "done"
    exit_info = await gone(child)
    assert (exit_info.reason, exit_info.detail) == ("protocol", "a result frame when none was expected")


async def test_a_flood_of_requests(rig: Rig) -> None:
    exit_info = await broken(rig, "request_flood", messages_per_s=50)
    assert exit_info.reason == "flood" and "frames in a second" in exit_info.detail


async def test_a_flood_of_output(rig: Rig) -> None:
    exit_info = await broken(rig, "stdout_flood")
    assert exit_info.reason == "flood" and "bytes of output" in exit_info.detail
    flooded = rig.logs[f"misbehave-{len(rig.children) - 1}"]
    assert sum(len(line) for _, line in flooded) <= 65536 + 1000  # nothing logged past the limit


async def test_output_lines_are_escaped_and_cut(rig: Rig) -> None:
    child = await rig.start("misbehave")
    assert await rig.call(child, "odd_output") is True
    await child.stop()  # its end is announced once both pipes are read to their end
    lines = rig.logs["misbehave"]
    assert ("stdout", "\\x1b[31mred\\x07 and a bell") in lines
    assert ("stdout", "y" * 997 + "...") in lines
    assert ("stderr", "to stderr") in lines


async def test_a_log_callback_that_raises_breaks_nothing(rig: Rig) -> None:
    def explode(stream: str, line: str) -> None:
        raise RuntimeError("the host's logger is broken")

    child = await Child.start(rig.spec("good"), bpf=rig.bpf, on_log=explode, start_timeout=START_TIMEOUT)
    rig.children.append(child)
    assert await rig.call(child, "ping", 1) == {"pong": 1}


async def test_requests_outside_a_call_are_refused_in_the_plugin(rig: Rig) -> None:
    child = await rig.start("misbehave")
    assert await rig.call(child, "early") == "UNAVAILABLE"


# -- the codec ------------------------------------------------------------------------------------

def test_decoding_refuses_what_is_not_one_plain_bounded_map() -> None:
    ok = {"t": "result", "id": 1, "ok": True, "value": [1, "x", b"y", None, 1.5, {"k": False}]}
    assert check_from_child(decode(encode(ok), 1024)) == ok
    bad = [
        msgpack.packb([1, 2]),                                              # not a map
        encode(ok) + b"\x00",                                               # trailing bytes
        b"\xc1",                                                            # never used byte
        msgpack.packb({"t": msgpack.ExtType(1, b"x")}),                     # extension type
        msgpack.packb({"t": datetime.datetime.now(datetime.UTC)}, datetime=True),  # timestamp
        msgpack.packb({1: 2}),                                              # int key
        msgpack.packb({"t": b"\xff"[:0] + "é".encode("latin-1")}, use_bin_type=False),  # not UTF-8
        msgpack.packb({"t": "result", "v": _nested(40)}),                   # too deep
    ]
    for data in bad:
        with pytest.raises(ProtocolError):
            decode(data, 1024)
    with pytest.raises(ProtocolError):
        decode(encode(ok), 10)  # larger than allowed


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("frame", [
    {"t": "result", "id": True, "ok": True, "value": 1},                      # a bool is not an id
    {"t": "result", "id": -1, "ok": True, "value": 1},
    {"t": "result", "id": 1, "ok": 1, "value": 1},                            # ok must be a bool
    {"t": "result", "id": 1, "ok": False, "type": "E", "message": "m"},       # denied missing
    {"t": "result", "id": 1, "ok": False, "type": "E", "message": "m", "denied": 0},
    {"t": "request", "id": 1, "op": "kv.delete", "args": {}},
    {"t": "request", "id": 1, "op": ["kv.get"], "args": {}},
    {"t": "request", "id": 1, "op": "kv.get", "args": []},
    {"t": "ready", "functions": ["f"], "topics": [], "layers": {"seccomp": True}},  # every layer named
    {"t": "ready", "functions": ["f", "f"], "topics": [], "layers": {}},
    {"t": "unavailable", "layer": "magic", "reason": ""},
    {"t": "call", "id": 1, "fn": "f", "args": None},                          # a host frame
    {"t": "hello"},
])
def test_child_frames_must_match_exactly(frame: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        check_from_child(frame)


def test_host_frames_must_match_exactly() -> None:
    setup = {"t": "setup", "name": "n", "entry": "plugin", "package_dir": "/p", "scratch_dir": "/s",
             "limits": {"memory_mb": 64, "cpu_s": 1, "open_files": 8, "file_size_mb": 1, "processes": 1,
                        "scratch_mb": 1}, "bpf": b"\x00" * 8, "requires": ["seccomp"], "read_paths": ["/usr"]}
    assert check_from_host(dict(setup)) == setup
    for change in ({"bpf": b"\x00" * 7}, {"package_dir": "relative"}, {"requires": ["magic"]},
                   {"limits": {**setup["limits"], "extra": 1}}, {"limits": {**setup["limits"], "cpu_s": 0}},
                   {"read_paths": "/usr"}, {"extra": 1}):
        with pytest.raises(ProtocolError):
            check_from_host({**setup, **change})
    assert check_from_host({"t": "reply", "id": 3, "ok": False, "code": "DENIED", "message": ""})
    with pytest.raises(ProtocolError):
        check_from_host({"t": "reply", "id": 3, "ok": False, "code": "DENIED"})


def test_values_that_cannot_travel_are_an_encode_error() -> None:
    for value in ({1, 2}, 2**64, object(), _nested(600)):
        with pytest.raises(EncodeError):
            encode({"t": "call", "id": 1, "fn": "f", "args": value})


def test_exit_classification() -> None:
    assert classify(-31, cpu_seconds=0, cpu_limit=1, ready=True).reason == "seccomp"
    assert classify(-24, cpu_seconds=1, cpu_limit=1, ready=True).reason == "cpu_quota"
    assert classify(-9, cpu_seconds=2.1, cpu_limit=1, ready=True).reason == "cpu_quota"
    assert classify(-9, cpu_seconds=0.1, cpu_limit=1, ready=True).reason == "crash"
    assert classify(-25, cpu_seconds=0, cpu_limit=1, ready=True).reason == "file_quota"
    assert classify(EXIT_MEMORY, cpu_seconds=0, cpu_limit=1, ready=True).reason == "memory_quota"
    assert classify(78, cpu_seconds=0, cpu_limit=1, ready=False).reason == "sandbox_unavailable"
    assert classify(1, cpu_seconds=0, cpu_limit=1, ready=False).reason == "start_failed"
    assert classify(-11, cpu_seconds=0, cpu_limit=1, ready=False).reason == "start_failed"
    assert classify(0, cpu_seconds=0, cpu_limit=1, ready=True).reason == "crash"
    assert printable("a\x00b\n" + "c" * 300, 20) == "a\\x00b\\n" + "c" * 9 + "..."

"""The plugin sandbox (issue 17): real children under the real kernel, the host side's API.

Escape attempts are in test_plugin_sandbox_escapes.py, protocol violations and floods in
test_plugin_sandbox_protocol.py, layers this machine refuses in test_plugin_sandbox_unavailable.py.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.plugin_host.sandbox import (
    LAYERS,
    Child,
    ChildGone,
    Limits,
    PluginFailed,
    RequestDenied,
    SandboxSpec,
    probe_layers,
    sdk,
)
from services.plugin_host.sandbox.runtime import PROJECT_ROOT

from .sandbox_rig import LIMITS, WAIT, Rig, bpf, gone


async def test_a_plugin_starts_with_every_layer_and_answers(rig: Rig) -> None:
    child = await rig.start("good")
    assert child.layers == dict.fromkeys(LAYERS, True)
    assert set(child.functions) == {"ping", "kv.roundtrip", "ask", "fail", "unsendable"}
    assert child.topics == ("notes.",)
    assert child.exit is None and child.pid > 0
    assert await rig.call(child, "ping", {"n": [1, 2], "b": b"\x00"}) == {"pong": {"n": [1, 2], "b": b"\x00"}}
    assert rig.logs["good"] == [("stdout", "good plugin imported")]


async def test_requests_reach_on_request_and_come_back(rig: Rig) -> None:
    child = await rig.start("good")
    result = await rig.call(child, "kv.roundtrip")
    # The plugin's list of (key, value) tuples comes back as msgpack arrays: lists.
    assert result == {"get": b"1", "missing": None, "scan": [[b"a", b"1"], [b"b", b"2"]]}
    assert [op for op, _ in rig.store.seen] == ["kv.put", "kv.put", "kv.get", "kv.get", "kv.scan"]
    assert rig.store.seen[-1][1] == {"category": "notes", "prefix": b"", "limit": 10}


async def test_a_refusal_reaches_the_plugin_as_denied_and_a_failure_as_error(rig: Rig) -> None:
    child = await rig.start("good")

    async def refuse(op: str, args: dict[str, object]) -> object:
        raise RequestDenied("NO_CONSENT", "the person has not granted health data")

    async def break_down(op: str, args: dict[str, object]) -> object:
        raise RuntimeError("storage at /secret/path exploded")

    assert await rig.call(child, "ask", on_request=refuse) == {
        "class": "Denied", "code": "NO_CONSENT", "message": "the person has not granted health data"}
    answer = await rig.call(child, "ask", on_request=break_down)
    assert answer["class"] == "Error" and answer["code"] == "UNAVAILABLE"
    assert "secret" not in answer["message"] and "exploded" not in answer["message"]
    assert await rig.call(child, "ping", 1) == {"pong": 1}


async def test_events_go_to_the_handlers_of_their_prefix(rig: Rig) -> None:
    child = await rig.start("good")
    await child.event("notes.created", b"note 7", timeout=WAIT, on_request=rig.store)
    await child.event("calendar.created", b"ignored", timeout=WAIT, on_request=rig.store)
    assert rig.store.data == {("kv", "events", b"notes.created"): b"note 7"}


async def test_a_plugin_exception_is_plugin_failed_and_the_child_lives_on(rig: Rig) -> None:
    child = await rig.start("good")
    with pytest.raises(PluginFailed) as failed:
        await rig.call(child, "fail", "x")
    assert (failed.value.type_name, failed.value.message, failed.value.denied) == ("ValueError", "bad input: x", False)
    with pytest.raises(PluginFailed) as unknown:
        await rig.call(child, "nonexistent")
    assert unknown.value.type_name == "LookupError"
    with pytest.raises(PluginFailed) as unsendable:
        await rig.call(child, "unsendable")
    assert unsendable.value.type_name == "TypeError"
    assert await rig.call(child, "ping", 2) == {"pong": 2}


async def test_arguments_larger_than_a_message_are_refused_before_sending(rig: Rig) -> None:
    child = await rig.start("good", max_message_bytes=4096)
    with pytest.raises(ValueError, match="max_message_bytes"):
        await rig.call(child, "ping", b"x" * 5000)
    with pytest.raises(ValueError):
        await rig.call(child, "ping", {1, 2})  # not msgpack
    for name in ("", "x" * 201, b"ping"):
        with pytest.raises(ValueError):
            await rig.call(child, name)  # type: ignore[arg-type]
    assert await rig.call(child, "ping", 3) == {"pong": 3}


async def test_stop_is_clean_idempotent_and_ends_every_call(rig: Rig) -> None:
    child = await rig.start("good")
    first = await child.stop()
    assert (first.reason, first.returncode) == ("stopped", 0)
    assert await child.stop() == first and await gone(child) == first and child.exit == first
    with pytest.raises(ChildGone) as after:
        await rig.call(child, "ping")
    assert after.value.exit == first


async def test_stop_kills_a_busy_child_after_the_grace(rig: Rig) -> None:
    child = await rig.start("hog")
    busy = asyncio.create_task(rig.call(child, "spin", timeout=WAIT))
    await asyncio.sleep(0)  # one loop step: the call frame is out (sending it does not suspend the call)
    exit_info = await asyncio.wait_for(child.stop(grace=0.2), WAIT)
    assert (exit_info.reason, exit_info.returncode) == ("stopped", -9)
    with pytest.raises(ChildGone) as call:
        await asyncio.wait_for(busy, WAIT)
    assert call.value.exit.reason == "stopped"


async def test_calls_to_one_child_run_one_at_a_time(rig: Rig) -> None:
    child = await rig.start("good")
    results = await asyncio.gather(*(rig.call(child, "ping", n) for n in range(20)))
    assert results == [{"pong": n} for n in range(20)]


@pytest.mark.parametrize(("plugin", "reason"), [("broken_import", "start_failed"), ("exit_import", "start_failed"),
                                                ("socket_at_import", "seccomp")])
async def test_a_plugin_that_dies_while_importing_never_becomes_ready(rig: Rig, plugin: str, reason: str) -> None:
    good = await rig.start("good")
    with pytest.raises(ChildGone) as start:
        await rig.start(plugin)
    assert start.value.exit.reason == reason
    if plugin == "broken_import":
        assert any("this plugin cannot start" in line for _, line in rig.logs["broken-import"])
    assert await rig.call(good, "ping", 4) == {"pong": 4}


async def test_a_missing_scratch_directory_is_start_failed(rig: Rig, tmp_path: Path) -> None:
    spec = SandboxSpec(name="nowhere", package_dir=rig.spec("good").package_dir, entry="plugin",
                       scratch_dir=tmp_path / "missing", limits=LIMITS, requires=frozenset())
    with pytest.raises(ChildGone) as start:
        await Child.start(spec, bpf=rig.bpf, on_log=lambda stream, line: None, start_timeout=WAIT)
    assert (start.value.exit.reason, start.value.exit.returncode) == ("start_failed", None)


async def test_a_child_that_is_not_ready_in_time_is_killed(rig: Rig) -> None:
    spec = rig.spec("good")
    with pytest.raises(ChildGone) as start:
        await Child.start(spec, bpf=rig.bpf, on_log=lambda stream, line: None, start_timeout=0.001)
    assert start.value.exit.reason == "start_failed"
    assert "not ready within" in start.value.exit.detail


ORPHANING_HOST = """
import asyncio
import sys
from pathlib import Path

from tests.sandbox_rig import Rig, bpf


async def main() -> None:
    rig = Rig(Path(sys.argv[1]), bpf())
    child = await rig.start("good")
    print(child.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_child_never_outlives_plugin_host(tmp_path: Path) -> None:
    """plugin-host killed with SIGKILL: its child gets SIGKILL from the kernel (PR_SET_PDEATHSIG)."""
    host = subprocess.Popen([sys.executable, "-c", ORPHANING_HOST, str(tmp_path)], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert select.select([host.stdout], [], [], WAIT)[0], "the host never started its child"
        pid = int(host.stdout.readline())  # type: ignore[union-attr]
        pidfd = os.pidfd_open(pid)
        host.send_signal(signal.SIGKILL)
        assert select.select([pidfd], [], [], WAIT)[0], "the child outlived plugin-host"
        os.close(pidfd)
    finally:
        host.kill()
        host.communicate(timeout=WAIT)


def test_the_sdk_refuses_bad_names() -> None:
    for name in ("", "has space", "x" * 65, "1starts_with_digit"):
        with pytest.raises(ValueError):
            sdk.function(name)(lambda args: None)
    for prefix in ("", "has space", "x" * 201):
        with pytest.raises(ValueError):
            sdk.on_event(prefix)
    with pytest.raises(sdk.Error) as outside:
        sdk.kv.get("notes", b"k")  # not under plugin-host: no link
    assert outside.value.code == "UNAVAILABLE"
    assert issubclass(sdk.Denied, sdk.Error)


def test_specs_and_limits_refuse_nonsense(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Limits(memory_mb=0, cpu_s=1, open_files=64, file_size_mb=1, processes=1, scratch_mb=1)
    with pytest.raises(ValueError):
        Limits(memory_mb=64, cpu_s=True, open_files=64, file_size_mb=1, processes=1, scratch_mb=1)  # type: ignore[arg-type]
    for bad in ({"name": "../x"}, {"entry": "os; import x"}, {"requires": frozenset({"magic"})},
                {"package_dir": Path("relative")}, {"max_message_bytes": 10}):
        options = {"name": "ok", "package_dir": tmp_path, "entry": "plugin", "scratch_dir": tmp_path,
                   "limits": LIMITS, "requires": frozenset(), **bad}
        with pytest.raises(ValueError):
            SandboxSpec(**options)  # type: ignore[arg-type]


async def test_probe_layers_finds_every_layer_working_here() -> None:
    assert await asyncio.wait_for(probe_layers(bpf()), 60) == dict.fromkeys(LAYERS)


async def test_cold_start(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    """Spawn to ready, measured (the target is under 300 ms; reported, not asserted)."""
    times = []
    for n in range(7):
        started = time.perf_counter()
        child = await rig.start("good", name=f"cold-{n}")
        times.append(time.perf_counter() - started)
        await child.stop()
    ms = [t * 1000 for t in times]
    with capsys.disabled():
        print(f"\nplugin sandbox cold start (spawn -> ready, every layer): median {statistics.median(ms):.0f} ms,"
              f" min {min(ms):.0f} ms, max {max(ms):.0f} ms over {len(ms)} starts")

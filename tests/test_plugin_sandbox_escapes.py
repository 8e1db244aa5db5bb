"""Escape attempts from inside a plugin (tests/plugins/escape_*, hog, inspect), each stopped.

Every attempt runs in a real sandboxed child beside a well-behaved plugin, and the test checks
how it was stopped (the child's ExitInfo, or PluginFailed.denied when the kernel refused one
operation) and that the well-behaved plugin still answers afterwards.
"""

from __future__ import annotations

import _ctypes
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from services.plugin_host.sandbox import ChildGone, ExitInfo, Limits, PluginFailed
from services.plugin_host.sandbox.runtime import PROJECT_ROOT

from .sandbox_rig import LIMITS, Rig, gone

VENV_SITE = next(Path(PROJECT_ROOT).glob(".venv/lib/python3*/site-packages"), Path(PROJECT_ROOT))



async def attempt(rig: Rig, plugin: str, function: str, args: Any = None, *, timeout: float = 10.0,
                  **options: Any) -> PluginFailed | ExitInfo:
    """Run one attempt beside a good plugin; how it was stopped. The good plugin must still answer."""
    good = await rig.start("good", name=f"good-{len(rig.children)}")
    child = await rig.start(plugin, name=f"{plugin.replace('_', '-')}-{len(rig.children)}", **options)
    outcome: PluginFailed | ExitInfo
    try:
        value = await rig.call(child, function, args, timeout=timeout)
    except PluginFailed as failed:
        outcome = failed
    except ChildGone as gone_:
        outcome = gone_.exit
        assert child.exit == outcome
    else:
        pytest.fail(f"{plugin}.{function} was not stopped: it returned {value!r}")
    assert await rig.call(good, "ping", "still here") == {"pong": "still here"}
    return outcome


def refused(outcome: PluginFailed | ExitInfo) -> bool:
    return isinstance(outcome, PluginFailed) and outcome.denied


def killed_by(outcome: PluginFailed | ExitInfo, reason: str) -> bool:
    return isinstance(outcome, ExitInfo) and outcome.reason == reason


# -- the filesystem -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/shadow", f"/proc/{os.getpid()}/environ", "/proc/self/environ",
                                  str(Path(PROJECT_ROOT) / "pyproject.toml")])
async def test_reading_system_and_host_files_is_refused(rig: Rig, path: str) -> None:
    assert refused(await attempt(rig, "escape_fs", "read", {"path": path}))


async def test_the_mesh_home_is_unreadable(rig: Rig, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "broker.key_secret").write_text("curve secret")
    assert refused(await attempt(rig, "escape_fs", "listdir", {"path": str(home)}))
    assert refused(await attempt(rig, "escape_fs", "read", {"path": str(home / "keys" / "broker.key_secret")}))


@pytest.mark.parametrize("where", ["/", "/tmp", str(PROJECT_ROOT), str(VENV_SITE)])
async def test_listing_directories_outside_is_refused(rig: Rig, where: str) -> None:
    assert refused(await attempt(rig, "escape_fs", "listdir", {"path": where}))


async def test_another_plugins_scratch_is_out_of_reach(rig: Rig) -> None:
    alpha = await rig.start("escape_fs", name="alpha")
    assert await rig.call(alpha, "write", {"path": "secret.txt"}) is True  # in alpha's own scratch
    alpha_scratch = rig.spec("escape_fs", name="alpha").scratch_dir
    assert refused(await attempt(rig, "escape_fs", "listdir", {"path": str(alpha_scratch)}))
    stolen = await attempt(rig, "escape_fs", "read", {"path": str(alpha_scratch / "secret.txt")})
    assert isinstance(stolen, PluginFailed) and stolen.type_name in ("PermissionError", "FileNotFoundError")
    assert list(alpha_scratch.iterdir()) == []  # alpha's files live in its own tmpfs, not on the host's disk


async def test_writing_outside_scratch_is_refused(rig: Rig, tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    assert refused(await attempt(rig, "escape_fs", "write", {"path": str(target)}))
    assert not target.exists()
    assert refused(await attempt(rig, "escape_fs", "write", {"path": str(rig.spec("escape_fs").package_dir / "x")}))


async def test_its_own_scratch_is_a_private_tmpfs(rig: Rig) -> None:
    child = await rig.start("escape_fs")
    result = await rig.call(child, "scratch", {"text": "hello"})
    assert result == {"text": "hello", "listing": ["sub"], "cwd": str(rig.spec("escape_fs").scratch_dir),
                      "bytes": LIMITS.scratch_mb * 1024 * 1024}


async def test_code_written_to_scratch_cannot_be_mapped_executable(rig: Rig) -> None:
    outcome = await attempt(rig, "escape_fs", "run_from_scratch", {"library": _ctypes.__file__})
    assert isinstance(outcome, PluginFailed) and outcome.type_name == "OSError"


# -- the network ----------------------------------------------------------------------------------

@pytest.fixture
def listeners(tmp_path: Path) -> Any:
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "mesh.sock"))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    for listener in (unix, tcp):
        listener.listen(8)
        listener.setblocking(False)
    yield {"unix": str(tmp_path / "mesh.sock"), "tcp": tcp.getsockname()[1], "sockets": (unix, tcp)}
    for listener in (unix, tcp):
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
        listener.close()


async def test_sockets_kill_the_plugin(rig: Rig, listeners: Any) -> None:
    assert killed_by(await attempt(rig, "escape_net", "unix", {"path": listeners["unix"]}), "seccomp")
    assert killed_by(await attempt(rig, "escape_net", "tcp", {"host": "127.0.0.1", "port": listeners["tcp"]}),
                     "seccomp")
    assert killed_by(await attempt(rig, "escape_net", "tcp", {"host": "1.1.1.1", "port": 443}), "seccomp")


def permissive_filter() -> bytes:
    """A filter that lets sockets through, to show the layers below seccomp stop TCP too."""
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.add_rule(pyseccomp.KILL_PROCESS, "acct")
    fd = os.memfd_create("permissive")
    with os.fdopen(fd, "w+b") as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


async def test_without_seccomp_tcp_is_still_refused(tmp_path: Path, listeners: Any) -> None:
    rig = Rig(tmp_path, permissive_filter())
    try:
        for host, port in (("127.0.0.1", listeners["tcp"]), ("1.1.1.1", 443)):
            outcome = await attempt(rig, "escape_net", "tcp", {"host": host, "port": port})
            assert refused(outcome), outcome  # Landlock refuses connect (EACCES) before routing
    finally:
        await rig.close()


# -- processes and programs -----------------------------------------------------------------------

@pytest.mark.parametrize("function", ["execv", "run", "fork_bomb"])
async def test_new_programs_and_processes_kill_the_plugin(rig: Rig, function: str) -> None:
    assert killed_by(await attempt(rig, "escape_exec", function), "seccomp")


async def test_threads_are_allowed(rig: Rig) -> None:
    child = await rig.start("escape_exec")
    assert await rig.call(child, "threads") == [0, 1, 2, 3]


# -- resources ------------------------------------------------------------------------------------

async def test_a_memory_bomb_ends_as_memory_quota(rig: Rig) -> None:
    limits = Limits(memory_mb=128, cpu_s=30, open_files=64, file_size_mb=1, processes=1, scratch_mb=1)
    assert killed_by(await attempt(rig, "hog", "memory", limits=limits), "memory_quota")


async def test_an_endless_call_ends_as_call_timeout(rig: Rig) -> None:
    outcome = await attempt(rig, "hog", "spin", timeout=0.5)
    assert killed_by(outcome, "call_timeout") and outcome.returncode == -signal.SIGKILL  # type: ignore[union-attr]


@pytest.mark.parametrize(("function", "sig"), [("spin", signal.SIGXCPU), ("spin_ignoring_sigxcpu", signal.SIGKILL)])
async def test_cpu_beyond_the_limit_ends_as_cpu_quota(rig: Rig, function: str, sig: int) -> None:
    limits = Limits(memory_mb=128, cpu_s=1, open_files=64, file_size_mb=1, processes=1, scratch_mb=1)
    outcome = await attempt(rig, "hog", function, timeout=15.0, limits=limits)
    assert killed_by(outcome, "cpu_quota") and outcome.returncode == -sig  # type: ignore[union-attr]


async def test_a_file_beyond_its_size_limit_ends_as_file_quota(rig: Rig) -> None:
    limits = Limits(memory_mb=128, cpu_s=30, open_files=64, file_size_mb=1, processes=1, scratch_mb=16)
    assert killed_by(await attempt(rig, "hog", "big_file", {"mb": 4}, limits=limits), "file_quota")


# -- the kernel, through ctypes -------------------------------------------------------------------

@pytest.mark.parametrize("function", ["raw_socket", "x32_socket", "unshare", "raise_limit", "become"])
async def test_raw_system_calls_kill_the_plugin(rig: Rig, function: str) -> None:
    assert killed_by(await attempt(rig, "escape_kernel", function), "seccomp")


async def test_ptrace_of_the_host_kills_the_plugin(rig: Rig) -> None:
    assert killed_by(await attempt(rig, "escape_kernel", "ptrace", {"pid": os.getpid()}), "seccomp")


async def test_signals_to_the_host_and_other_plugins_are_refused(rig: Rig) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: received.append(number))
    try:
        assert refused(await attempt(rig, "escape_kernel", "kill", {"pid": os.getpid()}))
        other = await rig.start("good", name="other")
        assert refused(await attempt(rig, "escape_kernel", "kill", {"pid": other.pid}))
        assert await rig.call(other, "ping", 1) == {"pong": 1}
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == []


# -- what it finds in its own process -------------------------------------------------------------

async def test_only_its_socket_is_inherited(rig: Rig, tmp_path: Path) -> None:
    stray = os.open(tmp_path / "stray", os.O_CREAT | os.O_RDWR)
    stray_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.set_inheritable(stray, True)
    stray_socket.set_inheritable(True)
    try:
        child = await rig.start("inspect")
        assert await rig.call(child, "fds") == [0, 1, 2, 3]
    finally:
        os.close(stray)
        stray_socket.close()


async def test_its_environment_holds_no_secret(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURVEMESH_HOME", "/somewhere/home")
    monkeypatch.setenv("CURVEMESH_TOKEN", "a token")
    child = await rig.start("inspect")
    scratch = str(rig.spec("inspect").scratch_dir)
    assert await rig.call(child, "environ") == {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": scratch,
                                                "HOME": scratch}


async def test_limits_capabilities_and_filters_are_in_force(rig: Rig) -> None:
    child = await rig.start("inspect")
    mb = 1024 * 1024
    assert await rig.call(child, "limits") == {
        "RLIMIT_AS": [LIMITS.memory_mb * mb] * 2, "RLIMIT_CPU": [LIMITS.cpu_s, LIMITS.cpu_s + 1],
        "RLIMIT_NOFILE": [LIMITS.open_files] * 2, "RLIMIT_FSIZE": [LIMITS.file_size_mb * mb] * 2,
        "RLIMIT_CORE": [0, 0], "RLIMIT_NPROC": [LIMITS.processes] * 2, "RLIMIT_MEMLOCK": [0, 0]}
    assert await rig.call(child, "capabilities") == {"bounding": [], "ambient": [], "held": [0, 0], "no_new_privs": 1,
                                                     "seccomp": 2}


async def test_the_standard_library_works_and_nothing_else_is_on_its_path(rig: Rig) -> None:
    child = await rig.start("inspect")
    assert await rig.call(child, "imports") == ['{"a": 1}', "2.2", "e3b0c442", True, True, True,
                                                "LATIN SMALL LETTER A", 4, 42]
    path = await rig.call(child, "path")
    assert path[0] == str(rig.spec("inspect").package_dir)
    assert not any(entry.startswith(PROJECT_ROOT) or "site-packages" in entry for entry in path[1:])


async def test_the_child_loads_the_bootstrap_and_nothing_of_the_host(rig: Rig) -> None:
    """Neither the plugin-host service (its package __init__ never runs in a child) nor the
    host side of the sandbox (asyncio, libseccomp) is loaded in a child. (subprocess is: landlockpy
    imports ctypes.util, whose library search would spawn ldconfig; the child hands it libc instead.)"""
    child = await rig.start("inspect")
    modules = set(await rig.call(child, "modules"))
    assert "services.plugin_host.sandbox.child" in modules and "curvemesh_plugin" in modules
    for absent in ("shared", "zmq", "pyseccomp", "asyncio", "services.plugin_host.service",
                   "services.plugin_host.sandbox.process", "services.plugin_host.sandbox.seccomp_filter"):
        assert absent not in modules


async def test_an_exit_is_reaped_even_while_idle(rig: Rig) -> None:
    child = await rig.start("misbehave")
    assert await rig.call(child, "exit_later") == "done"
    exit_info = await gone(child)
    assert (exit_info.reason, exit_info.returncode) == ("crash", 3)

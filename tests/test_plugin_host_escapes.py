"""Every escape attempt of the sandbox tests (tests/plugins/), installed and called through plugin-host
(tests/plugin_rig.py): each is stopped, audited as ``plugin.killed`` with the reason, raises the
``plugin_faults`` alert, and the host keeps serving a well-behaved plugin beside it after every one.

tests/test_plugin_sandbox*.py show each layer holds at the process level; this shows what the mesh
sees: the refusal, the record, the alert, the restart.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import eventually
from .plugin_rig import ESCAPES, PluginRig, code_of, plugin_rig

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(300)]

QUOTAS = {"memory_mb": 256, "cpu_s": 1, "call_timeout_s": 5.0}


def cases(rig: PluginRig, listener: socket.socket, secret: Path) -> list[tuple[str, str, str, dict[str, Any], str]]:
    """(plugin source, its name here, function, args, the reason plugin-host must record)."""
    port = listener.getsockname()[1]
    other_scratch = str(rig.host.shelf.scratch_root / "good")
    return [
        ("escape_fs", "fs", "read", {"path": "/etc/passwd"}, "sandbox_denied"),
        ("escape_fs", "fs", "read", {"path": str(secret)}, "sandbox_denied"),
        ("escape_fs", "fs", "listdir", {"path": other_scratch}, "sandbox_denied"),
        ("escape_fs", "fs", "write", {"path": str(secret.parent / "planted")}, "sandbox_denied"),
        ("escape_net", "net", "unix", {"path": str(rig.rig.home.run / "broker.sock")}, "seccomp"),
        ("escape_net", "net", "tcp", {"host": "127.0.0.1", "port": port}, "seccomp"),
        ("escape_net", "net", "tcp", {"host": "1.1.1.1", "port": 443}, "seccomp"),
        ("escape_exec", "exec", "execv", {}, "seccomp"),
        ("escape_exec", "exec", "run", {}, "seccomp"),
        ("escape_exec", "exec", "fork_bomb", {}, "seccomp"),
        ("hog", "hog", "memory", {}, "memory_quota"),
        ("hog", "hog", "spin", {}, "cpu_quota"),
        ("escape_kernel", "kernel", "raw_socket", {}, "seccomp"),
        ("escape_kernel", "kernel", "ptrace", {"pid": os.getpid()}, "seccomp"),
        ("escape_kernel", "kernel", "unshare", {}, "seccomp"),
        ("escape_kernel", "kernel", "kill", {"pid": os.getpid()}, "sandbox_denied"),
    ]


async def test_each_escape_is_stopped_audited_alerted_and_the_host_serves_on(short_tmp: Path) -> None:
    secret = short_tmp / "home-stand-in" / "secret"
    secret.parent.mkdir(parents=True)
    secret.write_text("the mesh's secret")
    async with plugin_rig(short_tmp, plugins_config="max_failures = 100\n") as rig:
        await rig.install(rig.package("good", capabilities=[]))
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            every = cases(rig, listener, secret)
            for source, name in sorted({(c[0], c[1]) for c in every}):
                await rig.install(rig.package(name, capabilities=[], source=source, sources=ESCAPES, quotas=QUOTAS))
            for source, name, function, args, _ in every:
                await rig.state(name, "running")
                assert await code_of(rig.call(name, function, args)) == "UNAVAILABLE", (source, function)
                assert (await rig.call("good", "hello"))["ok"] is True, (source, function)
            listener.settimeout(0.0)
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody ever connected
        finally:
            listener.close()
        assert not (secret.parent / "planted").exists()
        killed = await rig.records("plugin.killed")
        assert [(r["target"], r["details"]["reason"]) for r in killed] == \
            [(f"plugin:{name}", reason) for _, name, _, _, reason in every]
        alerts = (await rig.operator.call("audit.alerts", {}, timeout=10))["alerts"]
        assert {a["subject"] for a in alerts if a["rule"] == "plugin_faults"} == {f"plugin:{c[1]}" for c in every}
        # The good plugin never failed; the host is healthy.
        assert (await rig.show("good"))["failures"] == 0
        assert (await rig.operator.call("plugin-host.health", {}, timeout=10))["state"] == "ready"


async def test_a_plugin_inherits_nothing_and_sees_no_secret(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        stray = os.open(os.devnull, os.O_RDONLY)  # inheritable, open in plugin-host's process
        os.set_inheritable(stray, True)
        try:
            await rig.install(rig.package("inspect", capabilities=[], source="inspect", sources=ESCAPES))
            fds = (await rig.call("inspect", "fds", {}))["value"]
            environ = (await rig.call("inspect", "environ", {}))["value"]
        finally:
            os.close(stray)
        assert len(fds) == 4, fds  # stdin, stdout, stderr and its socket: nothing of the host's
        assert not any(k.startswith("CURVEMESH") for k in environ)
        assert set(environ) <= {"LANG", "PYTHONDONTWRITEBYTECODE", "TMPDIR", "HOME"}, environ

        async def quiet() -> bool:
            return (await rig.show("inspect"))["failures"] == 0
        assert await eventually(quiet)

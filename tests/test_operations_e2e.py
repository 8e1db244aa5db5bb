"""End to end under a real supervisord, in temporary homes: up, kill -9 everything, FATAL, down.

Every wait polls a condition against a deadline. Each mesh is torn down in a
``finally`` with ``meshctl down``, and whatever of its home might still run
is then killed, so a failing test leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport

from shared import Connection, HandshakeError, MeshClient, MeshHome, certs, config_path, load_config, parse_config
from tools.meshctl_cli._output import CliError
from tools.meshctl_cli._supervisor import Credentials, Supervisor, alive, home_processes, load_credentials

from .conftest import eventually

REPO = Path(__file__).resolve().parents[1]
MESHCTL = [sys.executable, "-m", "tools.meshctl_cli"]
SERVICES = ["keyvault", "authn", "authz", "storage", "audit", "pairing", "plugin-host"]
POLL_S = 0.2


def _env(home: MeshHome) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CURVEMESH_CONFIG"}
    env["CURVEMESH_HOME"] = str(home.root)
    return env


def meshctl(home: MeshHome, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    # No terminal on stdin: init generates a recovery passphrase instead of prompting.
    return subprocess.run([*MESHCTL, *args], cwd=REPO, env=_env(home), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)


def _toml(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Just enough TOML to write mesh.toml back: tables, strings, numbers, booleans, lists."""
    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and (scalars or not data) else []
    lines += [f"{key(k)} = {json.dumps(v)}" for k, v in scalars.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += _toml(v, f"{prefix}.{key(k)}" if prefix else key(k))
    return lines


def fast_config_text() -> str:
    """The repository's mesh.toml with a test Argon2 master profile and short wrong-password
    delays. A home's mesh.toml replaces the repository's as a whole, so it starts from it."""
    data = tomllib.loads((REPO / "mesh.toml").read_text("utf-8"))
    data.setdefault("argon2", {}).update(test_profiles=True,
                                         master={"memory_kib": 8192, "iterations": 1, "parallelism": 1})
    data.setdefault("keyvault", {}).update(unlock_backoff_base_ms=50, unlock_backoff_max_ms=200)
    text = "\n".join(_toml(data)) + "\n"
    assert parse_config(text).argon2.master.memory_kib == 8192
    return text


def write_fast_config(home: MeshHome) -> None:
    """Give ``home`` the fast test configuration (before ``meshctl init``)."""
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home.root / "mesh.toml").write_text(fast_config_text())


def status(home: MeshHome) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(meshctl(home, "status", "--json").stdout)
    return report


async def astatus(home: MeshHome) -> dict[str, Any]:
    """``meshctl status --json`` without blocking the event loop (our mesh client keeps running)."""
    proc = await asyncio.create_subprocess_exec(*MESHCTL, "status", "--json", cwd=REPO, env=_env(home),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    report: dict[str, Any] = json.loads(out)
    return report


def row(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in report["services"] if r["name"] == name)
    return found


def wait_until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(POLL_S)  # poll interval


@contextlib.contextmanager
def mesh_home() -> Iterator[MeshHome]:
    """A fresh short home (unix socket paths are limited to 107 bytes), always stopped and removed."""
    home = MeshHome(Path(tempfile.mkdtemp(prefix="cm")))
    try:
        yield home
    finally:
        try:
            meshctl(home, "down", "--yes", "--timeout", "30", timeout=120)
        finally:
            for pid, _ in home_processes(home):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(home.root, ignore_errors=True)


@contextlib.contextmanager
def running_mesh(prepare: Callable[[MeshHome], None] = write_fast_config) -> Iterator[MeshHome]:
    """A fresh home, prepared (its configuration), initialised and up: the mesh the end-to-end tests
    of one module share. Stopped and removed afterwards, like :func:`mesh_home`."""
    with mesh_home() as home:
        prepare(home)
        init = meshctl(home, "init")
        assert init.returncode == 0, init.stderr
        up = meshctl(home, "up", "--timeout", "90")
        assert up.returncode == 0, f"meshctl up failed:\n{up.stdout}\n{up.stderr}"
        yield home


@pytest.fixture(scope="module")
def live() -> Iterator[MeshHome]:
    with running_mesh() as home:
        yield home


def test_up_reaches_healthy(live: MeshHome) -> None:
    report = status(live)
    assert report["healthy"] is True, report["verdict"]
    # Every declared process, in start order (priority, then as mesh.toml declares them).
    assert [r["name"] for r in report["services"]] == ["broker", "keyvault", "supervisor-events", "audit", "storage",
                                                        "authn", "authz", "pairing", "plugin-host"]
    for r in report["services"]:
        assert r["state"] == "RUNNING" and r["registered"] is True and isinstance(r["pid"], int), r
    broker_key = certs.load_certificate(live.public_key_path("broker")).public_key.decode()
    assert report["broker"] == report["broker"] | {"public_key": broker_key, "endpoints": [live.broker_endpoint]}
    assert report["keyring"]["backend"]
    # Running `up` again on a running mesh is harmless: same processes, still healthy.
    pids = {r["name"]: r["pid"] for r in report["services"]}
    again = meshctl(live, "up")
    assert again.returncode == 0 and "already runs" in again.stdout
    assert {r["name"]: r["pid"] for r in status(live)["services"]} == pids
    # The checkout's wrapper drives the same mesh.
    wrapper = subprocess.run([str(REPO / "tools" / "meshctl"), "ping", "storage"], env=_env(live),
                             capture_output=True, text=True, timeout=60, check=False)
    assert wrapper.returncode == 0 and "storage: ready" in wrapper.stdout
    logs = meshctl(live, "logs", "broker", "-n", "500")
    assert logs.returncode == 0 and " broker_listening " in logs.stdout
    logs = meshctl(live, "logs", "broker", "-n", "500", "--json")
    assert any(json.loads(line).get("event") == "broker_listening" for line in logs.stdout.splitlines())


def test_every_file_of_a_running_mesh_is_private(live: MeshHome) -> None:
    """Everything the mesh wrote into its home, supervisord's own log included (it opens it
    before applying its umask), is closed to group and others: files 0600, directories 0700.
    Public certificates too. Only mesh.toml is left out: it is the operator's file (written here by
    the test), not the mesh's."""
    assert (live.log / "supervisord.log").is_file()
    exposed = []
    for path in [live.root, *live.root.rglob("*")]:
        if path == live.root / "mesh.toml":
            continue
        mode = os.lstat(path).st_mode
        if stat.S_IMODE(mode) & 0o077:
            exposed.append(f"{path.relative_to(live.root)} {stat.S_IMODE(mode):04o}")
    assert exposed == [], "\n".join(exposed)


def test_supervisord_refuses_a_client_without_credentials(live: MeshHome) -> None:
    sock = live.run / "supervisord.sock"
    assert (os.stat(live.run).st_mode & 0o777) == 0o700 and (os.stat(sock).st_mode & 0o777) == 0o700
    creds = load_credentials(live)
    for user, password in ((None, None), (creds.username, "wrong"), ("root", creds.password)):
        proxy = xmlrpc.client.ServerProxy("http://localhost", transport=SupervisorTransport(
            user, password, f"unix://{sock}"))
        with pytest.raises(xmlrpc.client.ProtocolError) as refused:
            proxy.supervisor.stopProcess("mesh:storage")
        assert refused.value.errcode == 401
        # meshctl's own client (no supervisor package: tools/meshctl_cli/_xmlrpc.py) is refused alike.
        with pytest.raises(CliError, match="supervisord refused our credentials"):
            Supervisor(live, None if user is None else Credentials(user, password or "")).call("stopProcess",
                                                                                            "mesh:storage")
    assert Supervisor(live, creds).call("getState")["statename"] == "RUNNING"
    assert row(status(live), "storage")["state"] == "RUNNING"


async def test_an_unknown_curve_key_cannot_reach_the_mesh(live: MeshHome) -> None:
    stranger = certs.generate("stranger", "device")
    broker_key = certs.load_certificate(live.public_key_path("broker")).public_key
    connection = Connection(stranger, broker_key, live.broker_endpoint, load_config(config_path(live.root)).runtime)
    try:
        with pytest.raises(HandshakeError):
            await connection.open(timeout=5)
    finally:
        await connection.close()
    # The broker kept the key for an operator to decide on; it is not admitted.
    key = stranger.certificate.public_key.decode()
    async def shows_as_pending() -> bool:
        pending = meshctl(live, "certs", "pending", "--json")
        return pending.returncode == 0 and key in [e["public_key"] for e in json.loads(pending.stdout)]
    await eventually(shows_as_pending, deadline=10)  # else: the refused key never showed up as pending


async def test_kill_9_each_process_and_the_mesh_heals(live: MeshHome) -> None:
    client = await MeshClient.connect(live, "meshctl")
    try:
        events = await client.subscribe("supervisor.process.exited")
        report = await astatus(live)
        restarts = {r["name"]: r["restarts"] for r in report["services"]}
        killed: dict[str, int] = {}
        # The broker last: by then every other exit has been reported to our subscription.
        for name in [*SERVICES, "supervisor-events", "broker"]:
            old = row(report, name)["pid"]
            os.kill(old, signal.SIGKILL)
            killed[name] = old

            async def healed(name: str = name, old: int = old) -> bool:
                nonlocal report
                report = await astatus(live)
                return bool(report["healthy"] and row(report, name)["pid"] not in (None, old))
            await eventually(healed, deadline=10)  # healthy again within 10 s of kill -9
        for name, count in restarts.items():
            assert row(report, name)["restarts"] == count + 1, name
        # supervisor-events forwarded every unexpected exit (its own too, after its restart).
        reported: dict[str, int] = {}
        expected = {n: p for n, p in killed.items() if n != "broker"}
        deadline = time.monotonic() + 10
        while any(reported.get(n) != p for n, p in expected.items()):
            event = await events.next(timeout=max(0.1, deadline - time.monotonic()))
            assert event.sender == "supervisor-events" and event.body["expected"] is False
            reported[event.body["process"]] = event.body["pid"]
        health = await client.call("supervisor-events.health", timeout=5)
        assert health["dropped"] == 0 and health["lost_upstream"] == 0
    finally:
        await client.close()


def test_restart_and_events_tail(live: MeshHome) -> None:
    tail = subprocess.Popen([*MESHCTL, "events", "tail", "-f", "--json", "--topic", "supervisor.process."],
                            cwd=REPO, env=_env(live), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in tail.stdout or []], daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        # Until the tail has subscribed a restart may go unseen, so restart until one is seen.
        while "RUNNING" not in seen:
            assert time.monotonic() < deadline, "events tail never showed authz's restart"
            old = row(status(live), "authz")["pid"]
            restarted = meshctl(live, "restart", "authz", "--json")
            assert restarted.returncode == 0, restarted.stderr
            assert json.loads(restarted.stdout)["pid"] != old
            with contextlib.suppress(queue.Empty):
                while True:
                    event = json.loads(lines.get(timeout=3))
                    if event["body"]["process"] == "authz":
                        seen.add(event["body"]["state"])
        assert "STOPPED" in seen  # a stop on purpose is reported as STOPPED, not as a crash
    finally:
        tail.send_signal(signal.SIGTERM)
        assert tail.wait(timeout=15) == 0


def test_a_process_that_cannot_start_ends_fatal_beside_a_healthy_mesh(live: MeshHome) -> None:
    make = ["make", "-s", "-C", str(REPO), "-o", ".venv/.curvemesh-installed", f"PY={sys.executable}"]
    with mesh_home() as broken:
        write_fast_config(broken)
        assert meshctl(broken, "init").returncode == 0
        os.chmod(broken.secret_key_path("storage"), 0o644)  # storage refuses a readable secret key
        up = subprocess.run([*make, "up", f"CURVEMESH_HOME={broken.root}"], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, timeout=150, check=False)
        assert up.returncode != 0
        assert "meshctl: the mesh is not healthy: storage: FATAL" in up.stderr
        assert "storage: FATAL" in up.stdout and "must be 0600" in up.stdout  # the tail of its log
        report = status(broken)
        assert report["healthy"] is False and row(report, "storage")["state"] == "FATAL"
        assert any("must be 0600" in line for line in row(report, "storage")["log_tail"])
        assert all(r["healthy"] for r in report["services"] if r["name"] != "storage")
        assert status(live)["healthy"] is True  # the other mesh, side by side, is untouched
        down = subprocess.run([*make, "down", f"CURVEMESH_HOME={broken.root}"], capture_output=True, text=True,
                              timeout=150, check=False)
        assert down.returncode == 0, down.stderr
        assert home_processes(broken) == []


def test_down_leaves_no_process_behind(live: MeshHome) -> None:
    report = status(live)
    pids = [report["supervisor"]["pid"], *(r["pid"] for r in report["services"])]
    down = meshctl(live, "down", "--yes")
    assert down.returncode == 0, down.stderr
    assert home_processes(live) == []
    assert not any(alive(pid) for pid in pids)
    assert not live.broker_socket.exists() and not (live.run / "supervisord.sock").exists()
    assert meshctl(live, "down", "--yes").returncode == 0  # harmless when already down
    assert wait_until(lambda: meshctl(live, "status").returncode == 1, 5, "status reports the mesh down")

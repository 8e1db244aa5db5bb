"""Detached mode across a real network boundary: the whole mesh (supervisord and every process)
runs in one network namespace, a device in another, joined only by a veth pair (tests/netns.py).

The operator drives the mesh from the host over its ipc sockets (pathname unix sockets cross
namespaces; tcp does not: the host cannot reach either namespace's addresses). The device pairs with
``meshctl pair join`` and works through ``python -m tests.device_agent``, both run inside the device
namespace, so every byte between device and mesh crosses the veth, where tcpdump records it.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from shared import MeshHome, certs

from .netns import Capture, NetnsPair, argv_in, require_root, run_in, tcp_stream
from .test_operations_e2e import MESHCTL, REPO, fast_config_text, mesh_home, meshctl

BROKER_PORT = 7421
PAIRING_PORT = 7420
PASSWORD = "planted-detached-Passw0rd-5521"


@dataclass
class Detached:
    ns: NetnsPair
    home: MeshHome
    anchors: Path
    work: Path

    def mesh_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CURVEMESH_CONFIG"}
        env["CURVEMESH_HOME"] = str(self.home.root)
        return env

    def up(self) -> None:
        """``meshctl up`` run inside the mesh namespace: supervisord and all it starts live there."""
        done = run_in(self.ns.mesh_ns, [*MESHCTL, "up", "--timeout", "90"], timeout=150, env=self.mesh_env(),
                      check=False)
        assert done.returncode == 0, f"meshctl up failed:\n{done.stdout}\n{done.stderr}"

    def down(self) -> None:
        done = meshctl(self.home, "down", "--yes", "--timeout", "30", timeout=120)
        assert done.returncode == 0, done.stderr

    def operator(self, *args: str) -> Any:
        done = meshctl(self.home, *args, "--json", timeout=60)
        assert done.returncode == 0, f"meshctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return json.loads(done.stdout)

    def pair(self, label: str) -> tuple[Path, dict[str, Any]]:
        """Pair a device from the device namespace into a fresh device directory."""
        started = self.operator("pair", "start", "--name", label, "--no-wait")
        directory = self.work / label
        joined = run_in(self.ns.device_ns, [*MESHCTL, "pair", "join", started["code"], "--endpoint",
                                            started["endpoint"], "--device-dir", str(directory), "--json"],
                        timeout=60, env=device_env(), check=False)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        return directory, {**started, **json.loads(joined.stdout)}


def device_env() -> dict[str, str]:
    """A device has no mesh home: nothing of the mesh's environment goes with it."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CURVEMESH")}


class Lines:
    """A child's stdout, line by line, each wait with a deadline. A thread reads it into a queue:
    select() on the pipe would miss lines already taken into the reader's buffer."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put("")

    def next(self, timeout: float) -> str:
        """The next line ("" once the stream ended); AssertionError after ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None


class Agent:
    """``python -m tests.device_agent session DIR`` inside the device namespace, one JSON line each way."""

    def __init__(self, ns: str, directory: Path) -> None:
        self.proc = subprocess.Popen(argv_in(ns, [sys.executable, "-m", "tests.device_agent", "session",
                                                  str(directory)]),
                                     cwd=REPO, env=device_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)
        self.first = self.line(60)

    def line(self, timeout: float) -> dict[str, Any]:
        text = self.lines.next(timeout)
        assert text, f"the device agent ended (exit {self.proc.wait(10)})"
        value: dict[str, Any] = json.loads(text)
        return value

    def ask(self, command: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.line(timeout)

    def call(self, target: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.ask({"call": target, "body": body})
        assert "ok" in reply, reply
        return reply["ok"]

    def close(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="module")
def detached() -> Iterator[Detached]:
    require_root()
    work = Path(tempfile.mkdtemp(prefix="cmd"))
    anchors = work / "anchors"
    anchors.mkdir(mode=0o700)
    try:
        with NetnsPair() as ns, mesh_home() as home:
            text = fast_config_text()
            assert "tcp_endpoints = []" in text and 'anchor_dir = ""' in text and 'keystore = "auto"' in text
            text = text.replace("tcp_endpoints = []", f'tcp_endpoints = ["tcp://{ns.mesh_addr}:{BROKER_PORT}"]')
            text = text.replace('anchor_dir = ""', f'anchor_dir = "{anchors}"')
            # Every anchor in the anchor directory, none in a platform keyring: a disk image of the
            # home and that directory is then the whole machine, as the rollback test needs.
            text = text.replace('keystore = "auto"', 'keystore = "file"')
            home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (home.root / "mesh.toml").write_text(text)
            init = meshctl(home, "init")
            assert init.returncode == 0, init.stderr
            rig = Detached(ns, home, anchors, work)
            rig.up()
            secret = work / "alice.password"
            secret.write_text(PASSWORD + "\n")
            secret.chmod(0o600)
            rig.operator("users", "add", "alice", "--password-file", str(secret))
            yield rig
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_stranger_across_the_boundary_cannot_connect(detached: Detached) -> None:
    ns = detached.ns
    # The host itself has no route into the mesh's namespace: only the veth leads there.
    broker_key = detached.home.public_key_path("broker")
    tried = run_in(ns.device_ns, [sys.executable, "-m", "tests.device_agent", "stranger",
                                  f"tcp://{ns.mesh_addr}:{BROKER_PORT}", str(broker_key)], timeout=60, env=device_env())
    outcome = json.loads(tried.stdout)
    assert "connected" not in outcome and outcome["error"], outcome


def test_pairing_then_detached_login_reveals_nothing_on_the_wire(detached: Detached, tmp_path: Path) -> None:
    ns = detached.ns
    pcap = tmp_path / "veth.pcap"
    with Capture(ns.mesh_ns, ns.mesh_if, pcap):
        directory, paired = detached.pair("phone")
        name = paired["name"]
        agent = Agent(ns.device_ns, directory)
        try:
            assert agent.first["ready"] and agent.first["name"] == name
            agent.call("authn.login.password", {"username": "alice", "password": PASSWORD})
            agent.call("authz.consent.grant", {"access_token": "$token", "grantee": f"device:{name}",
                                               "categories": ["notes"], "actions": ["read", "write"],
                                               "purpose": "sync"})
            note = {"category": "notes", "token": "$token", "purpose": "sync", "key": "b:groceries"}
            agent.call("storage.kv.put", {**note, "value": "b:planted-note-oat-milk-4417"})
            got = agent.call("storage.kv.get", note)
            assert "planted-note-oat-milk-4417" in json.dumps(got)
            status = detached.operator("status")
            assert [(d["name"], d["mode"], d["address"]) for d in status["devices"]] == \
                [(name, "detached", ns.device_addr)]
            listed = {d["identity"]: d for d in detached.operator("devices", "list")}
            assert (listed[name]["mode"], listed[name]["address"]) == ("detached", ns.device_addr)
        finally:
            agent.close()
    keypair = certs.load_keypair(directory / "device.key_secret")
    pairing_wire = tcp_stream(pcap, PAIRING_PORT, "both")
    assert pairing_wire, "the capture saw no pairing traffic"
    code = paired["code"]
    for secret in (code.encode(), code.replace("-", "").encode(), keypair.certificate.public_key,
                   keypair.secret_key, certs.load_certificate(detached.home.public_key_path("broker")).public_key,
                   name.encode()):
        assert secret not in pairing_wire
    mesh_wire = tcp_stream(pcap, BROKER_PORT, "both")
    assert mesh_wire, "the capture saw no detached traffic"
    for secret in (PASSWORD.encode(), b"planted-note-oat-milk-4417", b"groceries", b"alice"):
        assert secret not in mesh_wire


def test_a_revoked_device_is_cut_off_across_the_boundary(detached: Detached) -> None:
    ns = detached.ns
    directory, paired = detached.pair("tablet")
    other_dir, _ = detached.pair("watch")
    agent, other = Agent(ns.device_ns, directory), Agent(ns.device_ns, other_dir)
    try:
        assert agent.first["ready"] and other.first["ready"]
        agent.call("authn.login.password", {"username": "alice", "password": PASSWORD})
        assert agent.call("authn.verify", {"access_token": "$token", "audience": "curvemesh"})["sub"]
        # The token is bound to the tablet's key: carried to another paired device, it is refused there.
        token_file = detached.work / "tablet.token"
        agent.ask({"token_out": str(token_file)})
        other.ask({"token_in": str(token_file)})
        refused = other.ask({"call": "authn.verify", "body": {"access_token": "$token", "audience": "curvemesh"}})
        assert refused["error"] == "UNAUTHENTICATED"
        done = detached.operator("devices", "revoke", paired["name"], "--yes")
        assert (done["connections_cut"], done["sessions_ended"]) == (1, 1)
        # The tablet's live connection is refused on its very next message; the watch carries on.
        cut = agent.ask({"call": "authn.verify", "body": {"access_token": "$token", "audience": "curvemesh"}})
        assert cut["error"] == "UNAUTHENTICATED"
        assert "ok" in other.ask({"call": "audit.checkpoint", "body": {"since": 0}})
    finally:
        agent.close()
        other.close()
    again = Agent(ns.device_ns, directory)
    try:
        assert again.first.get("error"), again.first  # and it cannot connect again
    finally:
        again.close()
    listed = {d["identity"]: d["trust"] for d in detached.operator("devices", "list", "--all")}
    assert listed[paired["name"]] == "revoked"


def test_a_rolled_back_machine_is_detected_by_a_paired_device(detached: Detached) -> None:
    ns = detached.ns
    directory, _ = detached.pair("witness")
    first = Agent(ns.device_ns, directory)
    seen_first = first.first["witnessed"]
    first.close()
    # The whole machine as a disk image: the home and every anchor, taken with the mesh stopped.
    detached.down()
    image = detached.work / "image"
    shutil.copytree(detached.home.root, image / "home", symlinks=True)
    shutil.copytree(detached.anchors, image / "anchors", symlinks=True)
    detached.up()
    for _ in range(3):  # the log grows after the image was taken, and the device sees it grow
        detached.operator("audit", "verify")
    later = Agent(ns.device_ns, directory)
    seen_later = later.first["witnessed"]
    later.close()
    assert seen_later > seen_first
    # The image is restored over everything, and the mesh started again from it.
    detached.down()
    shutil.rmtree(detached.home.root)
    shutil.rmtree(detached.anchors)
    shutil.copytree(image / "home", detached.home.root, symlinks=True)
    shutil.copytree(image / "anchors", detached.anchors, symlinks=True)
    detached.up()
    verdict = Agent(ns.device_ns, directory)
    try:
        assert verdict.first["error"] == "WITNESS_MISMATCH", verdict.first
        assert verdict.first["problem"] in ("shrunk", "forked")
    finally:
        assert verdict.close() == 3
    # The device reported before it gave up, and audit answers a report once its alert is raised.
    alerts = detached.operator("alerts")
    assert any(a["rule"] == "witness_mismatch" for a in alerts), alerts


def test_pair_start_waits_for_the_device_and_says_who_joined(detached: Detached) -> None:
    """The operator's command as a person runs it: the code first, then a wait that ends when the
    device joins (no terminal here, so no QR code and no progress line)."""
    ns = detached.ns
    waiting = subprocess.Popen([*MESHCTL, "pair", "start", "--name", "Laptop", "--ttl", "60"], cwd=REPO,
                               env=detached.mesh_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert waiting.stdout is not None
        lines = Lines(waiting.stdout)
        shown: dict[str, str] = {}
        while "endpoint" not in shown:
            line = lines.next(30)
            assert line, "meshctl pair start ended before it showed the code"
            key, _, value = line.partition(":")
            if key in ("pairing code", "endpoint"):
                shown[key.split()[-1]] = value.strip()
        joined = run_in(ns.device_ns, [*MESHCTL, "pair", "join", shown["code"], "--endpoint", shown["endpoint"],
                                       "--device-dir", str(detached.work / "laptop")], timeout=60, env=device_env())
        assert "paired as laptop" in joined.stdout
        rest = []
        while line := lines.next(60):
            rest.append(line)
        assert waiting.wait(30) == 0
        assert "paired: laptop joined the mesh\n" in rest
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)

"""The pairing figures (issue 16): pairing wall time end to end, and a person's read from a detached
device across a real network boundary beside the same read over ipc, in the same run.

Setup (root only, like the tests it borrows its rig from: tests/netns.py): two network namespaces
joined by a veth pair; a fresh home initialised by ``meshctl init`` with the repository's mesh.toml
(a tiny setup-only master Argon2 profile, the file keystore and its anchors in a temporary
directory, ``[broker] tcp_endpoints`` on the mesh side of the veth); the whole mesh under supervisord
in the mesh namespace (``meshctl up`` run there); one account (``alice``, the repository's
``authentication`` Argon2id profile).

* Pairing wall time: from the moment the operator runs ``meshctl pair start --no-wait`` (on the
  host, over the home's ipc socket) until ``meshctl pair join CODE --endpoint ...`` has exited 0 in
  the device namespace, the device paired (its keypair made, SPAKE2 over the veth, enrolled,
  welcomed, its profile and witness written). Both commands' process start-up is inside the clock;
  a person's typing is not. Target: p50 < 2 s. Beside it, informational: the join command alone.
* Detached read: ``storage.kv.get`` of alice's ``notes`` value with her token, from the first paired
  device (bench/device_reader.py, one process per block: it signs in outside the clock, warms up,
  then times each call alone) in the device namespace, over tcp across the veth; beside the same
  read by the same device key over the home's ipc socket from the host, in alternating blocks.
  Informational: the ratio says what the network boundary and tcp cost against ipc.

Everything is stopped and removed on the way out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shared import MeshHome
from tests.netns import NetnsPair, run_in
from tests.test_operations_e2e import MESHCTL, fast_config_text

from .authn_figures import ratio_of, rows
from .harness import REPO, BenchError
from .measure import percentile

GROUP: Final = "pairing"
PAIR_TARGET_S: Final = 2.0
BROKER_PORT: Final = 7421
INFO: Final = {"group": GROUP, "target": None, "met": None, "informational": True}


@dataclass(frozen=True)
class PairingOptions:
    pairings: int = 7
    rounds: int = 4
    reads: int = 500

    @classmethod
    def quick(cls) -> PairingOptions:
        return cls(pairings=3, rounds=2, reads=100)

    def params(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _env(home: MeshHome | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURVEMESH")}
    if home is not None:
        env["CURVEMESH_HOME"] = str(home.root)
    return env


def _run(argv: list[str], env: dict[str, str], ns: str | None = None, timeout: float = 150) -> str:
    if ns is not None:
        done = run_in(ns, argv, timeout=timeout, env=env, check=False)
    else:
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])}... failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    return done.stdout


def _configure(home: MeshHome, ns: NetnsPair, anchors: Path) -> None:
    text = fast_config_text()
    text = text.replace("tcp_endpoints = []", f'tcp_endpoints = ["tcp://{ns.mesh_addr}:{BROKER_PORT}"]')
    text = text.replace('anchor_dir = ""', f'anchor_dir = "{anchors}"').replace('keystore = "auto"',
                                                                               'keystore = "file"')
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home.root / "mesh.toml").write_text(text)


def _pair(home: MeshHome, ns: NetnsPair, directory: Path) -> tuple[float, float]:
    """One pairing: (end to end, the join command alone) in seconds."""
    start = time.perf_counter()
    started = json.loads(_run([*MESHCTL, "pair", "start", "--name", directory.name, "--no-wait", "--json"],
                              _env(home)))
    join_start = time.perf_counter()
    _run([*MESHCTL, "pair", "join", started["code"], "--endpoint", started["endpoint"], "--device-dir",
          str(directory)], _env(None), ns.device_ns)
    end = time.perf_counter()
    return end - start, end - join_start


def _reads(home: MeshHome, ns: NetnsPair, directory: Path, password: Path, count: int, ipc: bool) -> list[float]:
    argv = [sys.executable, "-m", "bench.device_reader", str(directory), str(password), str(count)]
    if ipc:
        out = _run([*argv, home.broker_endpoint], _env(None))
    else:
        out = _run(argv, _env(None), ns.device_ns)
    result = json.loads(out.strip().splitlines()[-1])
    if "samples" not in result:
        raise BenchError(f"the device reader failed: {result}")
    samples: list[float] = result["samples"]
    return samples


def measure(opts: PairingOptions) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("the pairing bench creates network namespaces: run it as root")
    work = Path(tempfile.mkdtemp(prefix="cmp"))
    home = MeshHome(work / "h")
    anchors = work / "anchors"
    anchors.mkdir(mode=0o700)
    password = work / "alice.password"
    password.write_text("bench-alice-Passphrase-8812\n")
    password.chmod(0o600)
    try:
        with NetnsPair() as ns:
            _configure(home, ns, anchors)
            _run([*MESHCTL, "init"], _env(home))
            try:
                _run([*MESHCTL, "up", "--timeout", "90"], _env(home), ns.mesh_ns)
                _run([*MESHCTL, "users", "add", "alice", "--password-file", str(password)], _env(home))
                pairing = [_pair(home, ns, work / f"device{i}") for i in range(opts.pairings)]
                reader = work / "device0"
                _run([sys.executable, "-m", "bench.device_reader", "setup", str(reader), str(password)], _env(None),
                     ns.device_ns)
                samples: dict[str, list[float]] = {"detached": [], "ipc": []}
                round_p50: dict[str, list[float]] = {"detached": [], "ipc": []}
                for r in range(opts.rounds):
                    for mode in (("detached", "ipc") if r % 2 == 0 else ("ipc", "detached")):
                        block = _reads(home, ns, reader, password, opts.reads, mode == "ipc")
                        samples[mode] += block
                        round_p50[mode].append(percentile(block, 0.5) * 1e6)
            finally:
                subprocess.run([*MESHCTL, "down", "--yes", "--timeout", "30"], cwd=REPO, env=_env(home),
                               capture_output=True, timeout=120, check=False)
        return {"options": opts.params(), "pairing": pairing, "reads": samples, "round_p50_us": round_p50,
                "addresses": {"mesh": ns.mesh_addr, "device": ns.device_addr}}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Figures of the pairing section: value, baseline, ratio, target and met (None: informational)."""
    total = [t for t, _ in raw["pairing"]]
    join = [j for _, j in raw["pairing"]]
    p50, worst = percentile(total, 0.5), max(total)
    reads, rounds = raw["reads"], raw["round_p50_us"]
    detached, ipc = percentile(reads["detached"], 0.5) * 1e6, percentile(reads["ipc"], 0.5) * 1e6
    where = f"mesh {raw['addresses']['mesh']} <-veth-> device {raw['addresses']['device']}"
    return {
        "pairing_wall_p50_s": {
            "label": "pairing wall time p50", "unit": "s", "value": round(p50, 3), "group": GROUP,
            "baseline": None, "ratio": None, "target": {"bound": "max_abs", "value": PAIR_TARGET_S},
            "met": p50 < PAIR_TARGET_S, "informational": False, "samples_s": [round(t, 3) for t in total],
            "detail": f"{len(total)} pairings, max {worst:.2f} s: meshctl pair start --no-wait, then meshctl pair "
                      f"join in the device namespace ({where}); both CLIs' start-up included"},
        "pairing_join_p50_s": {
            "label": "pair join command alone p50", "unit": "s", "value": round(percentile(join, 0.5), 3), **INFO,
            "baseline": None, "ratio": None, "detail": "keypair, SPAKE2 over the veth, enrolment, welcome, files"},
        "pairing_read_detached_p50_us": {
            "label": "detached read p50 (tcp, veth)", "unit": "us", "value": round(detached, 1), **INFO,
            "baseline": {"name": "same read, ipc", "value": round(ipc, 1)}, "ratio": ratio_of(detached, ipc),
            "round_p50_us": rounds,
            "detail": f"{len(reads['detached']):,} storage.kv.get with alice's token each way, the same device key; "
                      f"p99 {percentile(reads['detached'], 0.99) * 1e6:,.0f} us vs "
                      f"{percentile(reads['ipc'], 0.99) * 1e6:,.0f} us"},
    }


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The pairing section of the bench's table."""
    return rows(figs, GROUP, [
        "pairing: operator's pair start to the device's pair join done, across two network namespaces; a",
        "person's read (kv.get + token) from the paired device over tcp across the veth beside the same read",
        "by the same key over the home's ipc socket."])

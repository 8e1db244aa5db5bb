"""The plugins figures (issue 17): a plugin's call round trip through plugin-host beside the direct
mesh call its request stands for, in the same run, and a sandboxed plugin's cold start.

The mesh is tests/plugin_rig.py's, in process: the broker in a thread of the bench process;
keyvault, audit, authn, authz, storage and plugin-host as ServiceRunners on its event loop (real
CURVE keys, real SQLCipher, the real audit log); no supervisord, and no process but the plugins'
children. The bench adds the file keystore with its anchors in a temporary directory, rate limits
that never refuse it, and ``[plugins] messages_per_s`` raised (below). plugin-host probes the
sandbox as it starts: every layer (rlimits, no_new_privs, seccomp, Landlock with its net and scope
rules, netns, tmpfs) must apply on this machine, and each package requires them all, so a kernel or
a user that cannot apply one stops the section with a BenchError naming it, rather than a weaker
sandbox measured silently (as root on this machine every layer applies). Two packages of
tests/host_plugins/notes (``notes``, ``notes2``), signed with the rig's publisher key, are installed
and enabled; each stores a 100-byte value in its own data through its ``remember`` function, and the
caller, ``frontend`` (a service), stores the same value in its own namespace.

* Round trip: ``plugin-host.call {plugin: notes, function: recall, args: {key}}``, whose function does
  ``cp.kv.get`` of the plugin's own value: frontend -> broker -> plugin-host -> plugin child ->
  plugin-host -> broker -> storage and back; beside the direct mesh call the plugin's request stands
  for, the same client's ``storage.kv.get`` of its own value (frontend -> broker -> storage and
  back). Sequential p50/p99 in alternating blocks within each round, every reply checked outside the
  clock, and the CPU per call of the bench process (client, broker, services) and of the plugin's
  child. Informational: the plugin path holds two mesh round trips where the direct one holds one,
  so 2x is its floor; what is above 2x is plugin-host's own share (the two hops over the child's
  socketpair, its frames, the grant check, the plugin's Python).
* Throughput: ``messages`` calls with ``window`` in flight from the one client, calls/s of the
  direct get, of the plugin calls, and of the plugin calls spread over both plugins, order rotating.
  A plugin's child handles one call at a time (plugin-host queues the rest), so the throughput
  through one plugin is bounded by its latency; two plugins serve in parallel. Here, though, the
  client, the broker and every service share the bench process's interpreter: its CPU per call and
  the cores it kept busy are given beside, and the nearer one core, the more that interpreter, not
  the child, is the bound. So what a second plugin gains here understates what separate processes
  (the real mesh) would allow; that is not measured here.
* Cold start: ``notes`` stopped, then started as plugin-host starts it (``Runner.start``: its
  installed package verified again, signature and content hash, then its child spawned with its
  quotas and a fresh scratch directory, every layer applied, until ``ready``); target p50 under
  300 ms. After each start, outside the clock: every layer checked applied and one call answered.
  Beside it, informational, in alternating turns: ``python -I -B -c pass`` (the interpreter alone,
  started as the child is) and the package verification alone.

``[plugins] messages_per_s`` is the shipped one (10,000 frames a second; a plugin making one request
per call sends two frames a call): the bench measures what a deployment gets, flood limit included.
(The first shipped value, 500, killed a plugin here at ordinary sequential load; the bench found it.)
Everything is stopped and removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from services.plugin_host.runner import Runner
from services.plugin_host.sandbox import LAYERS
from shared import MeshClient, PluginsConfig
from shared.plugins import verify_package
from tests.plugin_rig import PluginRig, plugin_rig

from .authn import CpuMeter
from .harness import BenchError
from .measure import percentile
from .meshcalls import call, timed
from .plugins_figures import COLD_TARGET_MS, GROUP, figures, table

PLUGINS: Final = ("notes", "notes2")
CALLER: Final = "frontend"
CATEGORY: Final = "summaries"
KEY: Final = "bench/plugins"
VALUE: Final = "v" * 100
#: [plugins] messages_per_s as shipped (frames a child may send a second): the bench runs under it.
MESSAGES_PER_S: Final = PluginsConfig().messages_per_s
#: A child's CPU budget for its whole life (manifest quota; the default 30 s is not for thousands of calls).
CPU_QUOTA_S: Final = 600
CALLS: Final = ("plugin", "direct")
PIPELINED: Final = ("direct", "plugin", "plugin2")
__all__ = ["CALLER", "COLD_TARGET_MS", "GROUP", "MESSAGES_PER_S", "PLUGINS", "PluginsOptions", "figures", "measure",
           "table"]


@dataclass(frozen=True)
class PluginsOptions:
    """The sizes of the plugins section (``--plugins-*``, ``--plugin-starts``)."""

    rounds: int = 5
    calls: int = 1000      # sequential calls of each kind per block
    messages: int = 2000   # pipelined calls of each kind per round
    window: int = 64       # calls in flight for throughput
    warmup: int = 100      # sequential calls of each kind before the rounds
    starts: int = 15       # cold starts (and as many interpreter starts and verifications)

    @classmethod
    def quick(cls) -> PluginsOptions:
        return cls(rounds=2, calls=150, messages=500, window=64, warmup=20, starts=5)

    def params(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _config(anchors: Path) -> str:
    return f"""
[keyvault]
keystore = "file"
anchor_dir = "{anchors}"

[limits.default]
rate = 10000000.0
burst = 10000000
"""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The in-process services log to this process: errors only while the section runs (what goes
    wrong in the measured path fails a call, and the call raises a BenchError)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        yield
    finally:
        structlog.configure(**saved)


def _recalled(reply: Any) -> bool:
    return reply == {"ok": True, "value": VALUE}


def _got(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("found") is True and reply.get("value") == VALUE.encode()


def _requests(kind: str) -> tuple[list[tuple[str, Any]], Callable[[Any], bool]]:
    """The call(s) of ``kind`` (taken in turn) and their reply check."""
    if kind == "direct":
        return [("storage.kv.get", {"category": CATEGORY, "key": KEY.encode()})], _got
    names = PLUGINS if kind == "plugin2" else PLUGINS[:1]
    return [("plugin-host.call", {"plugin": name, "function": "recall", "args": {"key": KEY}})
            for name in names], _recalled


async def _sequential(client: MeshClient, kind: str, count: int) -> list[float]:
    """``count`` sequential calls; each round trip in seconds (the reply checked after the clock)."""
    [(target, body)], check = _requests(kind)
    return await timed(client, target, body, count, check, kind)


async def _pipelined(client: MeshClient, kind: str, count: int, window: int) -> float:
    """``count`` calls with ``window`` in flight (the plugins' taken in turn); calls per second."""
    requests, check = _requests(kind)
    issued = 0

    async def lane() -> None:
        nonlocal issued
        while issued < count:
            target, body = requests[issued % len(requests)]
            issued += 1
            reply = await call(client, target, body)
            if not check(reply):
                raise BenchError(f"{target} ({kind}): unexpected reply {str(reply)[:200]}")
    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(window, count))))
    return count / (time.perf_counter() - start)


def _running(runner: Runner, pid: int | None = None) -> int:
    """The pid of the runner's child, checked running with every layer applied (and still ``pid``)."""
    child = runner.child
    if runner.state != "running" or child is None:
        raise BenchError(f"plugin {runner.name} is {runner.state} ({runner.reason or runner.last_exit})")
    weaker = sorted(layer for layer in LAYERS if not child.layers.get(layer))
    if weaker:
        raise BenchError(f"plugin {runner.name} runs without the sandbox layers {', '.join(weaker)}")
    if pid is not None and child.pid != pid:
        raise BenchError(f"plugin {runner.name} was restarted during the run ({runner.last_exit})")
    return child.pid


async def _setup(rig: PluginRig) -> dict[str, int]:
    """Check every layer applies, install and enable both plugins, store the values; their pids."""
    missing = {layer: why for layer, why in rig.host.layers.items() if why is not None}
    if missing:
        raise BenchError("plugins: this machine cannot apply every sandbox layer, and the section measures "
                         "plugins in the full sandbox only (as root on Linux with Landlock ABI 6 or later): "
                         + "; ".join(f"{layer}: {why}" for layer, why in missing.items()))
    pids = {}
    for name in PLUGINS:
        package = rig.package(name, requires=list(LAYERS), quotas={"cpu_s": CPU_QUOTA_S})
        installed = await rig.install(package)
        if installed["state"] != "running":
            raise BenchError(f"plugin {name} did not start: {installed.get('disabled_reason') or installed}")
        pids[name] = _running(rig.host.runners[name])
        stored = await call(rig[CALLER], "plugin-host.call",
                            {"plugin": name, "function": "remember", "args": {"key": KEY, "value": VALUE}})
        if stored != {"ok": True, "value": True}:
            raise BenchError(f"plugin {name}: remember answered {stored}")
    await call(rig[CALLER], "storage.kv.put", {"category": CATEGORY, "key": KEY.encode(), "value": VALUE.encode()})
    return pids


async def _calls(rig: PluginRig, opts: PluginsOptions, pids: dict[str, int]) -> dict[str, Any]:
    """Warm up, then the rounds: sequential blocks alternating, then the pipelined runs rotating."""
    client = rig[CALLER]
    for kind in CALLS:
        await _sequential(client, kind, opts.warmup)
    for kind in PIPELINED:
        await _pipelined(client, kind, min(opts.messages, 4 * opts.window), opts.window)
    samples: dict[str, list[float]] = {k: [] for k in CALLS}
    p50s: dict[str, list[float]] = {k: [] for k in CALLS}
    tput: dict[str, list[float]] = {k: [] for k in PIPELINED}
    meters = {"bench": CpuMeter(os.getpid()), "child": CpuMeter(pids[PLUGINS[0]])}
    for r in range(opts.rounds):
        for kind in CALLS[r % 2:] + CALLS[:r % 2]:
            work = _sequential(client, kind, opts.calls)
            for meter in meters.values():
                work = meter.time(kind, work)
            got = await work
            samples[kind] += got
            p50s[kind].append(round(percentile(got, 0.5) * 1e6, 1))
        for kind in PIPELINED[r % 3:] + PIPELINED[:r % 3]:
            tput[kind].append(await meters["bench"].time(f"pipelined_{kind}",
                                                         _pipelined(client, kind, opts.messages, opts.window)))
        for name in PLUGINS:
            _running(rig.host.runners[name], pids[name])
        print(f"plugins: round {r + 1}/{opts.rounds}: p50 us plugin={p50s['plugin'][-1]:,.0f} "
              f"direct={p50s['direct'][-1]:,.0f} | calls/s " + " ".join(f"{k}={tput[k][-1]:,.0f}" for k in PIPELINED),
              flush=True)
    calls, messages = opts.calls * opts.rounds, opts.messages * opts.rounds
    return {"samples": samples, "round_p50_us": p50s, "throughput": tput, "calls": calls,
            "cpu_us_per_call": {k: {name: m.per_call(k, calls, 1e6) for name, m in meters.items()} for k in CALLS},
            "pipelined_cpu_us_per_call": {k: meters["bench"].per_call(f"pipelined_{k}", messages, 1e6)
                                          for k in PIPELINED}}


def _interpreter() -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-I", "-B", "-c", "pass"], capture_output=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"python -I -B -c pass exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed


async def _cold_starts(rig: PluginRig, opts: PluginsOptions) -> dict[str, list[float]]:
    """``notes`` stopped and started ``opts.starts`` times; beside each start, the interpreter alone and
    the package verification alone, order alternating. Seconds each."""
    runner = rig.host.runners[PLUGINS[0]]
    directory, publishers = Path(runner.installed.directory), rig.host.settings.publishers
    times: dict[str, list[float]] = {"start": [], "python": [], "verify": []}
    for n in range(opts.starts):
        await runner.stop()
        for what in (("start", "python", "verify") if n % 2 == 0 else ("python", "verify", "start")):
            if what == "start":
                begun = time.perf_counter()
                await runner.start()
                times["start"].append(time.perf_counter() - begun)
                _running(runner)
                answer = await call(rig[CALLER], "plugin-host.call",
                                    {"plugin": PLUGINS[0], "function": "recall", "args": {"key": KEY}})
                if not _recalled(answer):
                    raise BenchError(f"plugin {PLUGINS[0]} answered {answer} after a cold start")
            elif what == "python":
                times["python"].append(_interpreter())
            else:
                begun = time.perf_counter()
                verify_package(directory, publishers)
                times["verify"].append(time.perf_counter() - begun)
    print(f"plugins: {opts.starts} cold starts, p50 {percentile(times['start'], 0.5) * 1e3:,.0f} ms",
          flush=True)
    return times


async def _measure(work: Path, opts: PluginsOptions) -> dict[str, Any]:
    anchors = work / "anchors"
    anchors.mkdir(mode=0o700)
    config = ""
    scratch: Path | None = None
    try:
        async with plugin_rig(work / "rig", _config(anchors), plugins_config=config) as rig:
            scratch = rig.host.shelf.scratch_root
            pids = await _setup(rig)
            calls = await _calls(rig, opts, pids)
            cold = await _cold_starts(rig, opts)
            layers = sorted(rig.host.layers)
    except AssertionError as exc:  # the rig's waits: a service that never became ready
        raise BenchError(f"plugins: the in-process mesh did not come up: {exc}") from None
    finally:
        if scratch is not None:  # plugin-host's scratch tree in /dev/shm, emptied as its plugins stopped
            with contextlib.suppress(OSError):
                scratch.rmdir()
    return {"options": opts.params(), "calls": calls, "cold": cold, "layers": layers, "caller": CALLER,
            "value_bytes": len(VALUE), "messages_per_s": MESSAGES_PER_S, "cpu_quota_s": CPU_QUOTA_S}


def measure(opts: PluginsOptions) -> dict[str, Any]:
    """Run the rig in a fresh temporary directory and measure; the raw results :func:`figures` takes."""
    work = Path(tempfile.mkdtemp(prefix="cmpl"))  # short: the rig's ipc socket paths live under it
    try:
        with _quiet():
            return asyncio.run(_measure(work, opts))
    finally:
        shutil.rmtree(work, ignore_errors=True)

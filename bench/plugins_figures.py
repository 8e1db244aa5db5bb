"""The plugins bench's figures and their table (bench/plugins.py measures them)."""

from __future__ import annotations

import statistics
from typing import Any, Final

from .authn_figures import ratio_of, rows
from .measure import percentile

GROUP: Final = "plugins"
#: Target (issue 17): a plugin's cold start p50 under this.
COLD_TARGET_MS: Final = 300.0
INFO: Final = {"group": GROUP, "target": None, "met": None, "informational": True}


def _us(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1e6


def _ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1e3


def _cpu_text(cpu: dict[str, dict[str, float | None]]) -> str:
    if any(v is None for kind in cpu.values() for v in kind.values()):
        return "CPU n/a"
    return (f"CPU us/call: bench process (client, broker, services) {cpu['plugin']['bench']:,.0f} vs "
            f"{cpu['direct']['bench']:,.0f}, the plugin's child {cpu['plugin']['child']:,.0f}")


def _round_trips(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    calls = raw["calls"]
    samples, rounds = calls["samples"], calls["round_p50_us"]
    out: dict[str, dict[str, Any]] = {}
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        plugin, direct = _us(samples["plugin"], v), _us(samples["direct"], v)
        fig: dict[str, Any] = {"label": f"plugin call round trip {q}", "unit": "us", "value": round(plugin, 1),
                               **INFO, "baseline": {"name": "storage.kv.get", "value": round(direct, 1)},
                               "ratio": ratio_of(plugin, direct), "detail": ""}
        if q == "p50":
            paired = round(statistics.median(a / b for a, b in zip(rounds["plugin"], rounds["direct"], strict=True)), 3)
            fig.update(paired_ratio=paired, round_p50_us=rounds, cpu_us_per_call=calls["cpu_us_per_call"],
                       beyond_two_direct_us=round(plugin - 2 * direct, 1),
                       detail=f"{calls['calls']:,} calls each; paired {paired:.2f}x; {plugin - 2 * direct:,.0f} us "
                              f"beyond two direct trips; {_cpu_text(calls['cpu_us_per_call'])}")
        out[f"plugins_call_{q}_us"] = fig
    return out


def _busy(cpu: float | None, calls_s: float) -> str:
    """The bench process's CPU per pipelined call, and how many cores that kept busy (its client,
    broker and services share one interpreter, libzmq's I/O threads aside: near one core, it is
    the bound)."""
    return "bench process CPU n/a" if cpu is None else \
        f"bench process CPU {cpu:,.0f} us/call, {cpu * calls_s / 1e6:.2f} cores busy"


def _throughput(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    opts, tput, cpu = raw["options"], raw["calls"]["throughput"], raw["calls"]["pipelined_cpu_us_per_call"]
    med = {k: statistics.median(v) for k, v in tput.items()}
    runs = f"{opts['messages']:,} calls per round, {opts['window']} in flight on one client"
    return {
        "plugins_calls_s": {
            "label": "plugin calls pipelined, 1 plugin", "unit": "call/s", "value": round(med["plugin"], 1), **INFO,
            "baseline": {"name": "storage.kv.get", "value": round(med["direct"], 1)},
            "ratio": ratio_of(med["plugin"], med["direct"]),
            "rounds": {k: [round(x, 1) for x in v] for k, v in tput.items()},
            "pipelined_cpu_us_per_call": cpu,
            "detail": f"{runs}; its child serves one call at a time; {_busy(cpu['plugin'], med['plugin'])}; "
                      f"direct: {_busy(cpu['direct'], med['direct'])}; under the shipped messages_per_s "
                      f"({raw['messages_per_s']:,} frames a second)"},
        "plugins_calls_2_s": {
            "label": "plugin calls pipelined, 2 plugins", "unit": "call/s", "value": round(med["plugin2"], 1),
            **INFO, "baseline": {"name": "1 plugin", "value": round(med["plugin"], 1)},
            "ratio": ratio_of(med["plugin2"], med["plugin"]),
            "detail": f"{runs}, taken in turn by notes and notes2; {ratio_of(med['plugin2'], med['direct']):.2f}x "
                      f"the direct get; {_busy(cpu['plugin2'], med['plugin2'])}"},
    }


def _cold(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cold = raw["cold"]
    start, python, verify = cold["start"], cold["python"], cold["verify"]
    p50, interp = _ms(start, 0.5), _ms(python, 0.5)
    layers = len(raw["layers"])
    return {
        "plugins_cold_start_p50_ms": {
            "label": "plugin cold start p50", "unit": "ms", "value": round(p50, 1), "group": GROUP,
            "baseline": {"name": "interpreter", "value": round(interp, 1)}, "ratio": ratio_of(p50, interp),
            "target": {"bound": "max_abs", "value": COLD_TARGET_MS}, "met": p50 < COLD_TARGET_MS,
            "informational": False, "samples_ms": [round(t * 1e3, 1) for t in start],
            "detail": f"{len(start)} starts (Runner.start), max {max(start) * 1e3:,.0f} ms: package verified again, "
                      f"child spawned in the sandbox (all {layers} layers) until ready",
            "note": "plugin-host's start of an installed plugin: verify_package, then Child.start with the "
                    "plugin's quotas and a fresh scratch; every layer checked applied and a call answered "
                    "after each start, outside the clock"},
        "plugins_cold_start_p99_ms": {
            "label": "plugin cold start p99", "unit": "ms", "value": round(_ms(start, 0.99), 1), **INFO,
            "baseline": None, "ratio": None, "detail": ""},
        "plugins_interpreter_p50_ms": {
            "label": "python -I -B -c pass p50", "unit": "ms", "value": round(interp, 1), **INFO,
            "baseline": None, "ratio": None,
            "detail": f"the interpreter alone, started as the child is, {len(python)} runs in alternating turns"},
        "plugins_verify_p50_ms": {
            "label": "package verification p50", "unit": "ms", "value": round(_ms(verify, 0.5), 2), **INFO,
            "baseline": None, "ratio": None,
            "detail": "shared.plugins.verify_package of the installed copy (signature and content hash), in "
                      "the bench process; part of every start"},
    }


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Figures of the plugins section: value, baseline, ratio, target and met (None: informational)."""
    out = _round_trips(raw)
    out.update(_throughput(raw))
    out.update(_cold(raw))
    for fig in out.values():
        fig.setdefault("note", f"in-process mesh (tests/plugin_rig.py) as {raw['caller']}: plugin-host.call to "
                               "the notes plugin's recall (its cp.kv.get of its own value) beside the same "
                               "client's storage.kv.get of its own value, in the same rounds; 2x is the floor "
                               "(two mesh round trips)")
    return out


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The plugins section of the bench's table."""
    return rows(figs, GROUP, [
        "plugins: plugin-host.call to a plugin whose function reads its own value from storage (two mesh round",
        "trips and the sandboxed child) beside the same client's direct storage.kv.get, in process (broker in a",
        "thread, every service on one event loop: absolute figures above the real mesh's, ratios the point);",
        "a plugin's cold start as plugin-host starts it (verify, spawn, every sandbox layer, ready)."])

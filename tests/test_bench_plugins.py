"""The plugins section of ``make bench`` (issue 17, bench/plugins.py): a tiny run over the in-process
mesh with plugin-host and real sandboxed children, the shape of its figures, the target they declare,
its refusal to measure a weaker sandbox, its command line.

The figures are timings in ``make bench``, never timed assertions here: what is asserted is that
every figure comes from real calls and real starts (every reply was checked as it came, and every
start checked running with every layer applied and answering), and that the target is judged as
declared.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from bench import plugins, report
from bench.__main__ import _args, _sections
from bench.harness import BenchError
from services.plugin_host import service
from services.plugin_host.sandbox import LAYERS

pytestmark = pytest.mark.timeout(300)

TINY = plugins.PluginsOptions(rounds=2, calls=8, messages=24, window=8, warmup=3, starts=2)
FIGURES = {"plugins_call_p50_us", "plugins_call_p99_us", "plugins_calls_s", "plugins_calls_2_s",
           "plugins_cold_start_p50_ms", "plugins_cold_start_p99_ms", "plugins_interpreter_p50_ms",
           "plugins_verify_p50_ms"}


def test_a_tiny_run_calls_through_sandboxed_plugins_and_starts_one() -> None:
    raw = plugins.measure(TINY)
    calls = raw["calls"]
    assert {k: len(s) for k, s in calls["samples"].items()} == {"plugin": 16, "direct": 16}
    assert {k: len(v) for k, v in calls["throughput"].items()} == {"direct": 2, "plugin": 2, "plugin2": 2}
    assert all(x > 0 for v in calls["throughput"].values() for x in v)
    assert {k: len(v) for k, v in raw["cold"].items()} == {"start": 2, "python": 2, "verify": 2}
    assert raw["layers"] == sorted(LAYERS)  # every layer was required and applied
    child = calls["cpu_us_per_call"]["plugin"]["child"]
    if child is not None:
        assert child > 0  # the plugin's own child worked for its calls
    figs = plugins.figures(raw)
    assert set(figs) == FIGURES
    assert all(f["group"] == plugins.GROUP and f["value"] > 0 for f in figs.values())
    cold = figs["plugins_cold_start_p50_ms"]
    assert cold["target"] == {"bound": "max_abs", "value": plugins.COLD_TARGET_MS}
    assert cold["met"] is (cold["value"] < plugins.COLD_TARGET_MS)
    assert cold["baseline"]["name"] == "interpreter"
    assert {k for k, f in figs.items() if f["met"] is not None} == {"plugins_cold_start_p50_ms"}
    for key in FIGURES - {"plugins_cold_start_p50_ms"}:
        assert figs[key]["informational"] and figs[key]["target"] is None, key
    assert figs["plugins_call_p50_us"]["baseline"]["name"] == "storage.kv.get"
    assert figs["plugins_calls_2_s"]["baseline"]["name"] == "1 plugin"
    json.dumps(figs)  # the results file can hold every figure
    text = report.table(figs)
    assert "plugin call round trip p50" in text and "plugin cold start p50" in text


def test_a_machine_without_every_layer_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    async def weaker(bpf: bytes) -> dict[str, str | None]:
        return {**dict.fromkeys(LAYERS), "landlock_scope": "Landlock ABI 5: no scopes"}
    monkeypatch.setattr(service, "probe_layers", weaker)
    with pytest.raises(BenchError, match=r"every sandbox layer.*landlock_scope: Landlock ABI 5: no scopes"):
        plugins.measure(TINY)


def _raw(start_s: float) -> dict[str, Any]:
    cpu = {"bench": 2000.0, "child": 150.0}
    return {"options": TINY.params(), "caller": "frontend", "layers": sorted(LAYERS), "messages_per_s": 10_000,
            "calls": {"samples": {"plugin": [0.002] * 5, "direct": [0.001] * 5}, "calls": 5,
                      "round_p50_us": {"plugin": [2000.0], "direct": [1000.0]},
                      "throughput": {"direct": [1500.0], "plugin": [500.0], "plugin2": [600.0]},
                      "cpu_us_per_call": {"plugin": cpu, "direct": {"bench": 1000.0, "child": 0.0}},
                      "pipelined_cpu_us_per_call": {"direct": 700.0, "plugin": 1900.0, "plugin2": None}},
            "cold": {"start": [start_s] * 3, "python": [0.03] * 3, "verify": [0.001] * 3}}


@pytest.mark.parametrize(("start", "met"), [(0.299, True), (0.301, False)])
def test_the_target_is_judged_on_the_cold_start_p50(start: float, met: bool) -> None:
    figs = plugins.figures(_raw(start))
    assert figs["plugins_cold_start_p50_ms"]["met"] is met
    assert figs["plugins_call_p50_us"]["ratio"] == 2.0
    assert figs["plugins_call_p50_us"]["beyond_two_direct_us"] == 0.0
    assert figs["plugins_calls_2_s"]["ratio"] == 1.2
    assert "n/a" in figs["plugins_calls_2_s"]["detail"]  # a CPU /proc could not tell is said, not invented


def test_the_command_line_runs_it_alone_and_scales_it() -> None:
    args = _args(["--only", "plugins", "--quick"])
    assert _sections(args) == ["plugins"] and args.plugins_options == plugins.PluginsOptions.quick()
    assert "plugins" in _sections(_args([])) and "plugins" not in _sections(_args(["--no-plugins"]))
    assert _args(["--plugin-starts", "4"]).plugins_options == dataclasses.replace(plugins.PluginsOptions(), starts=4)
    for bad in (["--only", "plugins", "--no-plugins"], ["--plugins-window", "0"]):
        with pytest.raises(SystemExit):
            _args(bad)

"""The broker bench's report: the runtime hop is a target (issue 18) and the growth curve's figures.

Built from made-up per-round values: no process is started and nothing is timed.
"""

from __future__ import annotations

import pytest

from bench import report
from bench.__main__ import _args


def _rounds(broker_p50: float, runtime_p50: float) -> report.Rounds:
    rounds: report.Rounds = {key: {s: [] for s in report.SETUPS} for key in report.FIGURES}
    for key in report.FIGURES:
        for setup, value in (("direct", 200.0), ("forwarder", 450.0), ("broker", broker_p50)):
            rounds[key][setup] = [value, value * 1.1, value * 0.9]
    rounds["runtime_rtt_p50_us"] = {"runtime": [runtime_p50, runtime_p50 * 1.1, runtime_p50 * 0.9]}
    rounds["runtime_rtt_p99_us"] = {"runtime": [runtime_p50 * 3] * 3}
    return rounds


@pytest.mark.parametrize(("runtime", "met"), [(640.0, True), (650.0, True), (660.0, False), (1072.0, False)])
def test_runtime_p50_is_a_target_against_the_raw_broker_hop(runtime: float, met: bool) -> None:
    figs = report.figures(_rounds(500.0, runtime))
    fig = figs["runtime_rtt_p50_us"]
    assert fig["target"] == {"vs_broker": {"baseline": "broker", "bound": "max", "ratio": 1.3}}
    assert fig["met"] is met
    assert fig["ratios"]["vs_broker"] == round(runtime / 500.0, 3)
    assert fig["paired_ratios"]["vs_broker"] == round(runtime / 500.0, 3)
    assert not fig.get("informational")
    # The p99 stays informational; the table names the target and says whether it is met.
    assert figs["runtime_rtt_p99_us"]["target"] is None and figs["runtime_rtt_p99_us"]["informational"]
    line = next(x for x in report.table(figs).splitlines() if x.startswith("runtime round trip p50"))
    assert "<=1.3x broker" in line and line.rstrip().endswith("yes" if met else "NO")


def test_growth_curve_figures_per_peer_count() -> None:
    rounds = _rounds(500.0, 600.0)
    rounds[report.PEER_CURVE] = {"1": [500.0, 520.0, 480.0], "50": [510.0], "200": [550.0], "1 again": [505.0]}
    figs = report.figures(rounds)
    curve = {k: f for k, f in figs.items() if f.get("group") == report.CURVE_GROUP}
    assert [f["peers"] for f in curve.values()] == ["1", "50", "200", "1 again"]
    assert [f["value"] for f in curve.values()] == [500.0, 510.0, 550.0, 505.0]
    assert curve[f"{report.PEER_CURVE}_200"]["ratio_to_first"] == 1.1
    assert all(f["met"] is None and f["informational"] for f in curve.values())
    text = report.table(figs)
    assert "broker growth curve" in text and "1 again" in text


def test_no_curve_no_curve_figures() -> None:
    figs = report.figures(_rounds(500.0, 600.0))
    assert not [f for f in figs.values() if f.get("group") == report.CURVE_GROUP]


def test_peer_counts_are_checked() -> None:
    assert _args(["--only", "broker"]).peer_counts == [1, 50, 200]
    assert _args(["--only", "broker", "--peer-counts", "1,10"]).peer_counts == [1, 10]
    for bad in ("0,5", "5,5", "50,1", "x"):
        with pytest.raises(SystemExit):
            _args(["--only", "broker", "--peer-counts", bad])

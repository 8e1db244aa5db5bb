"""The pairing section of ``make bench`` (issue 16, bench/pairing.py): a tiny run against the real mesh
across two network namespaces, the shape of its figures and the target they declare.

The figures are timings in ``make bench``, never timed assertions here: what is asserted is that
every figure comes from real pairings and real reads (each reply checked by the reader as it came),
and that the target is judged as declared.
"""

from __future__ import annotations

import pytest

from bench import pairing, report
from bench.__main__ import _args, _sections

from .netns import require_root

FIGURES = {"pairing_wall_p50_s", "pairing_join_p50_s", "pairing_read_detached_p50_us"}


def test_a_tiny_run_pairs_for_real_and_reads_both_ways() -> None:
    require_root()
    raw = pairing.measure(pairing.PairingOptions(pairings=2, rounds=2, reads=20))
    assert len(raw["pairing"]) == 2 and all(0 < join <= total for total, join in raw["pairing"])
    assert {mode: len(s) for mode, s in raw["reads"].items()} == {"detached": 40, "ipc": 40}
    figs = pairing.figures(raw)
    assert set(figs) == FIGURES
    wall = figs["pairing_wall_p50_s"]
    assert wall["target"] == {"bound": "max_abs", "value": pairing.PAIR_TARGET_S}
    assert wall["met"] is (wall["value"] < pairing.PAIR_TARGET_S)
    assert "pairing" in report.table(figs)


@pytest.mark.parametrize(("total", "met"), [(1.9, True), (2.5, False)])
def test_the_target_is_judged_on_the_p50(total: float, met: bool) -> None:
    raw = {"pairing": [(total, 0.3)] * 3, "reads": {"detached": [0.002] * 5, "ipc": [0.001] * 5},
           "round_p50_us": {"detached": [2000.0], "ipc": [1000.0]},
           "addresses": {"mesh": "10.0.0.1", "device": "10.0.0.2"}}
    figs = pairing.figures(raw)
    assert figs["pairing_wall_p50_s"]["met"] is met
    assert figs["pairing_read_detached_p50_us"]["ratio"] == 2.0


def test_the_command_line_runs_it_alone_and_quickly() -> None:
    args = _args(["--only", "pairing", "--quick"])
    assert _sections(args) == ["pairing"]
    assert args.pairing_options == pairing.PairingOptions.quick()
    assert _args(["--pairings", "4"]).pairing_options.pairings == 4

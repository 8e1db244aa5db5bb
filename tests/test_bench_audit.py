"""The audit section of ``make bench`` (issue 18, bench/audit.py): a tiny run that builds real SQLCipher
logs with their anchor and trusted checkpoint, the shape of its figures and the target they declare.

The figures are timings in ``make bench``, never timed assertions here: what is asserted is that the
start read no record of a log anchored at its end and that the target is judged as declared.
"""

from __future__ import annotations

import pytest

from bench import audit, report
from bench.__main__ import _args, _sections


def test_a_tiny_run_starts_from_the_anchor_and_verifies_the_whole_log_beside_it() -> None:
    raw = audit.measure(audit.AuditOptions(sizes=(300, 1200), rounds=1))
    assert {n: m["records_read"] for n, m in raw["sizes"].items()} == {300: 0, 1200: 0}
    figs = audit.figures(raw)
    assert set(figs) == {"audit_start_300_s", "audit_start_1200_s"}
    last = figs["audit_start_1200_s"]
    assert last["target"] == {"bound": "max_abs", "value": audit.START_TARGET_S}
    assert last["met"] is (last["value"] <= audit.START_TARGET_S)
    assert figs["audit_start_300_s"]["target"] is None
    assert "audit start" in report.table(figs)


@pytest.mark.parametrize(("start", "met"), [(1.5, True), (2.5, False)])
def test_the_target_is_judged_at_the_largest_size(start: float, met: bool) -> None:
    raw = {"sizes": {10: {"start_s": [0.1], "full_s": [0.2], "records_read": 0, "build_s": 0.1},
                     20: {"start_s": [start], "full_s": [40.0], "records_read": 0, "build_s": 1.0}}}
    figs = audit.figures(raw)
    assert figs["audit_start_20_s"]["met"] is met and figs["audit_start_10_s"]["met"] is None


def test_the_command_line_runs_it_alone_and_quickly() -> None:
    args = _args(["--only", "audit", "--quick"])
    assert _sections(args) == ["audit"]
    assert args.audit_options == audit.AuditOptions.quick()
    assert _args(["--audit-sizes", "5,6", "--audit-rounds", "4"]).audit_options == audit.AuditOptions((5, 6), 4)

"""The authz section of ``make bench`` (issue 15, bench/authz.py): its mesh configuration, a tiny run
against the real processes, the shape of its figures and the targets they declare, its command line.

The figures themselves are ratios and timings in ``make bench``, never timed assertions here: what
is asserted is that every figure is measured from real calls (every reply was checked as it came,
so a figure exists only if each call answered what it should), and that the two targets are
declared and judged as declared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import authz, report
from bench.__main__ import _args, _sections
from bench.harness import BenchError
from shared import load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = authz.AuthzOptions(rounds=2, local=40, calls=6, warmup=3, pipelined=40)
FIGURES = {"authz_local_cached_p50_us", "authz_local_cached_p99_us", "authz_local_uncached_p50_us",
           "authz_local_cedar_p50_us", "authz_check_p50_us", "authz_check_p99_us", "authz_check_recorded_p50_us",
           "authz_check_recorded_p99_us", "authz_check_recorded_calls_s", "authz_read_p50_us",
           "authz_read_p99_us", "authz_read_own_p50_us"}


def test_the_bench_mesh_keeps_the_repository_s_rules_and_adds_only_what_it_declares(tmp_path: Path) -> None:
    repo = load_config(ROOT / "mesh.toml")
    anchors = tmp_path / "anchors"
    path = tmp_path / "mesh.toml"
    path.write_text(authz.mesh_toml(repo, anchors), "utf-8")
    config = load_config(path)  # parses and validates as every process of the bench home will
    assert config.acl.role == repo.acl.role  # roles exactly the repository's
    for name in ("keyvault", "audit", "authn", "authz", "storage"):
        assert config.acl.identity[name] == repo.acl.identity[name]
    # The bench's additions: the caller declared with the user-data role and no process, and its
    # two health round trips; nothing else differs.
    caller = config.services[authz.CALLER]
    assert caller.process == "none" and caller.roles == authz.CALLER_ROLES == ("user-data",)
    assert caller.role == "service" and not caller.expose and not caller.keys
    assert set(config.services) == {authz.CALLER}
    assert config.acl.identity[authz.CALLER].call == ("authz.health", "storage.health")
    assert not config.acl.identity[authz.CALLER].publish and not config.acl.identity[authz.CALLER].subscribe
    assert config.keyvault.entitlements == repo.keyvault.entitlements
    assert "authz" in config.keyvault.entitlements["authz"]
    assert config.authn == repo.authn and config.authz == repo.authz
    assert config.argon2.authentication == repo.argon2.authentication  # the real login cost
    assert config.argon2.master == authz.SETUP_PROFILE and config.argon2.test_profiles
    assert config.keyvault.keystore == "file" and config.keyvault.anchor_dir == str(anchors)
    assert authz.IDENTITIES[authz.CALLER] == "service"


def test_a_repository_that_does_not_grant_the_calls_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("version = 1\n", "utf-8")  # no declarations: nothing is granted
    with pytest.raises(BenchError, match=r"does not grant authn\.login\.\*, authz\.check"):
        authz.mesh_toml(load_config(path), tmp_path / "anchors")


def test_the_authz_section_measures_the_real_mesh_and_declares_its_targets() -> None:
    raw = authz.measure(TINY)
    assert {k: len(s) for k, s in raw["local"]["samples"].items()} == {"uncached": 80, "cached": 80, "cedar": 80}
    assert {m: len(s) for m, s in raw["mesh"]["samples"].items()} == {
        "check": 12, "check_audited": 12, "authz_health": 12, "read": 12, "read_own": 12, "storage_health": 12}
    assert {m: len(r) for m, r in raw["mesh"]["pipelined"]["calls_s"].items()} == {"check": 2, "check_audited": 2}
    assert raw["local"]["policies"] > 0 and raw["local"]["grants"] == 2
    figs = authz.figures(raw)
    assert set(figs) == FIGURES
    assert all(f["group"] == authz.GROUP and f["value"] > 0 for f in figs.values())
    cached = figs["authz_local_cached_p50_us"]
    assert cached["target"] == {"bound": "max_abs", "value": authz.CACHED_TARGET_US}
    assert cached["met"] == (cached["value"] <= authz.CACHED_TARGET_US)
    assert cached["baseline"]["name"] == "uncached"
    read = figs["authz_read_p50_us"]
    assert read["target"]["bound"] == "max" and read["target"]["ratio"] == authz.READ_TARGET
    assert read["baseline"]["name"] == "storage.health" and read["met"] == (read["ratio"] <= authz.READ_TARGET)
    targeted = {k for k, f in figs.items() if f["met"] is not None}
    assert targeted == {"authz_local_cached_p50_us", "authz_read_p50_us"}
    for key in FIGURES - targeted:
        assert figs[key]["informational"] and figs[key]["target"] is None, key
    assert figs["authz_check_p50_us"]["baseline"]["name"] == "authz.health"
    assert figs["authz_check_recorded_p50_us"]["baseline"]["name"] == "authz.health"
    assert figs["authz_check_recorded_calls_s"]["baseline"]["name"] == "authz.check from cache, pipelined"
    assert figs["authz_local_uncached_p50_us"]["baseline"]["name"] == "cedarpy alone"
    # authn worked for every one of the person's reads (authz only until storage held its allow).
    cpu = raw["mesh"]["cpu_us_per_call"]
    if cpu["read"]["authn"] is not None:
        assert cpu["read"]["authn"] > 0
    json.dumps(figs)  # the results file can hold every figure
    text = report.table(figs)
    assert "Authority.check cached p50" in text and "user read (kv.get + token) p50" in text


def test_the_command_line_runs_authz_alone_and_scales_it() -> None:
    args = _args(["--only", "authz"])
    assert _sections(args) == ["authz"] and args.authz_options == authz.AuthzOptions()
    assert "authz" in _sections(_args([])) and "authz" not in _sections(_args(["--no-authz"]))
    assert "authn" in _sections(_args(["--no-authz"]))
    quick = _args(["--quick", "--authz-calls", "7"]).authz_options
    assert quick == dataclasses.replace(authz.AuthzOptions.quick(), calls=7)
    for bad in (["--only", "authz", "--no-authz"], ["--authz-local", "0"]):
        with pytest.raises(SystemExit):
            _args(bad)

"""The authn section of ``make bench`` (issue 14, bench/authn.py): its mesh configuration, a tiny run
against the real processes, the shape of its figures and the targets they declare, its command line.

The figures themselves are ratios and timings in ``make bench``, never timed assertions here: what
is asserted is that every figure is measured from real calls, that the two targets are declared and
judged as declared, and that passkey login is reported as not measured rather than given a figure.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import authn, report
from bench.__main__ import _args, _sections
from bench.harness import BenchError
from shared import load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = authn.AuthnOptions(rounds=2, logins=2, calls=6, messages=12, window=4, local=40, warmup=3)
FIGURES = {"authn_login_p50_ms", "authn_login_p99_ms", "authn_argon2_verify_ms", "authn_verify_p50_us",
           "authn_verify_p99_us", "authn_verify_calls_s", "authn_local_verify_p50_us", "authn_local_verify_p99_us",
           "authn_first_verify_p50_us", "authn_passkey_login_p50_ms", "authn_passkey_login_p99_ms"}


def test_the_bench_mesh_grants_the_bench_what_it_needs_and_keeps_the_repository_s_rules(tmp_path: Path) -> None:
    repo = load_config(ROOT / "mesh.toml")
    anchors = tmp_path / "anchors"
    path = tmp_path / "mesh.toml"
    path.write_text(authn.mesh_toml(repo, anchors), "utf-8")
    config = load_config(path)  # parses and validates as every process of the bench home will
    assert set(authn.CALLER_NEEDS) <= set(config.acl.role["service"].call)
    assert config.acl.role == repo.acl.role  # roles exactly the repository's
    # The bench's additions: the health round trip, and the revocations a local verifier follows.
    assert config.acl.identity[authn.CALLER].call == ("authn.health",)
    assert config.acl.identity[authn.CALLER].subscribe == ("authn.revoked.",)
    for name in ("keyvault", "audit", "authn"):
        assert config.acl.identity[name] == repo.acl.identity[name]
    assert set(authn.AUTHN_KEYS) <= set(config.keyvault.entitlements["authn"])
    assert config.keyvault.entitlements == repo.keyvault.entitlements
    assert config.authn == repo.authn
    assert config.argon2.authentication == repo.argon2.authentication  # the real login cost
    assert config.argon2.master == authn.SETUP_PROFILE and config.argon2.test_profiles
    assert config.keyvault.keystore == "file" and config.keyvault.anchor_dir == str(anchors)


def test_a_repository_that_does_not_grant_the_calls_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("version = 1\n", "utf-8")  # no declarations: nothing is granted
    with pytest.raises(BenchError, match=r"does not grant authn\.login\.\*"):
        authn.mesh_toml(load_config(path), tmp_path / "anchors")


def test_the_authn_section_measures_the_real_mesh_and_declares_its_targets() -> None:
    raw = authn.measure(TINY)
    assert len(raw["login"]["samples"]["login"]) == len(raw["login"]["samples"]["argon2"]) == 4
    assert {m: len(s) for m, s in raw["mesh"]["samples"].items()} == {"verify": 12, "health": 12}
    assert {m: len(t) for m, t in raw["mesh"]["throughput"].items()} == {"verify": 2, "health": 2}
    assert {p: len(s) for p, s in raw["local"]["samples"].items()} == {"local": 80, "verify_access": 80,
                                                                        "ed25519": 80}
    # Logins and the in-process comparison cost what the repository's authentication profile costs.
    assert raw["login"]["profile"] == dataclasses.asdict(load_config(ROOT / "mesh.toml").argon2.authentication)
    figs = authn.figures(raw)
    assert set(figs) == FIGURES
    assert all(f["group"] == authn.GROUP for f in figs.values())
    verify = figs["authn_verify_p50_us"]
    assert verify["target"]["bound"] == "max" and verify["target"]["ratio"] == authn.VERIFY_TARGET
    assert verify["baseline"]["name"] == "authn.health" and verify["met"] == (verify["ratio"] <= authn.VERIFY_TARGET)
    local = figs["authn_local_verify_p50_us"]
    assert local["target"] == {"bound": "max_abs", "value": authn.LOCAL_TARGET_US}
    assert local["met"] == (local["value"] <= authn.LOCAL_TARGET_US)
    targeted = {k for k, f in figs.items() if f["met"] is not None}
    assert targeted == {"authn_verify_p50_us", "authn_local_verify_p50_us"}
    for key in FIGURES - targeted:
        assert figs[key]["informational"] and figs[key]["target"] is None and figs[key]["value"] > 0, key
    login = figs["authn_login_p50_ms"]
    assert login["baseline"]["name"] == "Argon2id verify" and login["baseline"]["value"] > 0
    assert len(raw["passkey"]["samples"]) == 4
    passkey = figs["authn_passkey_login_p50_ms"]
    assert passkey["value"] > 0 and passkey["met"] is None and passkey["baseline"]["name"] == "password login p50"
    json.dumps(figs)  # the results file can hold every figure
    text = report.table(figs)
    assert "authn.verify p50" in text and "passkey login p50" in text and "local verification p50" in text


def test_the_command_line_runs_authn_alone_and_scales_it() -> None:
    args = _args(["--only", "authn"])
    assert _sections(args) == ["authn"] and args.authn_options == authn.AuthnOptions()
    assert "authn" in _sections(_args([])) and "authn" not in _sections(_args(["--no-authn"]))
    quick = _args(["--quick", "--authn-calls", "7"]).authn_options
    assert quick == dataclasses.replace(authn.AuthnOptions.quick(), calls=7)
    for bad in (["--only", "authn", "--no-authn"], ["--authn-logins", "0"]):
        with pytest.raises(SystemExit):
            _args(bad)

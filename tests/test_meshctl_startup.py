"""meshctl's start-up (issue 13): each command imports only what it needs, ``--version`` answers from
the package metadata, and the start-up benchmark measures and judges the real commands.

The figures themselves are ratios in ``make bench`` (bench/startup.py), never timed assertions
here: what is asserted is which modules a real run loads, which is what the time is made of.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import startup
from tools.meshctl_cli import _version

ROOT = Path(__file__).resolve().parent.parent
# Runs meshctl's main() in a fresh interpreter and writes the modules it loaded to MODULES_OUT.
CHILD = """
import json, os, sys
from tools.meshctl_cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
with open(os.environ["MODULES_OUT"], "w") as out:
    json.dump(sorted(sys.modules), out)
"""
#: What no command that only parses or prints may load.
HEAVY = ("zmq", "asyncio", "structlog", "msgpack", "cryptography", "keyring", "supervisor", "argon2",
         "zxcvbn", "duckdb", "rocksdict", "sqlcipher3", "services", "argcomplete", "importlib.metadata")
#: The storage engines, keyvault's setup and the password checker: for init, storage and backup only.
STORES = ("duckdb", "rocksdict", "sqlcipher3", "zxcvbn", "argon2", "services")


def loaded(tmp_path: Path, *argv: str) -> set[str]:
    """The top-level packages (and importlib.metadata) a real ``meshctl ARGV`` run loads."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CURVEMESH_CONFIG", "_ARGCOMPLETE")}
    env.update(CURVEMESH_HOME=str(tmp_path / "home"), MODULES_OUT=str(out))
    subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, env=env, capture_output=True, timeout=60,
                   check=False)
    names: list[str] = json.loads(out.read_text("utf-8"))
    return {n.split(".")[0] for n in names} | ({"importlib.metadata"} & set(names))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["keys", "--help"], ["completion", "bash"]])
def test_parsing_and_printing_load_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    heavy = set(HEAVY) - ({"argcomplete"} if argv[0] == "completion" else set())
    assert loaded(tmp_path, *argv) & heavy == set()


def test_status_loads_no_storage_engine_and_ping_no_supervisor_client(tmp_path: Path) -> None:
    assert loaded(tmp_path, "status", "--json") & set(STORES) == set()
    ping = loaded(tmp_path, "ping", "mesh")
    assert "zmq" in ping  # it does talk to the broker
    assert ping & {*STORES, "supervisor", "keyring", "argcomplete"} == set()


def test_ping_and_status_of_a_down_mesh_load_neither_structlog_nor_a_keyring(tmp_path: Path) -> None:
    # An initialised home (keystore = file) whose mesh is down: logging is deferred until there is
    # something to log (nothing, here), and with keystore = file no keyring backend is probed.
    # status finds neither supervisord's socket nor the broker's: it loads no XML-RPC client, no
    # zmq and no event loop (they are loaded to talk to a mesh that is up).
    root = tmp_path / "bench"
    root.mkdir()
    env = startup._environment(root)
    startup._initialise([sys.executable, "-m", "tools.meshctl_cli"], root, env)
    out = tmp_path / "modules.json"
    for argv in (["ping", "mesh"], ["status", "--json"]):
        done = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=ROOT, env={**env, "MODULES_OUT": str(out)},
                              capture_output=True, text=True, timeout=60, check=False)
        assert "cannot reach the broker" in done.stderr or '"state": "unhealthy"' in done.stdout, done
        modules = set(json.loads(out.read_text("utf-8")))
        names = {n.split(".")[0] for n in modules}
        assert names & {"structlog", "rich", "keyring", "secretstorage", "supervisor"} == set(), argv
        if argv[0] == "ping":
            assert "zmq" in names
        else:
            assert names & {"zmq", "asyncio"} == set() and modules & {"xmlrpc.client", "importlib.metadata"} == set()
    report = json.loads(subprocess.run([sys.executable, "-m", "tools.meshctl_cli", "status", "--json"], cwd=ROOT,
                                       env=env, capture_output=True, text=True, timeout=60, check=False).stdout)
    assert report["keyring"] == {"backend": None, "usable": None, "source": "configuration",
                                 "note": 'keyvault.keystore = "file": the platform keyring is not used'}
    assert not any("keyring" in w for w in report["warnings"])


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    from tools.meshctl_cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"meshctl {importlib.metadata.version('curvemesh')}\n"


def test_version_without_an_install_says_where_it_came_from(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path)])  # no dist-info anywhere on the path
    assert _version.installed_version() is None
    assert _version.version_line() == (f"meshctl {_version.checkout_version()} (curvemesh is not installed: "
                                       f"the version in {_version.PYPROJECT})")
    monkeypatch.setattr(_version, "PYPROJECT", tmp_path / "pyproject.toml")
    assert "version unknown" in _version.version_line()


def test_the_startup_benchmark_times_every_command_against_a_bare_interpreter() -> None:
    raw = startup.measure(1)
    assert set(raw["samples"]) == {c.label for c in startup.COMMANDS}
    assert raw["mesh"] == "initialised home, mesh down"
    figs = startup.figures(raw)
    help_ = figs["startup_help_ms"]
    assert help_["target"] == {"baseline": startup.BASELINE, "bound": "max", "ratio": 3.0}
    assert help_["met"] == (help_["ratio"] <= 3.0) and help_["value"] > 0
    assert figs["startup_status_ms"]["target"]["ratio"] == figs["startup_ping_ms"]["target"]["ratio"] == 4.0
    assert figs["startup_python_ms"]["ratio"] == 1.0 and figs["startup_version_ms"]["met"] is None
    text = startup.table(figs)
    assert "meshctl status --json" in text and "mesh down" in text


def test_a_command_that_fails_early_cannot_pass_for_a_fast_one(tmp_path: Path) -> None:
    broken = startup.Command("x", "meshctl --version", ("--version",), 0, "not in the output", None)
    with pytest.raises(startup.BenchError, match="without 'not in the output'"):
        startup._run_once([sys.executable, "-m", "tools.meshctl_cli", "--version"], dict(os.environ), broken)


def test_the_commands_the_parser_knows_are_every_command_and_one_is_built_alone() -> None:
    from tools.meshctl_cli import _parser

    whole = _parser.build()
    choices = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert tuple(choices) == _parser.COMMANDS
    for command in _parser.COMMANDS:
        alone = _parser.build(command)
        only = next(a for a in alone._actions if isinstance(a, argparse._SubParsersAction)).choices
        assert tuple(only) == (command,)
        # The command's own parser is the same, option for option, as in the whole tree.
        assert [a.option_strings for a in only[command]._actions] == [
            a.option_strings for a in choices[command]._actions]
    assert _parser.command_word(["--home", "/x", "--json", "ping", "mesh"]) == "ping"
    assert _parser.command_word(["--home=/x", "users", "list"]) == "users"
    for words in (["--help"], ["--version"], ["nope"], [], ["--home"], ["-x", "ping"]):
        assert _parser.command_word(words) is None, words

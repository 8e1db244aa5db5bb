"""Shell completion through the real CLI (issue 13): ``meshctl completion bash|zsh`` prints the code
to source, and meshctl answers a shell's completion request the way argcomplete's shell code asks
(``_ARGCOMPLETE``, ``COMP_LINE``, ``COMP_POINT``; answers separated by ``_ARGCOMPLETE_IFS``, written
to the file ``_ARGCOMPLETE_STDOUT_FILENAME`` names instead of fd 8) for commands, services, purposes
and certificate names, reading the home without a mesh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared import MeshHome
from shared.provision import provision

ROOT = Path(__file__).resolve().parent.parent
MESHCTL = [sys.executable, "-m", "tools.meshctl_cli"]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CURVEMESH_CONFIG", "CURVEMESH_HOME") and not k.startswith(("_ARGCOMPLETE", "COMP_"))}
    env["CURVEMESH_HOME"] = str(home)
    env.update(extra)
    return env


def complete(line: str, home: Path, tmp_path: Path, shell: str = "bash") -> list[str]:
    """What meshctl offers for the cursor at the end of ``line``."""
    answer = tmp_path / "answer"
    env = env_for(home, _ARGCOMPLETE="1", _ARGCOMPLETE_SHELL=shell, _ARGCOMPLETE_IFS="\n",
                  _ARGCOMPLETE_STDOUT_FILENAME=str(answer), COMP_LINE=line, COMP_POINT=str(len(line)))
    done = subprocess.run(MESHCTL, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    return answer.read_text("utf-8").split("\n") if answer.read_text("utf-8") else []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with the project's configuration and two allowed certificates, and no mesh."""
    mesh_home = MeshHome(tmp_path / "home")
    provision(mesh_home, {"meshctl": "operator", "storage": "service"})
    return mesh_home.root


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_script_is_printed_for_each_shell(shell: str, tmp_path: Path) -> None:
    done = subprocess.run([*MESHCTL, "completion", shell], cwd=ROOT, env=env_for(tmp_path), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stderr == ""
    assert "_ARGCOMPLETE" in done.stdout and "meshctl" in done.stdout
    if shell == "zsh":
        assert done.stdout.startswith("#compdef meshctl")
    else:
        assert "complete -o nospace -o default -o bashdefault -F _python_argcomplete meshctl" in done.stdout
    checker = shutil.which(shell)
    if checker:  # the shell itself finds the script well-formed
        script = tmp_path / f"meshctl.{shell}"
        script.write_text(done.stdout, "utf-8")
        assert subprocess.run([checker, "-n", str(script)], capture_output=True, timeout=30).returncode == 0


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run([*MESHCTL, "completion", "fish"], cwd=ROOT, env=env_for(tmp_path), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("meshctl: argument shell: invalid choice: 'fish'") and done.stderr.count("\n") == 1


def test_commands_complete(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl cer", home, tmp_path) == ["certs "]
    assert complete("meshctl comp", home, tmp_path) == ["completion "]
    assert {"status", "ping", "certs", "keys", "completion"} <= set(complete("meshctl ", home, tmp_path))
    assert complete("meshctl completion z", home, tmp_path) == ["zsh "]


def test_purposes_complete(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl keys rotate sq", home, tmp_path) == ["sqlcipher "]
    assert complete("meshctl keys rotate audit-", home, tmp_path) == ["audit-hmac", "audit-signing"]


def test_services_complete_from_the_declarations(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl restart sto", home, tmp_path) == ["storage "]
    assert complete("meshctl logs supervisor-", home, tmp_path) == ["supervisor-events "]
    pings = complete("meshctl ping ", home, tmp_path)
    assert "mesh" in pings and "keyvault" in pings and "storage" in pings
    # --home on the command line is the home completions read.
    assert complete(f"meshctl --home {home} restart ke", tmp_path / "elsewhere", tmp_path) == ["keyvault "]


def test_certificate_names_complete_from_the_home(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl certs show me", home, tmp_path) == ["meshctl "]
    assert complete("meshctl certs revoke ", home, tmp_path) == ["meshctl", "storage"]
    assert complete("meshctl certs revoke ", tmp_path / "no-such-home", tmp_path) == []


def test_zsh_answers_carry_descriptions(home: Path, tmp_path: Path) -> None:
    answers = complete("meshctl keys rotate audit-", home, tmp_path, shell="zsh")
    assert [a.split(":", 1)[0] for a in answers] == ["audit-hmac", "audit-signing"]
    assert all("rotate: one of" in a for a in answers)


def test_authz_commands_principals_and_categories_complete(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl rol", home, tmp_path) == ["roles "]
    assert complete("meshctl pol", home, tmp_path) == ["policy "]
    assert complete("meshctl cons", home, tmp_path) == ["consent "]
    assert complete("meshctl roles ", home, tmp_path) == ["list", "assign", "revoke"]
    # A principal is a declared service's; policy validate's DIR is the shell's to complete.
    assert complete("meshctl roles assign service:sto", home, tmp_path) == ["service:storage "]
    assert "service:keyvault" in complete("meshctl policy test ", home, tmp_path)
    assert all(word.startswith("service:") for word in complete("meshctl policy test ", home, tmp_path))
    assert complete("meshctl roles assign service:storage ", home, tmp_path) == ["user-data", "system", "plugin"]
    assert complete("meshctl policy validate ", home, tmp_path) == []
    # Categories come from categories.toml of the policy directory (the shipped one here).
    assert complete("meshctl policy test service:storage read me", home, tmp_path) == ["memories "]
    assert complete("meshctl consent grant --category he", home, tmp_path) == ["health "]
    assert complete("meshctl policy test service:storage ", home, tmp_path) == ["read", "write", "delete"]


def test_plugins_and_its_actions_complete(home: Path, tmp_path: Path) -> None:
    assert complete("meshctl plug", home, tmp_path) == ["plugins "]
    assert complete("meshctl plugins ", home, tmp_path) == ["install", "list", "show", "enable", "disable", "remove",
                                                            "logs", "call", "keygen", "sign"]
    assert complete("meshctl plugins install --app", home, tmp_path) == ["--approve "]

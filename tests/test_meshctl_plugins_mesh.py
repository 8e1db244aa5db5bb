"""``meshctl plugins`` against a real mesh under supervisord (plugin-host its own process, its plugins
children in real kernel sandboxes): a publisher makes a key and signs the example plugin, the operator
trusts the key in mesh.toml, installs the plugin (refused without --approve when no one can be asked),
lists, shows, calls, reads its logs, disables and removes it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import MeshHome, parse_config

from .test_operations_e2e import MESHCTL, REPO, fast_config_text, meshctl, running_mesh, wait_until

EXAMPLE = REPO / "examples" / "plugins" / "note-stats"


def publisher(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """meshctl on a publisher's machine: no mesh home at all."""
    return subprocess.run([*MESHCTL, *argv], cwd=REPO, env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshHome, Path]]:
    work = tmp_path_factory.mktemp("publisher")
    made = publisher(["plugins", "keygen", str(work / "acme.key"), "--id", "acme"])
    assert made.returncode == 0, made.stderr
    line = next(x for x in made.stdout.splitlines() if x.startswith("acme = "))
    package = work / "note-stats"
    shutil.copytree(EXAMPLE, package)
    signed = publisher(["plugins", "sign", str(package), "--key", str(work / "acme.key"), "--id", "acme"])
    assert signed.returncode == 0 and "sha256:" in signed.stdout, signed.stderr

    def prepare(home: MeshHome) -> None:
        home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = fast_config_text()
        text = (text.replace("[plugins.publishers]\n", f"[plugins.publishers]\n{line}\n", 1)
                if "[plugins.publishers]\n" in text else text + f"\n[plugins.publishers]\n{line}\n")
        assert "acme" in parse_config(text).plugins.publishers
        (home.root / "mesh.toml").write_text(text)

    with running_mesh(prepare) as home:
        yield home, package


def ok(home: MeshHome, *args: str) -> str:
    done = meshctl(home, *args, timeout=90)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def as_json(home: MeshHome, *args: str) -> Any:
    return json.loads(ok(home, *args, "--json"))


def test_install_list_show_call_logs_disable_remove(live: tuple[MeshHome, Path]) -> None:
    home, package = live
    listed = as_json(home, "plugins", "list")
    assert listed["plugins"] == [] and all(layer["available"] for layer in listed["layers"].values())
    # No terminal and no --approve: refused before anything is asked of the mesh.
    refused = meshctl(home, "plugins", "install", str(package))
    assert refused.returncode == 2 and "--approve" in refused.stderr
    assert as_json(home, "plugins", "list")["plugins"] == []
    shown = ok(home, "plugins", "install", str(package), "--approve", "--enable")
    assert "note-stats" in shown and "notes" in shown
    [plugin] = as_json(home, "plugins", "list")["plugins"]
    assert (plugin["name"], plugin["state"], plugin["version"]) == ("note-stats", "running", "1.0.0")
    view = ok(home, "plugins", "show", "note-stats")
    assert "meshctl consent grant plugin:note-stats" in view  # nobody consented yet: it says how
    assert json.loads(ok(home, "plugins", "call", "note-stats", "last")) is None
    assert any("started" in row["line"] for row in as_json(home, "plugins", "logs", "note-stats")["lines"])
    assert as_json(home, "plugins", "disable", "note-stats")["state"] == "disabled"
    again = meshctl(home, "plugins", "call", "note-stats", "last")
    assert again.returncode == 1 and "disabled" in again.stderr
    removed = as_json(home, "plugins", "remove", "note-stats", "--yes")
    assert removed == {"removed": True, "name": "note-stats", "version": "1.0.0"}
    assert as_json(home, "plugins", "list")["plugins"] == []
    # The audit log has the whole story (plugin-host ships its spool to audit within a few seconds).
    def story() -> list[str] | None:
        out = ok(home, "audit", "tail", "--actor", "plugin-host", "-n", "100", "--json")
        kinds = [json.loads(line)["type"] for line in out.splitlines() if line.strip()]
        return kinds if "plugin.removed" in kinds else None
    kinds = wait_until(story, 60, "plugin-host's records in the audit log")
    assert [k for k in kinds if k in ("plugin.installed", "plugin.started", "plugin.disabled", "plugin.removed")] \
        == ["plugin.installed", "plugin.started", "plugin.disabled", "plugin.removed"]

"""Layers a machine cannot apply: the host never runs a plugin weaker than it requires, and
probe_layers names what is missing and why. The machine is made to refuse for real: a helper
host (tests/sandbox_denying_host.py) runs under a seccomp filter of its own that refuses the
system calls a layer needs, as a container runtime's profile does. Also: tools/host-deps names
libseccomp, which the host needs to compile its filter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from services.plugin_host.sandbox import LAYERS
from services.plugin_host.sandbox.runtime import PROJECT_ROOT

ALL = dict.fromkeys(LAYERS, True)


def denying_host(mode: str, tmp: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tests.sandbox_denying_host", mode, str(tmp)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_without_unshare_netns_and_tmpfs_are_unavailable(tmp_path: Path) -> None:
    seen = denying_host("netns", tmp_path)
    assert seen["probe"] == {**dict.fromkeys(LAYERS), "netns": "EPERM: unshare(CLONE_NEWNET): Operation not permitted",
                             "tmpfs": "EPERM: unshare(CLONE_NEWNS): Operation not permitted"}
    # Required: refused before the plugin's code was read.
    assert seen["required"] == {"layer": "netns", "reason": "EPERM: unshare(CLONE_NEWNET): Operation not permitted",
                                "imported": False}
    # Not required: it runs with every other layer, and says which did not apply.
    assert seen["lenient"] == {"layers": {**ALL, "netns": False, "tmpfs": False}, "ping": {"pong": 1},
                               "stopped": "stopped"}


def test_without_landlock_its_three_layers_are_unavailable(tmp_path: Path) -> None:
    seen = denying_host("landlock", tmp_path)
    for layer in ("landlock", "landlock_net", "landlock_scope"):
        assert seen["probe"][layer] == "ENOTSUP: this kernel has no Landlock, or it is disabled at boot"
    assert {layer for layer, why in seen["probe"].items() if why is None} == set(LAYERS) - {
        "landlock", "landlock_net", "landlock_scope"}
    assert seen["required"]["layer"] == "landlock" and seen["required"]["imported"] is False
    assert seen["lenient"]["layers"] == {**ALL, "landlock": False, "landlock_net": False, "landlock_scope": False}


def test_without_seccomp_filters_seccomp_is_unavailable(tmp_path: Path) -> None:
    seen = denying_host("seccomp", tmp_path)
    assert seen["probe"] == {**dict.fromkeys(LAYERS), "seccomp": "EINVAL: prctl(PR_SET_SECCOMP): Invalid argument"}
    assert seen["required"] == {"layer": "seccomp", "reason": "EINVAL: prctl(PR_SET_SECCOMP): Invalid argument",
                                "imported": False}
    assert seen["lenient"]["layers"] == {**ALL, "seccomp": False}


def test_a_host_without_root_takes_the_user_namespace_way() -> None:
    """plugin-host as uid 65534: where unprivileged user namespaces are allowed (here), the child
    gets its network and mount namespaces inside one of its own and every layer applies; where
    they are not, the probe says so and a spec requiring them is refused."""
    with tempfile.TemporaryDirectory(prefix="cmnobody") as tmp:
        os.chmod(tmp, 0o777)
        done = subprocess.run([sys.executable, "-m", "tests.sandbox_nobody_host", tmp], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["host"] == [65534, 65534]
    working = {layer: why is None for layer, why in seen["probe"].items()}
    assert seen["layers"] == working
    if all(working.values()):
        assert "all_required" not in seen
    else:
        assert not working["netns"] and seen["all_required"]["reason"] == seen["probe"][seen["all_required"]["layer"]]
    assert seen["ids"] == [65534] * 4
    assert seen["capabilities"] == {"bounding": [], "ambient": [], "held": [0, 0], "no_new_privs": 1, "seccomp": 2}
    assert seen["fds"] == [0, 1, 2, 3]
    assert set(seen["environ"]) == {"LANG", "PYTHONDONTWRITEBYTECODE", "TMPDIR", "HOME"}
    assert seen["stopped"] == "stopped"


# -- tools/host-deps --------------------------------------------------------------------------------

HOST_DEPS = Path(PROJECT_ROOT) / "tools" / "host-deps"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ("bash", "apt-get"):
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"this machine lacks {tool}")
        (path / tool).symlink_to(found)
    return path


def host_deps(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": str(bin_dir), "PY": os.path.realpath(sys.executable), "HOME": "/nonexistent", **env}
    return subprocess.run([str(HOST_DEPS), *args], env=environment, capture_output=True, text=True, timeout=60,
                          check=False)


def test_host_deps_finds_libseccomp_here(bin_dir: Path) -> None:
    done = host_deps(bin_dir, "--check", "up")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_host_deps_names_libseccomp_when_it_is_missing(bin_dir: Path, tmp_path: Path) -> None:
    done = host_deps(bin_dir, "--check", "up", LIBDIRS=str(tmp_path / "no-libraries"))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "make up needs libseccomp (not installed)" in line
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert line.endswith(f"{sudo}apt-get install -y --no-install-recommends libseccomp2")

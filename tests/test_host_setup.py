"""The host set-up check (tools/host-deps) that `make up` and `make test` run first.

On a fresh Debian machine the suite needs system tools that PyPI cannot bring: a D-Bus
daemon and gnome-keyring-daemon for the real Secret Service, ``make`` for the end-to-end
tests, and a Python that can create the venv. These tests run the real script with a
PATH built from symlinks, so that a tool can be taken away without touching the machine.
They only ever use the check-only mode, or run the script as a user who cannot install
(nobody): no test here installs anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .secret_service import running_secret_service

REPO = Path(__file__).resolve().parents[1]
HOST_DEPS = REPO / "tools" / "host-deps"
INSTALL = "apt-get install -y --no-install-recommends"
# The interpreter itself, not a wrapper (a pyenv shim needs pyenv on PATH to work).
PYTHON = os.path.realpath(sys.executable)
# Every tool the script or the suite needs, and what provides it on this machine.
TOOLS = ("bash", "make", "dbus-daemon", "gnome-keyring-daemon", "ip", "tcpdump", "strace", "cc", "apt-get")


def root_prefix() -> str:
    """The sudo a command needs when the script runs under this test's uid."""
    return "" if os.geteuid() == 0 else "sudo "


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    """A directory of symlinks to the tools this machine has, to be used as the whole PATH.

    Outside pytest's own 0700 tree and world-readable, so that a test can run the script as nobody."""
    found = {tool: shutil.which(tool) for tool in TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        pytest.fail(f"this machine lacks {' '.join(missing)}: run `make test`, which installs them")
    with tempfile.TemporaryDirectory(prefix="cmhost") as root:
        path = Path(root) / "bin"
        path.mkdir()
        for tool, target in found.items():
            (path / tool).symlink_to(target)  # type: ignore[arg-type]
        (path / "python3").symlink_to(PYTHON)
        for directory in (Path(root), path):
            directory.chmod(0o755)
        yield path


def host_deps(bin_dir: Path, *args: str, as_nobody: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """Run tools/host-deps with only ``bin_dir`` on PATH; the venv counts as existing
    unless the caller says otherwise (PY)."""
    command = [str(HOST_DEPS), *args]
    if as_nobody and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv (util-linux): cannot drop to nobody")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *command]
    environment = {"PATH": str(bin_dir), "PY": PYTHON, "HOME": "/nonexistent", **env}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, check=False)


def test_check_without_the_keyring_daemon_names_the_install_command(bin_dir: Path) -> None:
    (bin_dir / "gnome-keyring-daemon").unlink()
    done = host_deps(bin_dir, "--check", "test")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "gnome-keyring-daemon" in lines[0]
    # Only the package that is missing, with the exact command for this uid.
    assert lines[0].endswith(f"run: {root_prefix()}apt-get update && {root_prefix()}{INSTALL} gnome-keyring")


def test_check_names_every_missing_package_once(bin_dir: Path) -> None:
    for tool in ("gnome-keyring-daemon", "dbus-daemon", "make"):
        (bin_dir / tool).unlink()
    done = host_deps(bin_dir, "--check", "test")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "dbus-daemon, gnome-keyring-daemon, make" in line
    assert line.endswith(f"{root_prefix()}{INSTALL} dbus-daemon gnome-keyring make")


def test_the_network_rig_needs_ip_and_tcpdump(bin_dir: Path) -> None:
    """tests/netns.py runs ``ip netns`` and captures with tcpdump: both are named with
    their Debian packages (ip comes from iproute2)."""
    for tool in ("ip", "tcpdump"):
        (bin_dir / tool).unlink()
    done = host_deps(bin_dir, "--check", "test")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "ip, tcpdump" in line
    assert line.endswith(f"{root_prefix()}{INSTALL} iproute2 tcpdump")
    assert host_deps(bin_dir, "--check", "up").returncode == 0  # the mesh itself needs neither


def test_the_disk_sync_tests_need_strace(bin_dir: Path) -> None:
    """tests/syscall_stall.py holds and fails a real process's fdatasync with strace: named with its
    Debian package for ``make test``; the mesh itself does without it."""
    (bin_dir / "strace").unlink()
    done = host_deps(bin_dir, "--check", "test")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "strace" in line
    assert line.endswith(f"{root_prefix()}{INSTALL} strace")
    assert host_deps(bin_dir, "--check", "up").returncode == 0


def test_the_suite_needs_a_c_compiler_and_the_python_headers(bin_dir: Path, tmp_path: Path) -> None:
    """make native compiles the key-value formats (tools/build_native.py) and the suite checks they
    run compiled: the compiler and the headers of the venv's interpreter are named with their
    Debian packages. An interpreter whose include directory lacks Python.h stands in for a
    Debian python3 without python3-dev. ``make up`` does without both."""
    (bin_dir / "cc").unlink()
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\necho /nonexistent/include\n")
    python.chmod(0o755)
    done = host_deps(bin_dir, "--check", "test", PY=str(python))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "a C compiler, the Python headers" in line
    assert line.endswith(f"{root_prefix()}{INSTALL} gcc python3-dev")
    assert host_deps(bin_dir, "--check", "up", PY=str(python)).returncode == 0


def test_check_with_everything_present_is_silent(bin_dir: Path) -> None:
    for target in ("test", "up"):
        done = host_deps(bin_dir, "--check", target)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_up_does_not_need_the_keyring(bin_dir: Path) -> None:
    """The mesh runs without gnome-keyring (keyvault falls back to another keystore)."""
    (bin_dir / "gnome-keyring-daemon").unlink()
    (bin_dir / "dbus-daemon").unlink()
    done = host_deps(bin_dir, "--check", "up")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_up_without_a_venv_needs_python_venv(bin_dir: Path, tmp_path: Path) -> None:
    """Debian's python3 has no ensurepip (so `python3 -m venv` fails) until python3-venv
    is installed; an ensurepip that cannot be imported stands in for that here."""
    fake = tmp_path / "no-ensurepip" / "ensurepip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("ensurepip is not installed")\n')
    no_venv = str(tmp_path / "no-venv" / "bin" / "python")
    done = host_deps(bin_dir, "--check", "up", PY=no_venv, PYTHONPATH=str(fake.parent))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "venv" in line and line.endswith(f"{INSTALL} python3-venv")
    # Once the venv exists the module is not needed any more.
    assert host_deps(bin_dir, "--check", "up", PYTHONPATH=str(fake.parent)).returncode == 0
    # A Python that has ensurepip needs nothing.
    assert host_deps(bin_dir, "--check", "up", PY=no_venv).returncode == 0


def test_up_without_python_names_the_python_packages(bin_dir: Path, tmp_path: Path) -> None:
    (bin_dir / "python3").unlink()
    done = host_deps(bin_dir, "--check", "up", PY=str(tmp_path / "no-venv" / "bin" / "python"))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "python3" in line and line.endswith(f"{INSTALL} python3 python3-venv")


def test_an_old_python_is_refused_with_what_to_do(bin_dir: Path, tmp_path: Path) -> None:
    """No package fixes an interpreter older than 3.11: the line says to choose another."""
    old = bin_dir / "python3"
    old.unlink()
    old.write_text('#!/bin/bash\necho 3.9\n')
    old.chmod(0o755)
    done = host_deps(bin_dir, "--check", "up", PY=str(tmp_path / "no-venv" / "bin" / "python"))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "3.11" in line and "PYTHON=" in line


def test_without_root_it_stops_naming_the_sudo_command(bin_dir: Path) -> None:
    """Not as root, the install mode (what `make test` runs) cannot install: it stops with
    the sudo command and fails, without trying apt-get."""
    (bin_dir / "gnome-keyring-daemon").unlink()
    # The script only asks whether the venv's interpreter is executable, and nobody cannot
    # reach this test's own interpreter (under /root here): stand in with one it can run.
    venv_python = bin_dir.parent / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(bin_dir / "bash")
    for directory in (venv_python.parent.parent, venv_python.parent):
        directory.chmod(0o755)
    done = host_deps(bin_dir, "test", as_nobody=True, PY=str(venv_python))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "gnome-keyring-daemon" in line
    assert line.endswith(f"run: sudo apt-get update && sudo {INSTALL} gnome-keyring")
    assert "apt-get:" not in done.stderr and "E:" not in done.stderr  # apt-get never ran


def test_unknown_arguments_are_a_usage_error(bin_dir: Path) -> None:
    done = host_deps(bin_dir, "--check", "deploy")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert "usage" in line


def test_secret_service_names_the_same_command(bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (bin_dir / "gnome-keyring-daemon").unlink()
    monkeypatch.setenv("PATH", str(bin_dir))
    expected = f"{root_prefix()}apt-get update && {root_prefix()}{INSTALL} gnome-keyring"
    with pytest.raises(RuntimeError) as raised:
        with running_secret_service():
            pass
    assert str(raised.value).endswith(expected)
    assert "gnome-keyring-daemon" in str(raised.value)


def make_dry_run(*args: str) -> list[str]:
    done = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_make_test_runs_the_check_before_anything_else(tmp_path: Path) -> None:
    lines = make_dry_run("test", f"VENV={tmp_path / 'venv'}")
    check = next(i for i, line in enumerate(lines) if "tools/host-deps test" in line)
    venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
    pytest_run = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert check < venv < pytest_run
    assert "--check" not in lines[check]  # make test installs (as root) what is missing


def test_make_up_checks_before_creating_the_venv(tmp_path: Path) -> None:
    lines = make_dry_run("up", f"VENV={tmp_path / 'venv'}")
    check = next(i for i, line in enumerate(lines) if "tools/host-deps up" in line)
    venv = next(i for i, line in enumerate(lines) if "-m venv" in line)
    assert check < venv
    assert not any("tools/host-deps test" in line for line in lines)  # the mesh needs no keyring


def test_the_suite_stops_at_once_naming_the_command(bin_dir: Path) -> None:
    """pytest run directly (not through make test) on a machine without the daemon: the
    session stops before any test with the one line, not one error per test."""
    (bin_dir / "gnome-keyring-daemon").unlink()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_host_setup.py::test_unknown_arguments_are_a_usage_error"],
        cwd=REPO, env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")},
        capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    command = f"{root_prefix()}apt-get update && {root_prefix()}{INSTALL} gnome-keyring"
    assert command in output
    assert "ERROR" not in output and "passed" not in output, output

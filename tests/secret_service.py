"""A real Secret Service for the tests: a private D-Bus session bus and gnome-keyring-daemon.

Started once per test session (see conftest.py); its address is exported in
``DBUS_SESSION_BUS_ADDRESS`` so this process and every process it starts
(supervisord and the mesh under it) use it through ``keyring``, exactly as on
a desktop. Both daemons are killed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The one list of what the suite needs from the system, and the command that installs it.
HOST_DEPS = Path(__file__).resolve().parents[1] / "tools" / "host-deps"


def check_host() -> None:
    """Raise with tools/host-deps' one line (what is missing, the exact command to install
    it) when the machine lacks a tool the suite needs; install nothing."""
    # The suite already runs in its venv: only the system tools are in question.
    done = subprocess.run([str(HOST_DEPS), "--check", "test"], env={**os.environ, "PY": sys.executable},
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 1:
        raise RuntimeError(done.stderr.strip())
    if done.returncode != 0:
        # 126/127: the script itself could not start, which leaves its own line unsaid.
        raise RuntimeError(f"{HOST_DEPS} --check test could not run (exit {done.returncode}: "
                           f"{done.stderr.strip()}): it needs bash on PATH")


@contextmanager
def running_secret_service() -> Iterator[str]:
    """Yield the bus address of a fresh Secret Service; raise if the daemons are missing."""
    check_host()
    root = tempfile.mkdtemp(prefix="cmss")
    env = {**os.environ, "HOME": root, "XDG_DATA_HOME": f"{root}/data", "XDG_RUNTIME_DIR": root}
    bus = subprocess.run(
        ["dbus-daemon", "--session", "--fork", "--nopidfile", "--print-address=1", "--print-pid=1",
         f"--address=unix:path={root}/bus"],
        env=env, capture_output=True, text=True, timeout=30, check=True)
    address, pid = bus.stdout.split()[:2]
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    keyring = subprocess.run(
        ["gnome-keyring-daemon", "--unlock", "--components=secrets", "--daemonize"],
        input="curvemesh-test-keyring", env=env, capture_output=True, text=True, timeout=30, check=True)
    keyring_pid = next((line.split("=", 1)[1] for line in keyring.stdout.splitlines()
                        if line.startswith("GNOME_KEYRING_PID=")), None)
    try:
        yield address
    finally:
        for process in (keyring_pid, pid):
            if process:
                try:
                    os.kill(int(process), signal.SIGTERM)
                except ProcessLookupError:
                    pass
        shutil.rmtree(root, ignore_errors=True)

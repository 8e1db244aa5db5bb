"""Service processes for the kill -9 tests: start ``python -m services.<name>`` in a home, stop it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared import MeshHome

REPO = Path(__file__).resolve().parents[1]


def spawn_service(module: str, home: MeshHome, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with ``home`` as its mesh home (its mesh.toml, not CURVEMESH_CONFIG),
    appending its output to ``log_path``."""
    env = {**os.environ, "CURVEMESH_HOME": str(home.root)}
    env.pop("CURVEMESH_CONFIG", None)
    with log_path.open("ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def stop_service(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s; every wait has a deadline."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)


async def kill_9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL: what a crash leaves behind (no cleanup, no flush)."""
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 10)

"""meshctl's start-up (issue 13): each command as an operator runs it, against a bare interpreter.

Every round runs each command once, in turn (the order rotates), so a burst of other work on the
shared machine falls on all of them alike: ``python -c pass`` (the baseline: the same interpreter,
its ``site`` and the editable install's path hook included), ``meshctl --help``, ``--version``,
``status --json`` and ``ping mesh``. meshctl runs through ``tools/meshctl`` (the wrapper in the
checkout, its bash start included) when the checkout has its ``.venv``, else as ``python -m
tools.meshctl_cli`` (the output says which). Figures are wall-clock medians across rounds and their
ratios to the baseline's median; the paired ratio (the median of the per-round ratios) is the
steadier one on a busy machine. Targets: ``--help`` <= 3x, ``status`` and ``ping`` <= 4x.

``status`` and ``ping`` run against an initialised home whose mesh is down: starting a mesh
(supervisord and every service) would cost tens of seconds and keep both cores busy with heartbeats
while the other commands are timed. A command still imports everything it needs before it finds
the mesh down, so the figure is its start-up cost; on a running mesh the round trips add a few
milliseconds. Each run's exit status and output are checked to be the down mesh's answer, so a
command that broke early cannot pass for a fast one. Every command (the baseline too) runs with
bytecode caches in a directory of the bench's own (``PYTHONPYCACHEPREFIX``), written by the warm-up
run, as an operator's checkout has them after its first command, whatever the machine's
``PYTHONDONTWRITEBYTECODE`` says.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .harness import REPO, BenchError

GROUP: Final = "startup"
BASELINE: Final = "python -c pass"
#: The home's configuration: a master key that derives in milliseconds, kept in a 0600 file (the
#: bench never touches a desktop keyring).
MESH_TOML: Final = """\
version = 1

[keyvault]
keystore = "file"

[argon2]
test_profiles = true

[argon2.master]
memory_kib = 1024
iterations = 1
parallelism = 1
"""


@dataclass(frozen=True)
class Command:
    """One command line to time: its meshctl arguments (None: the baseline), the exit status and
    a piece of its output that prove it did its job, and its target ratio (None: informational)."""

    key: str
    label: str
    argv: tuple[str, ...] | None
    status: int
    expect: str
    target: float | None


COMMANDS: Final = (
    Command("startup_python_ms", BASELINE, None, 0, "", None),
    Command("startup_help_ms", "meshctl --help", ("--help",), 0, "usage: meshctl", 3.0),
    Command("startup_version_ms", "meshctl --version", ("--version",), 0, "meshctl ", None),
    Command("startup_status_ms", "meshctl status --json", ("status", "--json"), 1, '"state": "unhealthy"', 4.0),
    Command("startup_ping_ms", "meshctl ping mesh", ("ping", "mesh"), 1, "cannot reach the broker", 4.0),
)


def meshctl_prefix() -> tuple[list[str], str]:
    """How meshctl is run, and how the output names it."""
    wrapper = REPO / "tools" / "meshctl"
    if (REPO / ".venv" / "bin" / "python").exists():
        return [str(wrapper)], "tools/meshctl"
    return [sys.executable, "-m", "tools.meshctl_cli"], "python -m tools.meshctl_cli (no .venv in the checkout)"


def _environment(root: Path) -> dict[str, str]:
    # Bytecode caches as an installed checkout has them: Python writes them on a command's first run
    # unless told not to, and a machine that says PYTHONDONTWRITEBYTECODE (as some CI and sandboxes
    # do) would have every round compile the checkout again. They go to a directory of the bench's
    # own (removed with it), never into the checkout, for the baseline and every command alike.
    env = {k: v for k, v in os.environ.items()
           if k not in ("CURVEMESH_CONFIG", "_ARGCOMPLETE", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.update(PYTHONPYCACHEPREFIX=str(root / "pycache"))
    env.update(CURVEMESH_HOME=str(root / "home"), XDG_STATE_HOME=str(root / "state"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


def _initialise(prefix: list[str], root: Path, env: dict[str, str]) -> None:
    """``meshctl init`` a fresh home under ``root`` (test Argon2 profile, file keystore)."""
    home = root / "home"
    home.mkdir(mode=0o700)
    (home / "mesh.toml").write_text(MESH_TOML, "utf-8")
    password = root / "password"
    password.write_text("startup bench password, never a real one\n", "utf-8")
    password.chmod(0o600)
    done = subprocess.run([*prefix, "init", "--password-file", str(password)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"startup: meshctl init failed: {done.stderr.strip()[-400:]}")


def _run_once(argv: list[str], env: dict[str, str], command: Command) -> float:
    """Run ``argv`` once and return its wall time in seconds, after checking its answer."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != command.status or command.expect not in done.stdout + done.stderr:
        raise BenchError(f"startup: {command.label} exited {done.returncode} (expected {command.status}) "
                         f"without {command.expect!r}: {(done.stdout + done.stderr).strip()[-300:]}")
    return elapsed


def measure(rounds: int) -> dict[str, Any]:
    """Time every command ``rounds`` times (after one warm-up run each); per-command seconds."""
    prefix, how = meshctl_prefix()
    root = Path(tempfile.mkdtemp(prefix="cmstart"))
    try:
        env = _environment(root)
        _initialise(prefix, root, env)
        lines = {c.label: [sys.executable, "-c", "pass"] if c.argv is None else [*prefix, *c.argv]
                 for c in COMMANDS}
        samples: dict[str, list[float]] = {c.label: [] for c in COMMANDS}
        for command in COMMANDS:  # warm the page cache and the bytecode caches
            _run_once(lines[command.label], env, command)
        for r in range(rounds):
            order = COMMANDS[r % len(COMMANDS):] + COMMANDS[:r % len(COMMANDS)]
            for command in order:
                samples[command.label].append(_run_once(lines[command.label], env, command))
        return {"samples": samples, "meshctl": how, "mesh": "initialised home, mesh down"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One figure per command: median ms, the ratio to the baseline's median, the paired ratio."""
    samples: dict[str, list[float]] = raw["samples"]
    base = samples[BASELINE]
    base_median = statistics.median(base)
    out: dict[str, dict[str, Any]] = {}
    for command in COMMANDS:
        values = samples[command.label]
        ratio = statistics.median(values) / base_median
        paired = statistics.median(v / b for v, b in zip(values, base, strict=True))
        out[command.key] = {
            "label": command.label, "unit": "ms", "group": GROUP, "value": round(statistics.median(values) * 1e3, 1),
            "baseline": round(base_median * 1e3, 1), "ratio": round(ratio, 2), "paired_ratio": round(paired, 2),
            "target": None if command.target is None else {"baseline": BASELINE, "bound": "max",
                                                           "ratio": command.target},
            "met": None if command.target is None else ratio <= command.target,
            "informational": command.target is None, "runs": [round(v * 1e3, 1) for v in values],
            "note": f"wall time of one run through {raw['meshctl']}; status and ping: {raw['mesh']}"}
    return out


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The start-up section of the bench's table."""
    head = f"{'meshctl start-up':<27}{'median ms':>10}{'vs pass':>9}{'paired':>8}  {'target':<12}{'met':<4}"
    lines = [head, "-" * len(head)]
    for fig in figs.values():
        target = "-" if fig["target"] is None else f"<={fig['target']['ratio']:g}x pass"
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        lines.append(f"{fig['label']:<27}{fig['value']:>10.1f}{fig['ratio']:>8.2f}x{fig['paired_ratio']:>7.2f}x"
                     f"  {target:<12}{met:<4}")
    note = next(iter(figs.values()))["note"]
    lines.append(f"({note})")
    return "\n".join(lines)

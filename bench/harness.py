"""The bench's mesh home and its child processes.

:func:`make_home` provisions a throw-away mesh home with the bench's
identities and a ``mesh.toml`` that keeps every broker check on but makes
sure none of them refuses the bench's own traffic (rate limit high, liveness
long, ACL granting exactly the two echo methods). :class:`Children` starts
each server as its own OS process (in its own process group), waits for its
``ready`` line with a deadline and always terminates (then kills) every child
it started. While one setup is measured, :meth:`Children.focus` freezes the
other setups' processes (SIGSTOP) so an idle server's timers cannot steal one
of the two cores from the setup under test; frozen children are resumed
before they are stopped, and the kernel resumes and hangs up a frozen,
orphaned child should the bench itself be killed.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from shared import MeshHome
from shared.provision import provision

from .wire import IDENTITIES

REPO: Final = Path(__file__).resolve().parent.parent

#: Every check stays on; the numbers only make sure the bench itself is never refused.
MESH_TOML: Final = """\
version = 1

[broker]
heartbeat_interval_ms = 1000
liveness_ms = 600000             # the raw bench peers do not send heartbeats

[runtime]
liveness_ms = 600000             # the bench's event loop pauses while other setups run

[limits.default]
rate = 10000000.0
burst = 10000000

[acl.identity.bench]
call = ["echo.echo", "rtecho.echo"]
"""


class BenchError(RuntimeError):
    """The bench could not run (a child failed to start, a reply never came)."""


def make_home() -> MeshHome:
    """A fresh, provisioned mesh home with the bench's mesh.toml (short path for ipc)."""
    home = MeshHome(Path(tempfile.mkdtemp(prefix="cmb")))
    provision(home, IDENTITIES)
    (home.root / "mesh.toml").write_text(MESH_TOML, "utf-8")
    return home


def remove_home(home: MeshHome) -> None:
    shutil.rmtree(home.root, ignore_errors=True)


def initialised_home(text: str, identities: Mapping[str, str], prefix: str) -> tuple[MeshHome, dict[str, Any]]:
    """A fresh home provisioned for ``identities`` (short path: the broker's ipc socket lives in it),
    ``text`` as its mesh.toml, keyvault initialised with the file keystore; also the key pairs
    :func:`provision` made. Removed again if any step fails."""
    from services.keyvault.setup import initialise  # keyring and the keystore load only here
    from shared import load_config

    home = MeshHome(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        pairs = provision(home, dict(identities))
        (home.root / "mesh.toml").write_text(text, "utf-8")
        keystore, _warning = initialise(home, load_config(home.root / "mesh.toml"),
                                        bytearray(secrets.token_urlsafe(24).encode()))
        if keystore != "file":
            raise BenchError(f"keyvault setup chose keystore {keystore!r}, expected the file keystore")
    except BaseException:
        remove_home(home)
        raise
    return home, dict(pairs)


def child_env(home: MeshHome) -> dict[str, str]:
    """The environment of a bench child: ``home`` as its mesh home (so ``<home>/mesh.toml`` is
    its configuration: ``CURVEMESH_CONFIG`` is dropped) and the repository importable."""
    env = {k: v for k, v in os.environ.items() if k != "CURVEMESH_CONFIG"}
    env["CURVEMESH_HOME"] = str(home.root)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def run_json_child(module_args: list[str], env: dict[str, str], what: str, timeout: float,
                   stdin: bytes | None = None) -> dict[str, Any]:
    """Run ``python -m bench.guard <module_args>`` (so it dies with the bench) and return the JSON
    object on the last line of its stdout. Killed on any way out; every wait has a deadline; a
    failure is a :class:`BenchError` naming ``what`` with the tail of the child's stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.guard", *module_args], cwd=REPO, env=env,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no result within {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    if proc.returncode != 0:
        tail = "\n".join(err.decode("utf-8", "replace").splitlines()[-15:])
        raise BenchError(f"{what}: child exited with status {proc.returncode}\n{tail}")
    try:
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"{what}: no result line from the child") from None
    return result


@dataclass
class Child:
    """One started process, its stderr log and its stdout pipe (for the ready line)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]
    #: The setups this process takes part in (it runs only while one of them is measured).
    setups: frozenset[str]
    frozen: bool = False

    def tail(self, lines: int = 15) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        try:
            text = self.log.read_text("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    """Starts bench processes and guarantees they are all gone on exit."""

    def __init__(self, home: MeshHome) -> None:
        self.home = home
        self.started: list[Child] = []
        self.env = child_env(home)

    def spawn(self, name: str, module: str, args: Sequence[str] = (), *, setups: Sequence[str] = (),
              profile: Path | None = None, guard: bool = False) -> Child:
        """Start ``python -m module args`` (under cProfile if ``profile`` names an output file;
        through :mod:`bench.guard` if ``guard``, for modules that do not watch their parent)."""
        command = [sys.executable]
        if profile is not None:
            command += ["-m", "cProfile", "-o", str(profile)]
        command += ["-m", "bench.guard", module, *args] if guard else ["-m", module, *args]
        log = self.home.log / f"{name}.stderr"
        log_file = open(log, "wb")  # closed in stop()
        proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log_file, process_group=0)
        child = Child(name, proc, log, log_file, frozenset(setups))
        self.started.append(child)
        return child

    def wait_ready(self, child: Child, timeout: float) -> None:
        """Wait for the child's ``ready`` line; raise :class:`BenchError` with its stderr otherwise."""
        assert child.proc.stdout is not None
        fd = child.proc.stdout.fileno()  # raw reads: a buffered reader would hide lines from select.
        deadline = time.monotonic() + timeout
        seen = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"ready" not in seen.splitlines():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{child.name} not ready within {timeout:.0f} s\n{child.tail()}")
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    child.proc.wait(timeout=5)
                    raise BenchError(f"{child.name} exited with status {child.proc.returncode} "
                                     f"before it was ready\n{child.tail()}")
                seen += chunk

    def check_alive(self) -> None:
        """Raise if any child died (a crash mid-run must not pass for a slow setup)."""
        for child in self.started:
            if child.proc.poll() is not None:
                raise BenchError(f"{child.name} exited with status {child.proc.returncode}\n{child.tail()}")

    def focus(self, setup: str | None) -> None:
        """Let only the processes of ``setup`` run (every process if ``setup`` is None)."""
        for child in self.started:
            frozen = setup is not None and setup not in child.setups
            if frozen != child.frozen and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
                child.frozen = frozen

    def stop(self, child: Child, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit status."""
        if child.proc.poll() is None:
            if child.frozen:
                child.proc.send_signal(signal.SIGCONT)
                child.frozen = False
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=5)
        if child.proc.stdout is not None:
            child.proc.stdout.close()
        child.log_file.close()
        if child in self.started:
            self.started.remove(child)
        return child.proc.returncode

    def stop_all(self) -> None:
        # Clients first (they disconnect cleanly), servers last.
        for child in reversed(list(self.started)):
            self.stop(child, grace=5.0)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

"""``meshctl up``, ``down`` and ``restart``: a mesh home's life under supervisord (``init``: _init.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

from shared import MeshHome

from ._mesh import home_config
from ._mesh_view import MeshProbe
from ._output import CliError, Progress
from ._programs import apply_programs, write_programs
from ._status import collect
from ._supervisor import (
    NotRunning,
    Supervisor,
    SupervisorFault,
    alive,
    home_processes,
    load_credentials,
)

POLL_S: Final = 0.25
#: The verdicts ``meshctl up`` stops waiting at (see :mod:`._verdict`).
SETTLED: Final = ("healthy", "sealed", "degraded")
_NOT_RUNNING_FAULT: Final = 70  # supervisor.xmlrpc.Faults.NOT_RUNNING


def _terminate(pids: list[int], grace: float) -> list[int]:
    """SIGTERM, then SIGKILL whatever is still alive after ``grace`` seconds; return the killed."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(POLL_S)  # poll interval
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return killed


async def wait_for(home: MeshHome, supervisor: Supervisor, done: Callable[[dict[str, Any]], bool],
                   timeout: float, what: str) -> dict[str, Any]:
    """Poll the status until ``done(status)``, a process is FATAL, or ``timeout``; return the final
    (detailed) status. Shows progress on stderr meanwhile."""
    probe = MeshProbe(home)
    progress = Progress()
    deadline = time.monotonic() + timeout
    try:
        while True:
            status = await collect(home, supervisor, probe, details=False)
            # A FATAL process, or one that failed through its own fault (a damaged database, a tampered
            # log), will not get better by waiting; one that waits on a dependency still may.
            fatal = any(r["state"] == "FATAL" or (r["ready"]["state"] == "failed" and not r["ready"]["dependency"])
                        for r in status["services"])
            if done(status) or fatal or time.monotonic() >= deadline:
                break
            rows = status["services"]
            running = sum(r["state"] == "RUNNING" for r in rows)
            ready = [r["name"] for r in rows if r["healthy"]]
            waiting = [r["name"] for r in rows if not r["healthy"]]
            progress.update(f"{what}: {running}/{len(rows)} running, {len(ready)}/{len(rows)} ready"
                            f"; waiting for {', '.join(waiting[:4])}{' ...' if len(waiting) > 4 else ''}")
            await asyncio.sleep(POLL_S)  # poll interval inside the deadline loop
        progress.done()
        return await collect(home, supervisor, probe)
    finally:
        await probe.close()


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        print(text, flush=True)


async def up(home: MeshHome, *, timeout: float, quiet: bool) -> dict[str, Any]:
    """Start supervisord (or, if it runs, any stopped process) and wait until every process is ready, the
    mesh is sealed or degraded (settled states), a process is FATAL, or ``timeout``; return the status."""
    from ._init import is_initialised  # here, not at the top: init's keyvault and password stack is for up only

    if not is_initialised(home):
        raise CliError(f"the mesh home {home.root} is not initialised: run `meshctl init` first (make up does)",
                       kind="not_initialised")
    config = home_config(home)  # a bad declaration or fragment stops here, naming file and key
    supervisor = Supervisor(home, load_credentials(home))
    if supervisor.running():
        # The declarations may have changed since supervisord started (a fragment edited by hand):
        # bring its programs in line first, as `supervisorctl update` would.
        changes = apply_programs(supervisor, home, config)
        for what, groups in changes.items():
            if groups:
                _say(f"programs {what}: {', '.join(groups)}", quiet)
        started = []
        for proc in supervisor.processes():
            if proc["statename"] in ("STOPPED", "EXITED", "FATAL"):
                supervisor.call("startProcess", f"{proc['group']}:{proc['name']}", False)
                started.append(proc["name"])
        _say(f"supervisord already runs for {home.root}"
             + (f"; starting {', '.join(started)}" if started else ""), quiet)
    else:
        stale = home_processes(home)
        if stale:
            _say(f"stopping {len(stale)} leftover process(es) of this home from an earlier run", quiet)
            _terminate([pid for pid, _ in stale], grace=10.0)
        _say(f"starting supervisord for {home.root}", quiet)
        write_programs(home, config)
        supervisor.start()
    # Healthy, sealed (the mesh waits for `meshctl security unlock`) and degraded are settled states;
    # an unhealthy mesh may still be starting, so keep waiting for it until the timeout.
    return await wait_for(home, supervisor, lambda s: s["state"] in SETTLED, timeout, "starting the mesh")


def down(home: MeshHome, *, timeout: float, quiet: bool) -> dict[str, Any]:
    """Stop supervisord and every process of the home; kill what is left after ``timeout``.

    The normal path is supervisord's own shutdown (each process gets TERM and its grace
    period). Processes of the home that no supervisord we can drive owns (it was killed,
    or its credentials are gone) get TERM, then KILL.
    """
    try:
        credentials = load_credentials(home)
    except CliError:
        credentials = None  # nothing was initialised, or it is gone: still clean up processes.
    supervisor = Supervisor(home, credentials)
    was_running = False
    if credentials is not None:
        try:
            if supervisor.running():
                _say(f"stopping the mesh in {home.root}", quiet)
                supervisor.call("shutdown")
                was_running = True
        except NotRunning:
            pass
        except CliError as exc:
            _say(f"{exc.message}: stopping its processes by signal instead", quiet)
    if was_running:
        progress = Progress()
        deadline = time.monotonic() + timeout
        while (remaining := home_processes(home)) and time.monotonic() < deadline:
            progress.update(f"waiting for {len(remaining)} process(es) to stop")
            time.sleep(POLL_S)  # poll interval
        progress.done()
    stale = home_processes(home)
    # Grace above the services' own shutdown grace (runtime.shutdown_grace_ms, 10 s).
    killed = _terminate([p for p, _ in stale], grace=15.0) if stale else []
    if stale:
        _say(f"stopped {len(stale)} leftover process(es)" + (f", {len(killed)} with SIGKILL" if killed else ""), quiet)
    left = home_processes(home)
    if left:
        raise CliError(f"{len(left)} process(es) of {home.root} would not stop: pids {[p for p, _ in left]}")
    return {"home": str(home.root), "was_running": was_running, "leftovers_stopped": len(stale), "stopped": True}


async def restart(home: MeshHome, name: str, *, timeout: float) -> dict[str, Any]:
    """Restart one process through supervisord and wait until it is healthy again (or
    ``timeout``); return its status row, which says whether it is."""
    supervisor = Supervisor(home, load_credentials(home))
    procs = {p["name"]: p for p in supervisor.processes()}
    if name not in procs:
        raise CliError(f"no process named {name!r}; processes: {', '.join(sorted(procs))}", kind="not_found")
    full = f"{procs[name]['group']}:{name}"
    try:
        supervisor.call("stopProcess", full, True)
    except SupervisorFault as exc:
        if exc.code != _NOT_RUNNING_FAULT:
            raise
    supervisor.call("startProcess", full, False)

    def ready(status: dict[str, Any]) -> bool:
        # Ready, or sealed together with the rest of a sealed mesh: either way it is back.
        return any(r["name"] == name and (r["healthy"] or (status["state"] == "sealed"
                                                           and r["ready"]["state"] == "sealed"))
                   for r in status["services"])

    status = await wait_for(home, supervisor, ready, timeout, f"restarting {name}")
    row: dict[str, Any] = next(r for r in status["services"] if r["name"] == name)
    row["mesh_state"] = status["state"]
    return row

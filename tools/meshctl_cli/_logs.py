"""``meshctl logs SERVICE [-f]``: the log file supervisord writes for one process.

Processes log JSON lines on stderr (shared/_logging.py); supervisord writes
them to ``<home>/log/<name>.log`` and rotates the file. With ``-f`` the file
is followed across rotations, like ``tail -F``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from shared import MeshError, MeshHome, mesh_config

from ._output import CliError
from ._supervisor import NotRunning, Supervisor

POLL_S: Final = 0.25
_TAIL_CHUNK: Final = 64 << 10


def log_path(home: MeshHome, supervisor: Supervisor | None, name: str) -> Path:
    """Where ``name`` logs: as supervisord reports it when it runs, else the default location."""
    if supervisor is not None:
        try:
            procs = {p["name"]: p for p in supervisor.processes()}
        except NotRunning:
            procs = {}
        if procs and name not in procs:
            raise CliError(f"no process named {name!r}; processes: {', '.join(sorted(procs))}", kind="not_found")
        if name in procs:
            proc = procs[name]
            for key in ("stdout_logfile", "stderr_logfile"):
                value = proc.get(key)
                if value and value != "NONE" and Path(value).exists():
                    return Path(value)
    try:
        declared = mesh_config(home.root).processes()
    except MeshError as exc:
        raise CliError(exc.message) from None
    if name not in declared:
        raise CliError(f"no process named {name!r}; processes: {', '.join(declared)}", kind="not_found")
    return home.log / f"{name}.log"


def last_lines(path: Path, count: int) -> list[str]:
    """The last ``count`` lines of ``path`` (reads only the end of a big file)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - _TAIL_CHUNK * max(1, count // 100 + 1)))
            data = handle.read()
    except FileNotFoundError:
        raise CliError(f"no log at {path} (the process has not run yet?)") from None
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-count:] if count else []


def follow(path: Path, emit: Callable[[str], None], stop: Callable[[], bool]) -> None:
    """Print lines appended to ``path`` from now on, until ``stop()``; when the file is rotated
    or truncated, go on from the start of the new one."""
    handle = None
    inode = None
    from_start = False  # the first open starts at the end: the caller showed the tail already.
    try:
        while not stop():
            if handle is None:
                try:
                    handle = open(path, "rb")
                except FileNotFoundError:
                    from_start = True
                    time.sleep(POLL_S)  # poll interval: waiting for the file to appear.
                    continue
                inode = os.fstat(handle.fileno()).st_ino
                if not from_start:
                    handle.seek(0, os.SEEK_END)
            line = handle.readline()
            if line.endswith(b"\n"):
                emit(line.decode("utf-8", "replace").rstrip("\n"))
                continue
            handle.seek(-len(line), os.SEEK_CUR)  # a partial line: wait until it is complete.
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            if current is None or current.st_ino != inode or current.st_size < handle.tell():
                handle.close()  # rotated or truncated: read the new file from its start.
                handle, from_start = None, True
                continue
            time.sleep(POLL_S)  # poll interval
    finally:
        if handle is not None:
            handle.close()


def show_logs(home: MeshHome, supervisor: Supervisor | None, name: str, lines: int, follow_: bool,
              stop: Callable[[], bool]) -> None:
    path = log_path(home, supervisor, name)
    for line in last_lines(path, lines):
        print(line)
    sys.stdout.flush()
    if follow_:
        follow(path, lambda line: print(line, flush=True), stop)

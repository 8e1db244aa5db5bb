"""``meshctl logs SERVICE [-f]``: the log file supervisord writes for one process.

Processes log JSON lines on stderr (shared/_logging.py); supervisord writes
them to ``<home>/log/<name>.log`` and rotates the file. With ``-f`` the file
is followed across rotations, like ``tail -F``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from shared import MeshError, MeshHome, mesh_config

from ._output import CliError, Columns, cut
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


_FIELDS: Final = ("timestamp", "level", "event", "process")  # the columns; every other field is a detail
_HEADERS: Final = ("TIME", "LEVEL", "EVENT", "DETAILS")
_CAPS: Final = (23, 8, 32, 240)
_VALUE_CAP: Final = 80


def parse(line: str) -> dict[str, Any] | None:
    """A process's log record (shared/_logging.py writes one JSON object a line), or None for a
    line that is not one (a traceback Python printed itself, a partial line)."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def local_time(stamp: Any) -> str:
    """structlog's UTC ISO time as local time with milliseconds, or ``-``."""
    try:
        when = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "-"
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:23]


def details(record: dict[str, Any]) -> str:
    """``key=value`` for every field but the columns, each value cut with ``…`` past 80 characters."""
    parts = []
    for key, value in sorted(record.items()):
        if key in _FIELDS:
            continue
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        parts.append(f"{key}={cut(text, _VALUE_CAP)}")
    return " ".join(parts)


def row(record: dict[str, Any]) -> list[str]:
    return [local_time(record.get("timestamp")), str(record.get("level", "-")), str(record.get("event", "-")),
            details(record)]


class LogPrinter:
    """Log lines for people (a header, aligned columns, local times) or, with ``as_json``, as
    JSON lines: each record as the process wrote it, any other line as ``{"text": line}``."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.columns: Columns | None = None

    def start(self, lines: list[str]) -> None:
        """The first lines (the tail): they set the column widths."""
        if not self.as_json:
            records = [r for r in map(parse, lines) if r is not None]
            self.columns = Columns(_HEADERS, _CAPS, [row(r) for r in records])
            print(self.columns.header())
        for line in lines:
            self.line(line)

    def line(self, line: str) -> None:
        record = parse(line)
        if self.as_json:
            print(line if record is not None else json.dumps({"text": line}), flush=True)
        elif record is None or self.columns is None:
            print(line, flush=True)  # not a record: as written, never reformatted into a lie
        else:
            print(self.columns.line(row(record), styled=1), flush=True)


def show_logs(home: MeshHome, supervisor: Supervisor | None, name: str, lines: int, follow_: bool,
              stop: Callable[[], bool], as_json: bool = False) -> None:
    path = log_path(home, supervisor, name)
    tail = last_lines(path, lines)
    printer = LogPrinter(as_json)
    if not tail and not follow_:
        if not as_json:
            print(f"no records in {path}")
        return
    printer.start(tail)
    sys.stdout.flush()
    if follow_:
        follow(path, printer.line, stop)

"""meshctl's output through the real CLI (a subprocess), without a running mesh: JSON error objects
with the exit code, no escape codes on a pipe, readable logs, ``backup list``."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from shared import MeshHome

from .test_operations_e2e import MESHCTL, REPO, _env

ESC = "\x1b["


def meshctl(home: MeshHome, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # Pipes on stdout and stderr, no terminal on stdin: what a script or CI sees.
    return subprocess.run([*MESHCTL, *args], cwd=REPO, env={**_env(home), **(env or {})}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)


def json_error(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The error object on stdout, checked against the exit status and the one line on stderr."""
    error: dict[str, Any] = json.loads(done.stdout)["error"]
    assert error["exit_code"] == done.returncode != 0
    assert done.stderr.strip() == f"meshctl: {error['message']}"
    assert "\n" not in error["message"] and "Traceback" not in done.stderr
    return error


@pytest.fixture
def initialised(fast_home: MeshHome) -> MeshHome:
    done = meshctl(fast_home, "init")
    assert done.returncode == 0, done.stderr
    return fast_home


@pytest.mark.parametrize("argv", [["--json", "ping"], ["ping", "--json"], ["--json", "certs", "nope"],
                                  ["status", "--json", "--bogus"], ["call", "storage.get", "--body", "{", "--json"]])
def test_a_usage_error_is_a_json_error_with_exit_2(fast_home: MeshHome, argv: list[str]) -> None:
    done = meshctl(fast_home, *argv)
    assert done.returncode == 2
    assert json_error(done)["code"] == "usage"


@pytest.mark.parametrize("argv", [["status"], ["certs", "list"], ["ping", "storage"], ["alerts"], ["backup", "list"]])
def test_an_uninitialised_home_is_a_json_error(fast_home: MeshHome, argv: list[str]) -> None:
    for words in ([*argv, "--json"], ["--json", *argv]):  # before or after the subcommand
        done = meshctl(fast_home, *words)
        error = json_error(done)
        assert done.returncode == 1 and error["code"] == "not_initialised", done.stdout
        assert "meshctl init" in error["message"]


def test_a_mesh_that_is_down_is_a_json_error(initialised: MeshHome) -> None:
    for argv in (["ping", "storage"], ["certs", "list"], ["call", "storage.nope"], ["audit", "tail"]):
        done = meshctl(initialised, *argv, "--json")
        error = json_error(done)
        assert (done.returncode, error["code"]) == (1, "unavailable"), done.stdout
        assert "meshctl up" in error["message"]
        assert meshctl(initialised, *argv).returncode == 1  # the same status without --json
    # status reports a mesh that is down as its result: one JSON document, never an error after it.
    done = meshctl(initialised, "status", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == report["exit_code"] == 1 and report["state"] == "unhealthy"


def test_text_on_a_pipe_has_no_escape_codes(initialised: MeshHome) -> None:
    for env in ({}, {"NO_COLOR": "1"}, {"FORCE_COLOR": "1", "NO_COLOR": "1"}):
        done = meshctl(initialised, "status", env=env)
        assert done.returncode == 1 and "PROCESS" in done.stdout
        assert ESC not in done.stdout and ESC not in done.stderr
        assert "pid None" not in done.stdout


def on_a_terminal(home: MeshHome, *args: str, env: dict[str, str] | None = None, until: str | None = None,
                  interrupt: bool = False, deadline_s: float = 60.0) -> tuple[int, str]:
    """Run meshctl with a pseudo-terminal as stdin, stdout and stderr; read what it writes (every
    read against a deadline) until it exits, or until ``until`` has appeared twice, then send Ctrl-C
    if ``interrupt``. Returns the exit status and everything it wrote."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*MESHCTL, *args], cwd=REPO, env={**_env(home), "TERM": "xterm", **(env or {})},
                            stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the process exited
                break
            if not chunk:
                break
            seen += chunk
            if until is not None and seen.count(until.encode()) >= 2 and interrupt:
                os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on the terminal sends
                until = None
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)
    return status, seen.decode("utf-8", "replace")


def test_states_are_coloured_on_a_terminal_unless_no_color(initialised: MeshHome) -> None:
    status, seen = on_a_terminal(initialised, "status")
    assert status == 1 and ESC + "31m" in seen  # red: the mesh is down
    status, seen = on_a_terminal(initialised, "status", env={"NO_COLOR": "1"})
    assert status == 1 and "UNHEALTHY" in seen and ESC not in seen


def test_status_watch_redraws_in_place_and_ctrl_c_exits_0(initialised: MeshHome) -> None:
    status, seen = on_a_terminal(initialised, "status", "--watch", "--interval", "0.3",
                                 until="meshctl status of", interrupt=True)
    assert status == 0, seen
    assert seen.count("PROCESS") >= 2 and ESC + "2K" in seen  # redrawn: lines erased, not appended
    assert "Traceback" not in seen and "interrupted" not in seen


def test_watch_on_a_pipe_prints_one_json_document_a_refresh(initialised: MeshHome) -> None:
    for argv in (["status", "--watch", "--interval", "0.2", "--json"], ["--json", "alerts", "--watch", "--interval",
                                                                          "0.2"]):
        proc = subprocess.Popen([*MESHCTL, *argv], cwd=REPO, env=_env(initialised), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            documents = []
            deadline = time.monotonic() + 60
            while len(documents) < 2:
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no refresh within 60 s: {documents}"
                documents.append(json.loads(proc.stdout.readline()))
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if argv[0] == "status":
            assert all(d["state"] == "unhealthy" for d in documents)
        else:  # the mesh is down: each refresh says so, and the watch goes on
            assert all(d["error"]["code"] == "unavailable" for d in documents)


@pytest.mark.parametrize("argv", [["status", "--interval", "2"], ["status", "--watch", "--interval", "0"],
                                  ["alerts", "ack", "1", "--watch"], ["status", "--watch", "--interval", "nan"]])
def test_watch_flags_are_checked(fast_home: MeshHome, argv: list[str]) -> None:
    done = meshctl(fast_home, *argv, "--json")
    assert done.returncode == 2 and json_error(done)["code"] == "usage"


def test_logs_are_a_table_in_local_time_and_raw_json_lines_with_json(initialised: MeshHome) -> None:
    records = [{"event": "unsealed", "level": "info", "process": "keyvault", "keystore": "file",
                "timestamp": "2026-12-07T03:10:07.774960Z"},
               {"event": "key_release_refused", "level": "warning", "process": "keyvault", "caller": "storage",
                "reason": "x" * 200, "timestamp": "2026-12-07T03:10:08.000001Z"}]
    lines = [json.dumps(r, sort_keys=True) for r in records] + ["Traceback (most recent call last):"]
    log = initialised.log / "keyvault.log"
    log.parent.mkdir(mode=0o700, exist_ok=True)
    log.write_text("\n".join(lines) + "\n")
    env = {"TZ": "America/New_York"}  # 03:10 UTC is 22:10 the day before there
    done = meshctl(initialised, "logs", "keyvault", env=env)
    assert done.returncode == 0, done.stderr
    header, first, second, raw = done.stdout.splitlines()
    assert header.split() == ["TIME", "LEVEL", "EVENT", "DETAILS"]
    assert first.startswith("2026-12-06 22:10:07.774  info     unsealed") and first.endswith("keystore=file")
    assert second.index("key_release_refused") == header.index("EVENT")
    assert "reason=" + "x" * 79 + "…" in second and "x" * 80 not in second  # cut, with the marker
    assert raw == "Traceback (most recent call last):"  # not a record: as written
    done = meshctl(initialised, "logs", "keyvault", "--json", env=env)
    assert [json.loads(line) for line in done.stdout.splitlines()] == [*records, {"text": lines[2]}]
    log.write_text("")
    done = meshctl(initialised, "logs", "keyvault")
    assert done.returncode == 0 and done.stdout.startswith("no records in ")
    assert meshctl(initialised, "logs", "keyvault", "--json").stdout == ""


def test_keys_rotate_without_a_purpose_lists_the_purposes(initialised: MeshHome) -> None:
    done = meshctl(initialised, "keys", "rotate", "--json")
    error = json_error(done)
    assert done.returncode == 2 and error["code"] == "usage"
    assert error["message"].startswith("keys rotate needs a PURPOSE: one of sqlcipher, duckdb, rocksdb, files")
    assert "backups" in error["message"] and "audit-signing" not in error["message"]


def test_backup_list_reads_headers_without_the_mesh(initialised: MeshHome) -> None:
    done = meshctl(initialised, "backup", "list")
    assert done.returncode == 0 and done.stdout.startswith("no backups in ")
    assert json.loads(meshctl(initialised, "backup", "list", "--json").stdout) == []
    backups = initialised.root / "backups"
    backups.mkdir(mode=0o700, exist_ok=True)
    (backups / "junk.cmbak").write_bytes(b"not an archive")
    [row] = json.loads(meshctl(initialised, "backup", "list", "--json").stdout)
    assert row["file"] == "junk.cmbak" and row["bytes"] == 14 and row["sequence"] is None
    assert "archive" in row["problem"]
    done = meshctl(initialised, "backup", "list")
    assert done.returncode == 0 and "damaged: " in done.stdout and "junk.cmbak" in done.stdout
    done = meshctl(initialised, "backup", "list", "--force", "--json")
    assert done.returncode == 2 and json_error(done)["code"] == "usage"


def test_init_warns_on_stderr_each_warning_once(fast_home: MeshHome) -> None:
    done = meshctl(fast_home, "init")
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stdout and "warning" not in done.stdout.lower()
    warnings = [line for line in done.stderr.splitlines() if line.startswith("meshctl: warning: ")]
    assert "meshctl: warning: TEST ARGON2 PROFILES IN USE ([argon2] test_profiles = true): never for real data" \
        in warnings and len(warnings) == len(set(warnings))


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`meshctl config show | head -1`: the pipe closes before meshctl writes; no "unexpected" line."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before meshctl writes a byte: every write gets EPIPE
    try:
        done = subprocess.run([str(REPO / "tools" / "meshctl"), "--home", str(tmp_path / "h"), "config", "show"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr == "", done.stderr

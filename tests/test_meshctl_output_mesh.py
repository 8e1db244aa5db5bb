"""meshctl's output against a real mesh under supervisord (one mesh for the module, ~20 s to start):
the mesh's refusals as JSON errors, an unknown method's list, empty results, backups by name."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from shared import MeshHome

from .test_meshctl_output import ESC, json_error
from .test_operations_e2e import live, meshctl

__all__ = ["live"]  # the module-scoped fixture: one mesh for every test here


def call_json(home: MeshHome, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    done = meshctl(home, *args, "--json")
    return done, json.loads(done.stdout)


def test_the_mesh_refusing_is_a_json_error_with_its_wire_code(live: MeshHome) -> None:
    # supervisor-events exposes nothing (an event listener, not a service): the broker refuses the operator.
    done = meshctl(live, "call", "supervisor-events.decide", "--json")
    error = json_error(done)
    assert (done.returncode, error["code"]) == (1, "forbidden") and error["message"].startswith("FORBIDDEN: ")
    assert meshctl(live, "call", "supervisor-events.decide").returncode == 1  # the same status without --json
    done = meshctl(live, "--json", "certs", "show", "nobody-at-all")
    assert json_error(done)["code"] == "not_found"


def test_an_unknown_method_lists_the_services_methods_through_meshctl(live: MeshHome) -> None:
    done = meshctl(live, "call", "storage.nope")
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line.startswith("meshctl: BAD_REQUEST: unknown method storage.nope; methods: analytics.ingest, ")
    assert "backup.create" in line and "kv.get" in line and "health" in line
    error = json_error(meshctl(live, "call", "storage.kv.nope", "--json"))
    assert error["code"] == "bad_request"
    assert error["message"] == ("BAD_REQUEST: unknown method storage.kv.nope; methods: kv.delete, kv.get, kv.put, "
                                "kv.scan")


def test_empty_results_are_empty_lists(live: MeshHome) -> None:
    for argv in (["alerts"], ["certs", "pending"], ["certs", "list", "--state", "rejected"]):
        done, value = call_json(live, *argv)
        assert done.returncode == 0 and value == [], (argv, done.stdout)
    done = meshctl(live, "alerts")
    assert done.stdout.strip() == "no open alerts"


def test_status_on_a_pipe_is_plain_and_names_each_warning_once(live: MeshHome) -> None:
    done = meshctl(live, "status")
    assert done.returncode == 0, done.stderr
    assert ESC not in done.stdout and ESC not in done.stderr and "pid None" not in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line.startswith("meshctl: warning: ")]
    assert len(warnings) == len(set(warnings)) and sum("keyring" in w or "master key" in w for w in warnings) <= 1


def test_backup_list_and_verify_name_the_archives(live: MeshHome, tmp_path: Path) -> None:
    created, first = call_json(live, "backup", "create")
    assert created.returncode == 0, created.stderr
    _, second = call_json(live, "backup", "create")
    done, rows = call_json(live, "backup", "list")
    assert done.returncode == 0
    mine = [r for r in rows if r["sequence"] in (first["sequence"], second["sequence"])]
    assert [r["file"] for r in mine] == [first["archive"], second["archive"]]
    assert all(r["backup_key_version"] >= 1 and r["passphrase"] is False and r["problem"] is None for r in mine)
    assert all(r["bytes"] == Path(r["path"]).stat().st_size for r in mine)
    text = meshctl(live, "backup", "list").stdout
    assert text.splitlines()[0].split()[:2] == ["SEQUENCE", "CREATED"] and first["archive"] in text
    outside = tmp_path / "copy.cmbak"
    shutil.copy(first["path"], outside)
    done, verified = call_json(live, "backup", "verify", str(outside))
    assert done.returncode == 0, done.stderr
    assert verified["file"] == str(outside) and verified["archive"] == "copy.cmbak"
    assert verified["sequence"] == first["sequence"]
    done = meshctl(live, "backup", "verify", str(outside))
    assert done.returncode == 0 and f"archive verified: {outside}: backup #{first['sequence']}" in done.stdout

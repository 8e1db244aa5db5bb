"""A companion's own service joins a real mesh under supervisord in one command, and leaves it clean.

``examples/notes/notes.py`` (the service docs/services.md walks through) is added with
``meshctl service add`` to a mesh in a temporary home, called through meshctl (it stores through
storage), restarted, revoked, taken back, and removed with nothing of it left: no key, no
certificate on the allow-list, no declaration, no program, no log, no right in the ACL. Both
changes are in the audit log. Bad additions are refused before anything is written.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any

import pytest

from shared import MeshHome, certs

from .processes import REPO
from .test_operations_e2e import meshctl, row, running_mesh, status, wait_until

NOTES = REPO / "examples" / "notes" / "notes.py"
# The operator's overrides as a fragment over the project's mesh.toml: a fast master profile and short
# wrong-password delays, nothing else copied.
FAST = """
[argon2]
test_profiles = true

[argon2.master]
memory_kib = 8192
iterations = 1
parallelism = 1

[keyvault]
unlock_backoff_base_ms = 50
unlock_backoff_max_ms = 200
"""


def fast_fragment(home: MeshHome) -> None:
    home.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (home.root / "mesh.d").mkdir(mode=0o700)
    (home.root / "mesh.d" / "10-fast.toml").write_text(FAST)


@pytest.fixture(scope="module")
def live() -> Iterator[MeshHome]:
    with running_mesh(fast_fragment) as home:
        yield home


def call(home: MeshHome, target: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    done = meshctl(home, "call", target, "--body", json.dumps(body), timeout=60)
    return done.returncode, json.loads(done.stdout) if done.returncode == 0 else None, done.stderr


def nothing_of_notes(home: MeshHome) -> list[str]:
    """Every trace of ``notes`` in the home that removal must not leave (revocations excepted)."""
    left = [str(p) for p in (home.keys.glob("notes.*"))]
    left += [str(p) for p in (home.certs / "allowed").glob("*.key")
             if certs.load_certificate(p).name == "notes"]
    left += [str(p) for p in (home.root / "mesh.d").glob("*notes*")]
    left += [str(p) for p in home.log.glob("notes.log*")]
    if "notes" in (home.run / "programs.conf").read_text():
        left.append(str(home.run / "programs.conf"))
    return left


def test_bad_additions_are_refused_and_leave_nothing(live: MeshHome) -> None:
    for args, code, says in [
        (["notes", "--entry", "notes.py:Notes"], 1, "services.notes.entry"),
        (["notes", "--entry", f"{NOTES}:Notes", "--expose", "get"], 2, "--expose 'get'"),
        (["notes", "--entry", f"{NOTES}:Notes", "--expose", "*.*=operator"], 1, "services.notes.expose"),
        (["Notes", "--entry", f"{NOTES}:Notes"], 2, "not a service name"),
        (["storage", "--entry", f"{NOTES}:Notes"], 1, "already an identity"),
        (["meshctl", "--entry", f"{NOTES}:Notes"], 1, "already an identity"),
        (["mesh", "--entry", f"{NOTES}:Notes"], 1, "the name of the broker's own methods"),
        (["notes"], 2, "needs --entry"),
        (["notes", "--entry", "/nonexistent/notes.py:Notes"], 1, "no file at /nonexistent/notes.py"),
        (["notes", "--entry", "services.storage"], 2, "name the class"),
    ]:
        done = meshctl(live, "service", "add", *args)
        assert done.returncode == code and says in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert nothing_of_notes(live) == []
    done = meshctl(live, "service", "remove", "storage", "--yes")
    assert done.returncode == 1 and "mesh.toml" in done.stderr and "not added by" in done.stderr


def test_add_call_restart_revoke_take_back_and_remove(live: MeshHome) -> None:
    added = meshctl(live, "service", "add", "notes", "--entry", f"{NOTES}:Notes", "--json", timeout=120)
    assert added.returncode == 0, added.stderr
    result = json.loads(added.stdout)
    assert result["healthy"] is True and result["registered"] is True
    for path in (live.secret_key_path("notes"), live.root / "mesh.d" / "service-notes.toml"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    listed = json.loads(meshctl(live, "service", "list", "--json").stdout)["services"]
    notes = next(s for s in listed if s["name"] == "notes")
    assert notes["added"] is True and notes["state"] == "RUNNING" and notes["expose"] == {"*": ["operator"]}
    assert row(status(live), "notes")["healthy"] is True  # status lists every declared service

    code, saved, err = call(live, "notes.put", {"title": "shopping", "text": "oat milk"})
    assert code == 0 and saved == {"saved": "shopping"}, err
    code, got, err = call(live, "notes.get", {"title": "shopping"})
    assert code == 0 and got == {"title": "shopping", "text": "oat milk"}, err
    assert "oat milk" not in (live.log / "notes.log").read_text()  # the note is sensitive: never logged
    assert meshctl(live, "logs", "notes", "-n", "5").returncode == 0

    pid = row(status(live), "notes")["pid"]
    assert meshctl(live, "restart", "notes").returncode == 0
    assert row(status(live), "notes")["pid"] != pid
    assert call(live, "notes.get", {"title": "shopping"})[1]["text"] == "oat milk"  # stored, not in memory

    assert meshctl(live, "certs", "revoke", "notes", "--yes").returncode == 0
    code, _, err = call(live, "notes.get", {"title": "shopping"})
    assert code != 0 and "notes" in err
    assert meshctl(live, "certs", "unrevoke", "notes").returncode == 0
    back = meshctl(live, "restart", "notes", timeout=120)
    assert back.returncode == 0, back.stderr
    assert call(live, "notes.get", {"title": "shopping"})[1]["text"] == "oat milk"

    removed = meshctl(live, "service", "remove", "notes", "--yes", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["revoked"] is True
    assert nothing_of_notes(live) == []
    assert "notes" not in [r["name"] for r in status(live)["services"]]
    assert "notes" not in [s["name"] for s in json.loads(meshctl(live, "service", "list", "--json").stdout)["services"]]
    code, _, err = call(live, "notes.get", {"title": "shopping"})
    assert code != 0 and "FORBIDDEN" in err  # the right the declaration gave is gone with it

    tail = meshctl(live, "audit", "tail", "--json", "-n", "200")
    records = [json.loads(line) for line in tail.stdout.splitlines() if line.strip()]
    kinds = {(r["type"], r["target"]) for r in records}
    assert {("service.added", "notes"), ("service.removed", "notes")} <= kinds
    wait_until(lambda: status(live)["healthy"], 30, "the mesh stays healthy after the removal")

"""meshctl on a bad day against one real mesh under supervisord, through the real CLI.

``certs revoke`` warns when the key is a declared service's, asks, and says "already revoked" the
second time; ``certs list`` filters by role and state; ``ping`` of a sealed service exits with the
sealed verdict's code; ``down`` on a terminal asks, and ``n`` leaves the mesh running. The tests run
in file order and share the mesh: ``down`` is asked first, while every process is steady; the
certificate tests revoke pairing; the last one seals the mesh.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shared import MeshHome
from tools.meshctl_cli._supervisor import home_processes
from tools.meshctl_cli._verdict import EXIT_CODES

from .test_meshctl_safety import Terminal, one_line, run
from .test_operations_e2e import running_mesh


@pytest.fixture(scope="module")
def live() -> Iterator[MeshHome]:
    with running_mesh() as home:
        yield home


def certs(home: MeshHome, *args: str) -> list[dict[str, str]]:
    done = run(home, "certs", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, str]] = json.loads(done.stdout)
    return listed


def test_down_on_a_terminal_asks_and_no_leaves_the_mesh_running(live: MeshHome) -> None:
    before = sorted(home_processes(live))
    term = Terminal(live, "down")
    shown = term.expect("[y/N]")
    assert f"stop the mesh in {live.root} ({len(before)} processes" in shown
    term.send(b"no\n")
    status, shown = term.finish()
    assert status == 1 and "aborted: nothing changed" in shown
    assert sorted(home_processes(live)) == before


def test_certs_list_filters_by_role_and_state(live: MeshHome) -> None:
    everything = certs(live)
    services = certs(live, "--role", "service")
    assert services and {e["role"] for e in services} == {"service"}
    assert {e["name"] for e in services} == {e["name"] for e in everything if e["role"] == "service"}
    operators = certs(live, "--state", "allowed", "--role", "operator")
    assert [(e["name"], e["state"]) for e in operators] == [("meshctl", "allowed")]
    assert certs(live, "--role", "plugin") == []  # an empty result is a list, not nothing
    assert run(live, "certs", "list", "--role", "plugin").stdout.strip() == "no certificates"


def test_revoking_a_service_key_warns_that_it_stops_and_no_keeps_it(live: MeshHome) -> None:
    term = Terminal(live, "certs", "revoke", "pairing")
    shown = term.expect("[y/N]")
    assert "WARNING: pairing will stop: it is a service this mesh declares" in shown
    assert "revoke the certificate of pairing (role service, fingerprint " in shown
    term.send(b"n\n")
    status, shown = term.finish()
    assert status == 1 and "meshctl: aborted: nothing changed" in shown, shown
    assert [e["state"] for e in certs(live, "--role", "service") if e["name"] == "pairing"] == ["allowed"]


def test_revoke_with_yes_then_again_says_already_revoked(live: MeshHome) -> None:
    done = run(live, "certs", "revoke", "pairing", "--yes")
    assert done.returncode == 0 and done.stdout.startswith("revoked pairing"), done.stderr
    assert [e["name"] for e in certs(live, "--state", "revoked")] == ["pairing"]
    again = run(live, "certs", "revoke", "pairing", "--yes", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert (result["name"], result["revoked"], result["already_revoked"]) == ("pairing", True, True)
    text = run(live, "certs", "revoke", "pairing", "-y")
    assert text.returncode == 0 and "pairing (fingerprint " in text.stdout
    assert "is already revoked: nothing changed" in text.stdout
    # A revoked key is no longer asked about: the second revoke on a terminal answers at once.
    term = Terminal(live, "certs", "revoke", "pairing")
    status, shown = term.finish()
    assert status == 0 and "[y/N]" not in shown and "already revoked" in shown, shown
    assert run(live, "certs", "unrevoke", "pairing").returncode == 0  # unrevoke is not destructive


def test_ping_exits_with_the_verdict_of_the_process(live: MeshHome) -> None:
    assert run(live, "ping", "keyvault").returncode == EXIT_CODES["healthy"]
    locked = run(live, "security", "lock", "--yes")
    assert locked.returncode == 0, locked.stderr
    sealed = run(live, "ping", "keyvault")
    assert sealed.returncode == EXIT_CODES["sealed"] == 3
    assert "keyvault: sealed in" in sealed.stdout
    assert "keyvault is sealed: run `meshctl security unlock`" in one_line(sealed.stderr)
    as_json = run(live, "ping", "keyvault", "--json")
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["reply"]["state"] == "sealed"
    assert run(live, "ping", "mesh").returncode == 0  # the broker itself has no readiness to report

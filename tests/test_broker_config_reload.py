"""``mesh.config.reload``: an operator applies the layered configuration's ACL and rate limits to the
running broker, without restarting it or any peer.

Hostile first: only an operator may reload; an invalid fragment is refused with the file and key
named and the running ACL stays in force; a right taken away is refused on the very next call of a
connection that used it a moment before (its cached decision is gone too); a right given is granted
on the same connection. Then what the reply and the audit record carry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.audit.sanitize import sanitize_details
from services.broker import configuration
from shared import BadRequest, Conflict, Forbidden, MeshConfig, RateLimited, append_record

from .echo_service import Echo
from .mesh import InProcessMesh
from .test_broker_attacks import read_spool

OUTSIDER_WITHOUT_RIGHTS = """
[acl.identity.outsider]
call = []
publish = ["outsider."]
subscribe = []
"""

OUTSIDER_MAY_ECHO = """
[acl.identity.outsider]
call = ["echo.health", "echo.echo"]
publish = ["outsider."]
subscribe = ["outsider."]
"""


@pytest.fixture(autouse=True)
def layered_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The broker reads ``<home>/mesh.toml`` and ``<home>/mesh.d``, never an outside file."""
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    yield


def write_fragment(mesh: InProcessMesh, name: str, text: str, mode: int = 0o600) -> Path:
    folder = mesh.home.root / "mesh.d"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def records(mesh: InProcessMesh, kind: str) -> list[dict]:
    return [r for r in read_spool(mesh) if r.get("type") == kind]


# -- hostile ----------------------------------------------------------------------------------


async def test_only_an_operator_may_reload(mesh: InProcessMesh) -> None:
    write_fragment(mesh, "10-outsider", OUTSIDER_MAY_ECHO)
    await mesh.start_service(Echo())
    outsider = await mesh.client("outsider")
    service = await mesh.client("storage")  # a service identity: no mesh.* either
    for caller in (outsider, service):
        with pytest.raises(Forbidden, match=rf"^'{caller.name}' is not allowed to call 'mesh.config.reload'"):
            await caller.call("mesh.config.reload", timeout=2)
    # Nothing was applied: the fragment would have let outsider call echo.echo.
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)
    assert not records(mesh, "mesh.config_reloaded")
    denied = [r for r in records(mesh, "mesh.deny") if r["target"] == "mesh.config.reload"]
    assert {r["actor"] for r in denied} == {"outsider", "storage"}


@pytest.mark.parametrize(("text", "mode", "names"), [
    ('[acl.identity.outsider]\ncall = ["echo.echo"]\ncalls = []\n', 0o600, "acl.identity.outsider.calls: unknown key"),
    ('[acl.identity.outsider]\ncall = ["echo.*.*"]\n', 0o600, "acl.identity.outsider.call: 'echo.*.*'"),
    ("[acl.identity.outsider\n", 0o600, "not valid TOML"),
    ('[acl.identity.outsider]\ncall = ["echo.echo"]\n', 0o620, "writable by group or others"),
])
async def test_an_invalid_fragment_is_refused_and_the_running_acl_stays(
        mesh: InProcessMesh, text: str, mode: int, names: str) -> None:
    await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    outsider = await mesh.client("outsider")
    assert (await outsider.call("echo.health", timeout=2))["state"] == "ready"
    fragment = write_fragment(mesh, "10-outsider", text, mode)
    with pytest.raises(BadRequest) as refused:
        await operator.call("mesh.config.reload", timeout=2)
    assert refused.value.message.startswith(f"{fragment}:") and names in refused.value.message
    # The configuration in force is the one from before: echo.health allowed, echo.echo not.
    assert (await outsider.call("echo.health", timeout=2))["state"] == "ready"
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)
    late = await mesh.client("outsider")  # a connection made after the refusal: the old rights too
    with pytest.raises(Forbidden):
        await late.call("echo.echo", {"value": 1}, timeout=2)
    assert not records(mesh, "mesh.config_reloaded")
    [refusal] = records(mesh, "mesh.config_refused")  # audited: who asked, and the error it got
    assert refusal["actor"] == "meshctl" and refusal["error"] == refused.value.message


async def test_a_file_edited_while_it_is_read_is_not_applied(mesh: InProcessMesh,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    outsider = await mesh.client("outsider")
    fragment = write_fragment(mesh, "10-outsider", OUTSIDER_MAY_ECHO)
    read = configuration.mesh_config

    def edited_meanwhile(root: Path) -> MeshConfig:  # the files as parsed are not the files as digested after
        config = read(root)
        fragment.write_text(OUTSIDER_MAY_ECHO + "# edited\n")
        return config

    monkeypatch.setattr(configuration, "mesh_config", edited_meanwhile)
    with pytest.raises(Conflict, match="changed while they were read; reload again"):
        await operator.call("mesh.config.reload", timeout=2)
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)
    assert not records(mesh, "mesh.config_reloaded")
    monkeypatch.setattr(configuration, "mesh_config", read)
    await operator.call("mesh.config.reload", timeout=2)  # called again: applied
    assert (await outsider.call("echo.echo", {"value": 1}, timeout=2))["value"] == 1


async def test_a_right_removed_by_reload_is_denied_on_the_very_next_call(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    outsider = await mesh.client("outsider")
    events = await outsider.subscribe("outsider.", timeout=2)
    assert (await outsider.call("echo.health", timeout=2))["state"] == "ready"  # allowed, and cached
    await outsider.publish("outsider.before", timeout=2)
    # Its own event came back before the publish was acknowledged (one connection, in order).
    assert (await events.next(timeout=2)).topic == "outsider.before"

    write_fragment(mesh, "10-outsider", OUTSIDER_WITHOUT_RIGHTS)
    await operator.call("mesh.config.reload", timeout=2)

    with pytest.raises(Forbidden, match=r"^'outsider' is not allowed to call 'echo.health'"):
        await outsider.call("echo.health", timeout=2)
    # Its subscription went with the right to subscribe: publishing (still allowed) no longer
    # delivers to it, and it cannot subscribe again.
    await outsider.publish("outsider.after", timeout=2)
    assert events.queue.empty()
    with pytest.raises(Forbidden):
        await outsider.subscribe("outsider.", timeout=2)
    assert outsider.connection.generation == 1  # the same connection all along


async def test_a_right_added_by_reload_is_granted_without_restarting_broker_or_peer(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    broker = mesh.broker
    operator = await mesh.client("meshctl")
    outsider = await mesh.client("outsider")
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 7}, timeout=2)  # denied, and the denial cached

    write_fragment(mesh, "10-outsider", OUTSIDER_MAY_ECHO)
    await operator.call("mesh.config.reload", timeout=2)

    echoed = await outsider.call("echo.echo", {"value": 7}, timeout=2)
    assert (echoed["value"], echoed["caller"]) == (7, "outsider")
    assert mesh.broker is broker and outsider.connection.generation == 1


async def test_reloaded_rate_limits_apply_to_connected_peers(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    operator = await mesh.client("meshctl")
    outsider = await mesh.client("outsider")
    for _ in range(10):  # the default limit: thousands a second
        await outsider.call("echo.health", timeout=2)
    write_fragment(mesh, "10-slow", "[limits.identity.outsider]\nrate = 0.001\nburst = 1\n")
    await operator.call("mesh.config.reload", timeout=2)
    # The bucket keeps at most the new burst: one call may pass, the next cannot.
    with pytest.raises(RateLimited):
        for _ in range(2):
            await outsider.call("echo.health", timeout=2)


# -- what it answers and records -------------------------------------------------------------


async def test_the_reply_names_what_needs_a_restart_and_the_reload_is_audited(mesh: InProcessMesh) -> None:
    operator = await mesh.client("meshctl")
    [start] = records(mesh, "mesh.config")

    unchanged = await operator.call("mesh.config.reload", timeout=2)
    assert unchanged == {"sha256": start["sha256"], "previous_sha256": start["sha256"], "restart_needed": []}

    write_fragment(mesh, "10-ops", "[broker]\nliveness_ms = 6000\nzap_domain = \"other\"\n\n"
                                   "[runtime]\nmax_concurrent = 8\n\n" + OUTSIDER_MAY_ECHO
                   + "\n[limits.identity.outsider]\nrate = 5.0\nburst = 5\n")
    reply = await operator.call("mesh.config.reload", timeout=2)
    # ACL and limits are applied; everything else that differs is named, in the configuration's order.
    assert reply["restart_needed"] == ["broker.zap_domain", "broker.liveness_ms", "runtime.max_concurrent"]
    assert reply["previous_sha256"] == start["sha256"] and reply["sha256"] != start["sha256"]

    [record] = records(mesh, "mesh.config_reloaded")[-1:]
    assert (record["actor"], record["role"]) == ("meshctl", "operator")
    assert (record["previous_sha256"], record["sha256"]) == (start["sha256"], reply["sha256"])
    shipped = append_record(record)  # as audit will keep it: its own schema, nothing dropped
    assert sanitize_details(shipped["details"], b"k" * 32, shipped["type"]) == {
        "subject": "meshctl", "role": "operator", "previous_sha256": start["sha256"], "sha256": reply["sha256"]}

    again = await operator.call("mesh.config.reload", timeout=2)  # not restarted: still needed
    assert again["restart_needed"] == reply["restart_needed"]
    assert again["previous_sha256"] == again["sha256"] == reply["sha256"]

    # The digest is the one a start records over the same files, fragments included.
    mesh.stop_broker()
    mesh.start_broker()
    assert records(mesh, "mesh.config")[-1]["sha256"] == reply["sha256"]


async def test_the_request_body_is_checked_against_the_declared_schema(mesh: InProcessMesh) -> None:
    operator = await mesh.client("meshctl")
    with pytest.raises(BadRequest, match=r"^Empty: 1 unknown field\(s\); allowed: none$"):
        await operator.call("mesh.config.reload", {"path": "/etc/passwd"}, timeout=2)
    assert not records(mesh, "mesh.config_reloaded")


async def test_a_declaration_added_by_a_fragment_is_in_force_and_needs_no_restart(mesh: InProcessMesh) -> None:
    """``meshctl service add`` writes a ``[services.x]`` fragment and reloads: what the declaration
    exposes is granted at once, and its keys (keyvault follows the files) and its program
    (supervisord, applied by meshctl) are not reported as needing a broker restart."""
    await mesh.start_service(Echo())
    outsider = await mesh.client("outsider")
    with pytest.raises(Forbidden):
        await outsider.call("echo.echo", {"value": 1}, timeout=2)
    operator = await mesh.client("meshctl")
    write_fragment(mesh, "service-echo", '[services.echo]\nentry = "/opt/echo.py:Echo"\nkeys = ["files"]\n'
                                         '[services.echo.expose]\n"echo" = ["outsider"]\n')
    reply = await operator.call("mesh.config.reload", timeout=5)
    assert reply["restart_needed"] == []
    assert await outsider.call("echo.echo", {"value": 1}, timeout=2) is not None

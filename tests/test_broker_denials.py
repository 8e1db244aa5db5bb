"""A deny says what would allow it: the caller learns its identity and the target, the broker's
log (the operator's view) names the mesh.toml rule; a looping caller does not flood the log."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from shared import Forbidden

from .echo_service import Echo
from .mesh import InProcessMesh
from .test_broker_attacks import read_spool


def denied(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "denied"]


async def test_a_denied_call_names_caller_and_target_and_the_log_names_the_rule(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    outsider = await mesh.client("outsider")
    with capture_logs() as logs:
        with pytest.raises(Forbidden) as refused:
            await outsider.call("echo.echo", {"value": 1}, timeout=2)
    assert refused.value.message == ("'outsider' is not allowed to call 'echo.echo': ask an operator "
                                     "(the broker's log names the rule)")
    assert "acl" not in refused.value.message  # the caller learns nothing of the ACL
    [entry] = denied(logs)
    assert (entry["identity"], entry["role"], entry["action"], entry["target"]) == (
        "outsider", "device", "call", "echo.echo")
    assert entry["allow_with"] == ('add "echo" = ["outsider"] (or ["device"] for every device) to '
                                   "[services.echo.expose] where echo is declared (mesh.toml or <home>/mesh.d/; "
                                   "meshctl service list), then meshctl config reload")
    assert entry["log_level"] == "warning"
    # Still audited as before.
    assert any(r["type"] == "mesh.deny" and r["target"] == "echo.echo" for r in read_spool(mesh))


async def test_publish_subscribe_and_register_denies_carry_their_own_hint(mesh: InProcessMesh) -> None:
    outsider = await mesh.client("outsider")
    with capture_logs() as logs:
        with pytest.raises(Forbidden, match=r"^'outsider' is not allowed to publish 'test.x'"):
            await outsider.publish("test.x", timeout=2)
        with pytest.raises(Forbidden, match=r"^'outsider' is not allowed to subscribe 'alerts.'"):
            await outsider.subscribe("alerts.", timeout=2)
        with pytest.raises(Forbidden, match=r"^'outsider' is not allowed to register 'outsider'"):
            await outsider.connection.request({"k": "reg", "name": "outsider"}, None, 2)
    hints = {e["action"]: e["allow_with"] for e in denied(logs)}
    assert hints["publish"].startswith('add "test.x" to publish in [services.outsider] where it is declared')
    assert hints["subscribe"].startswith('add "alerts." to subscribe in [services.outsider] where it is declared')
    assert hints["register"] == ("a service registers only under its own certificate's name with role "
                                 "service (this certificate: 'outsider', role 'device')")


async def test_a_repeated_deny_is_answered_and_audited_every_time_but_logged_once(mesh: InProcessMesh) -> None:
    outsider = await mesh.client("outsider")
    with capture_logs() as logs:
        for _ in range(5):
            with pytest.raises(Forbidden):
                await outsider.call("echo.echo", timeout=2)
        with pytest.raises(Forbidden):
            await outsider.call("echo.block", timeout=2)  # another target is logged on its own
    assert [e["target"] for e in denied(logs)] == ["echo.echo", "echo.block"]
    assert sum(r["type"] == "mesh.deny" for r in read_spool(mesh)) == 6

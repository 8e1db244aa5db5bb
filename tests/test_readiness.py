"""Health tells the truth (DESIGN.md invariant 11): each service reports ``ready``, ``sealed``,
``degraded`` or ``failed`` with a reason and the dependency at fault, and meshctl's verdict is
healthy only when every process is ready.

The verdict itself is a pure function (tools/meshctl_cli/_verdict.py), judged here on made-up rows;
the services' readiness is checked over a real in-process mesh (keyvault, audit, storage) with a
really damaged SQLCipher page; tests/test_operations_e2e.py runs the same through the real CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.audit.store import db_path
from services.storage.service import Storage
from shared import FAILED, READY, SEALED, MeshError, Readiness, Service
from shared.testing import call_handler
from tools.meshctl_cli._verdict import EXIT_CODES, judge, readiness

from .conftest import eventually
from .test_audit_service import PASSWORD, rig

# -- the verdict, judged on made-up rows ------------------------------------------------


def _rows(**states: Any) -> list[dict[str, Any]]:
    """Rows for ``judge``: ``name=state`` or ``name=(state, reason, dependency)``; every other
    process of a mesh is ready."""
    names = ["broker", "keyvault", "authn", "storage", "audit", "supervisor-events"]
    rows = []
    for name in names:
        value = states.get(name.replace("-", "_"), "ready")
        state, reason, dependency = value if isinstance(value, tuple) else (value, None, None)
        if state != "ready" and reason is None:
            reason = f"{name} says why"
        health = {"state": state, "reason": reason, "dependency": dependency}
        rows.append({"name": name, "ready": readiness(name, "RUNNING", True, health)})
    return rows


def test_every_process_ready_is_healthy_and_exits_0() -> None:
    verdict = judge(_rows(), [])
    assert (verdict["state"], verdict["exit_code"], verdict["verdict"]) == ("healthy", 0, "healthy")


def test_a_sealed_mesh_is_sealed_not_healthy_nor_broken() -> None:
    verdict = judge(_rows(keyvault="sealed", storage=("sealed", "locked", "keyvault"), audit="sealed"), [])
    assert (verdict["state"], verdict["exit_code"]) == ("sealed", 3)
    assert verdict["problems"] == [] and "meshctl security unlock" in verdict["verdict"]
    assert "storage, audit wait for it" in verdict["verdict"]


def test_a_service_sealed_while_keyvault_is_unsealed_is_unhealthy() -> None:
    # Right after `up`, or after an unlock: storage still has no keys. It is not ready.
    verdict = judge(_rows(storage=("sealed", "waiting for its keys from keyvault", "keyvault")), [])
    assert (verdict["state"], verdict["exit_code"]) == ("unhealthy", 1)
    assert verdict["problems"] == ["storage: sealed: waiting for its keys from keyvault (waits on keyvault), "
                                   "although keyvault is unsealed"]


def test_a_failed_dependency_is_named_with_the_process_it_stops() -> None:
    verdict = judge(_rows(audit=("failed", "audit.db failed its integrity check (page 3)", None),
                          storage=("failed", "cannot fetch its keys: keyvault answered UNAVAILABLE", "keyvault"),
                          keyvault=("degraded", "releases no key: audit cannot record", "audit")), [])
    assert (verdict["state"], verdict["exit_code"]) == ("unhealthy", 1)
    assert verdict["problems"] == [
        "storage: failed: cannot fetch its keys: keyvault answered UNAVAILABLE (waits on keyvault)",
        "audit: failed: audit.db failed its integrity check (page 3)"]
    assert verdict["degraded"] == ["keyvault: degraded: releases no key: audit cannot record (waits on audit)"]


def test_degraded_is_its_own_verdict() -> None:
    verdict = judge(_rows(supervisor_events=("degraded", "process events were lost: dropped 3", None)), [])
    assert (verdict["state"], verdict["exit_code"]) == ("degraded", 4)
    assert "supervisor-events: degraded: process events were lost: dropped 3" in verdict["verdict"]


def test_down_unregistered_silent_and_unknown_states_are_unhealthy() -> None:
    assert readiness("audit", "FATAL (Exited too quickly)", False, None) == {
        "state": "down", "reason": "FATAL (Exited too quickly)", "dependency": None}
    assert readiness("audit", "RUNNING", False, None)["reason"] == "not registered with the broker"
    assert readiness("audit", "RUNNING", True, {"error": "TIMEOUT"})["reason"] == "does not answer health (TIMEOUT)"
    # A health reply of an older shape (no state) is not taken for ready.
    assert readiness("audit", "RUNNING", True, {"status": "ok"})["state"] == "down"
    assert readiness("audit", "RUNNING", True, {"state": "fine"})["state"] == "failed"
    rows = [{"name": "audit", "ready": readiness("audit", "FATAL (Exited too quickly)", False, None)}]
    assert judge(rows, [])["problems"] == ["audit: FATAL (Exited too quickly)"]
    assert judge([], ["the mesh is down"])["state"] == "unhealthy"
    assert set(EXIT_CODES.values()) == {0, 1, 3, 4}  # 2 stays the usage error


def test_readiness_refuses_a_state_without_a_reason() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        Readiness(FAILED)
    with pytest.raises(ValueError, match="not one of"):
        Readiness("ok")
    assert Readiness(READY).to_wire() == {"state": "ready", "reason": None, "dependency": None}


async def test_a_plain_service_is_ready() -> None:
    class Plain(Service):
        name = "plain"

    reply = await call_handler(Plain(), "health")
    assert {k: reply[k] for k in ("service", "state", "reason", "dependency")} == {
        "service": "plain", "state": "ready", "reason": None, "dependency": None}


# -- the services, over a real mesh ----------------------------------------------------


def _damage_a_middle_page(path: Path) -> tuple[int, bytes]:
    """Overwrite 64 bytes in the middle of the closed database: one page's HMAC no longer matches.
    Returns where and what was there, for a test that repairs it."""
    size = path.stat().st_size
    assert size >= 4 * 4096, "the log must span several pages for a middle page to exist"
    with path.open("r+b") as f:
        f.seek(size // 2)
        original = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in original))  # every byte changed, unlike random bytes
    return size // 2, original


async def test_a_damaged_audit_database_is_named_and_stops_the_mesh_from_being_ready(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(400, details={"note": "x" * 100})
        await r.stop_audit()  # the final checkpoint, then the WAL folds into the file
        path = db_path(r.home)
        _damage_a_middle_page(path)
        audit = await r.start_audit()

        health = await r.operator.call("audit.health", timeout=5)
        assert (health["state"], health["log"], health["dependency"]) == ("failed", "failed", None)
        assert str(path) in health["reason"] and "integrity check (page" in health["reason"]
        assert "restore audit.db" in health["reason"]

        # audit.verify names the fault instead of answering INTERNAL.
        report = await r.operator.call("audit.verify", timeout=30)
        assert report["ok"] is False and report["first_bad"] is None
        assert report["damaged"]["file"] == str(path) and report["damaged"]["pages"]
        assert f"page {report['damaged']['pages'][0]}" in report["error"]

        # keyvault cannot release keys while audit cannot record them: it says so, naming audit.
        with pytest.raises(MeshError) as refused:
            await r.producer.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
        assert refused.value.code == "UNAVAILABLE"
        vault = await call_handler(r.vault, "health")
        assert (vault["state"], vault["dependency"]) == ("degraded", "audit")

        # storage, which needs those keys, is failed (not "sealed"), naming keyvault and its answer.
        storage = Storage(r.home, r.mesh.config)
        runner = await r.mesh.start_service(storage)
        try:
            reply = await call_handler(storage, "health")
            assert (reply["state"], reply["dependency"]) == ("failed", "keyvault"), reply
            assert "audit is not recording" in reply["reason"]
        finally:
            await runner.stop()
            await runner.client.close()
        assert audit.readiness().state == FAILED


async def test_locking_seals_audit_and_storage_with_keyvault_and_unlocking_makes_them_ready(
        short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        storage = Storage(r.home, r.mesh.config)
        runner = await r.mesh.start_service(storage)
        try:
            assert storage.readiness() == Readiness(READY)
            await call_handler(r.vault, "lock", caller="meshctl", role="operator")
            await eventually(lambda: _state(storage, SEALED), deadline=10)
            await eventually(lambda: _state(r.audit, SEALED), deadline=10)
            for service in (storage, r.audit):
                assert service is not None
                sealed = service.readiness()
                assert sealed.dependency == "keyvault" and "meshctl security unlock" in (sealed.reason or "")
            assert (await call_handler(r.vault, "health"))["state"] == "sealed"
            await call_handler(r.vault, "unlock", {"password": PASSWORD}, caller="meshctl", role="operator")
            await eventually(lambda: _state(r.audit, READY), deadline=10)
            await eventually(lambda: _state(storage, READY), deadline=10)
        finally:
            await runner.stop()
            await runner.client.close()


async def _state(service: Any, want: str) -> bool:
    return bool(service.readiness().state == want)

"""Getting every producer's audit records into audit (DESIGN.md invariants 7 and 9): spooled while
audit is down, shipped once it is up, nothing lost; key releases fail closed on audit."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from services.audit.service import Audit
from services.audit.store import StoreError
from services.keyvault.service import REFUSED_NOT_RECORDING, Keyvault
from shared import (
    AuditShipper,
    Forbidden,
    MeshClient,
    MeshError,
    Sealed,
    Spool,
    Unauthenticated,
    Unavailable,
    append_record,
    append_records,
)

from .conftest import eventually
from .test_audit_service import PASSWORD, Rig
from .test_audit_service import rig as audit_rig


class DeliveryRig(Rig):
    """The audit tests' rig with producers shipping their spools, and a few helpers."""

    @property
    def storage(self) -> MeshClient:
        return self.producer

    async def start_audit(self) -> Audit:
        audit = await super().start_audit()
        assert audit.state == "ok"
        return audit

    async def tail(self, **query: Any) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = (await self.operator.call("audit.tail", {"limit": 1000, **query},
                                                                   timeout=5))["records"]
        return records

    async def broker_spool(self) -> int:
        stats = await self.operator.call("mesh.stats", timeout=5)
        return int(stats["audit_spool"]["records"])

    async def key(self, purpose: str = "sqlcipher") -> dict[str, Any]:
        reply: dict[str, Any] = await self.storage.call("keyvault.keys.get", {"purpose": purpose}, timeout=5)
        return reply


def rig(root: Path, *, audit: bool = True) -> Any:
    return audit_rig(root, audit=audit, ship=True, kind=DeliveryRig)


def spooled(vault: Keyvault, event: str) -> list[dict[str, Any]]:
    assert vault.spool is not None
    return [rec for rec in vault.spool.pending(len(vault.spool)) if rec["type"] == event]


# -- the mapping and the shipper on their own -------------------------------------------------


def test_spool_records_map_to_the_append_schema_without_the_actor() -> None:
    record = {"type": "mesh.deny", "time": 12.5, "actor": "storage", "role": "service",
              "action": "call", "target": "keyvault.lock"}
    assert append_record(record) == {
        "type": "mesh.deny", "outcome": "denied", "target": "keyvault.lock", "time": 12.5,
        "details": {"subject": "storage", "role": "service", "action": "call"}}
    odd = append_record({"type": "keyvault.unlock", "outcome": "wrong-password", "target": 7, "time": "x"})
    assert odd == {"type": "keyvault.unlock", "outcome": "wrong-password", "details": {"target": 7}}
    assert append_record({"type": "spool.overflow", "dropped": 3})["outcome"] == "lost"
    big = [{"type": "t", "blob": "x" * 1000} for _ in range(10)]
    assert len(append_records(big, max_bytes=3000)) == 2 and len(append_records(big, max_bytes=10)) == 1


class FlakyAudit:
    """A client whose ``audit.append`` fails ``failures`` times, then records what it gets."""

    def __init__(self, failures: list[MeshError]) -> None:
        self.failures = failures
        self.received: list[dict[str, Any]] = []
        self.calls = 0
        self.delivered = asyncio.Event()

    async def call(self, target: str, body: Any = None, *, timeout: float | None = None) -> Any:
        assert target == "audit.append" and timeout is not None
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.received += body["records"]
        self.delivered.set()
        return {"first_seq": 0, "last_seq": len(body["records"]) - 1}


async def test_the_shipper_retries_until_audit_takes_the_records_and_never_drops(short_tmp: Path) -> None:
    spool = Spool(short_tmp / "p.spool", 1000)
    for i in range(150):
        spool.append({"type": "test.event", "time": float(i), "n": i})
    client = FlakyAudit([Unavailable("audit is not registered"), Sealed("audit is sealed")])
    shipper = AuditShipper(spool, client, min_backoff=0.01, max_backoff=0.05, period=0.05)
    shipper.start()
    try:
        await eventually(lambda: _true(len(spool) == 0), deadline=10)
    finally:
        await shipper.stop()
    assert [r["details"]["n"] for r in client.received] == list(range(150))  # in order, none lost
    assert client.calls == 4 and shipper.failures == 2  # two refusals, then batches of 100 and 50
    spool.close()
    assert len(Spool(short_tmp / "p.spool", 1000)) == 0  # the ack is on disk


async def _true(value: bool) -> bool:
    return value


async def test_the_shipper_stops_even_when_notified_as_it_stops(short_tmp: Path) -> None:
    """A record spooled just as its service stops must not keep the shipper running: with
    ``asyncio.wait_for`` on Python 3.11 the wake-up won, the cancellation was lost, and ``stop()``
    (awaited by the service's on_stop) waited forever."""
    spool = Spool(short_tmp / "p.spool", 10)
    spool.append({"type": "test.event", "time": 1.0})
    client = FlakyAudit([])
    shipper = AuditShipper(spool, client, period=3600)
    shipper.start()
    task = shipper._task
    assert task is not None
    try:
        await eventually(lambda: _true(len(spool) == 0))  # shipped and acked: it now waits to be woken
        shipper.notify()  # a new record, and the stop, in the same turn of the event loop
        # stop() swallows a cancellation of its own caller, so the deadline's expiry is asked, not raised.
        async with asyncio.timeout(5) as deadline:
            await shipper.stop()
        assert not deadline.expired(), "the shipper ignored its cancellation: stop() waited for the deadline"
        assert task.cancelled()
    finally:
        task.cancel()
        spool.close()


# -- over a real mesh --------------------------------------------------------------------------


async def test_a_broker_deny_while_audit_is_down_reaches_audit_once_it_is_up(short_tmp: Path) -> None:
    async with rig(short_tmp / "h", audit=False) as r:
        # The broker's ACL refuses it (services may not seal the mesh); a timeout or an unavailable
        # keyvault would not be that deny, and no deny would be spooled.
        with pytest.raises(Forbidden, match=re.escape("not allowed to call 'keyvault.lock'")):
            await r.storage.call("keyvault.lock", timeout=5)
        assert await r.broker_spool() >= 1  # kept by the broker while audit is away
        await r.start_audit()

        async def delivered() -> list[dict[str, Any]]:
            if await r.broker_spool():
                return []
            return [t for t in await r.tail(type="mesh.deny") if t["details"].get("subject") == "storage"]
        denies = await eventually(delivered, deadline=15)
        assert len(denies) == 1  # delivered once
        assert denies[0]["actor"] == "broker"  # stamped by audit from the authenticated sender
        assert denies[0]["target"] == "keyvault.lock" and denies[0]["outcome"] == "denied"
        assert denies[0]["details"]["subject"] == "storage" and denies[0]["details"]["action"] == "call"
        registered = [t["details"]["service"] for t in await r.tail(type="mesh.register")]
        assert {"keyvault", "audit"} <= set(registered)  # what came before audit arrived, too


async def test_keyvault_records_and_audits_own_key_fetches_reach_audit(short_tmp: Path) -> None:
    async with rig(short_tmp / "h", audit=False) as r:
        with pytest.raises(Unauthenticated, match=r"^wrong password$"):
            await r.operator.call("keyvault.unlock", {"password": "wrong-" + PASSWORD}, timeout=10)
        # Audit fetches its own keys with no audit running: released, spooled, shipped later.
        await r.start_audit()

        async def shipped() -> bool:
            assert r.vault.spool is not None
            return len(r.vault.spool) == 0 and bool(await r.tail(type="keyvault.unlock"))
        await eventually(shipped, deadline=15)
        unlock = await r.tail(type="keyvault.unlock")
        assert [(t["actor"], t["outcome"], t["details"]["subject"]) for t in unlock] == [
            ("keyvault", "wrong-password", "meshctl")]
        own = await r.tail(type="keyvault.key_release")
        assert sorted(t["details"]["purpose"] for t in own) == ["audit-hmac", "audit-signing"]
        assert {t["details"]["subject"] for t in own} == {"audit"}
        text = repr(await r.tail())
        assert PASSWORD not in text


async def test_with_audit_stopped_a_key_release_is_refused_and_works_again_once_it_is_back(
        short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        key = await r.key()
        releases = await r.tail(type="keyvault.key_release", actor="keyvault")
        recorded = [t for t in releases if t["target"] == "sqlcipher"]
        assert len(recorded) == 1 and recorded[0]["details"]["subject"] == "storage"
        await r.stop_audit()
        with pytest.raises(Unavailable, match=f"^{re.escape(REFUSED_NOT_RECORDING)}$"):
            await r.key()
        refusals = spooled(r.vault, "keyvault.key_refused")
        assert [(x["purpose"], x["reason"]) for x in refusals] == [("sqlcipher", "audit not recording")]
        await r.start_audit()
        assert await r.key() == key

        async def refusal_recorded() -> list[dict[str, Any]]:
            return await r.tail(type="keyvault.key_refused")
        shipped = await eventually(refusal_recorded, deadline=15)
        assert shipped[0]["details"]["reason"] == "audit not recording" and shipped[0]["outcome"] == "refused"
        assert len([t for t in await r.tail(type="keyvault.key_release") if t["target"] == "sqlcipher"]) == 2


async def test_with_audits_database_write_failing_a_key_release_is_refused(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        audit = r.audit
        assert audit is not None and audit.store is not None
        store = audit.store
        original = store.append

        def failing(entries: Any, checkpoint: Any = None) -> None:
            raise StoreError("disk I/O error (planted)")
        store.append = failing  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match=f"^{re.escape(REFUSED_NOT_RECORDING)}$"):
            await r.key()
        # A broker deny meanwhile stays in the broker's spool: its shipment fails too.
        with pytest.raises(Forbidden, match=re.escape("not allowed to call 'keyvault.lock'")):
            await r.storage.call("keyvault.lock", timeout=5)
        assert await r.broker_spool() >= 1
        store.append = original  # type: ignore[method-assign]
        await r.key()

        async def deny_delivered() -> bool:
            return await r.broker_spool() == 0 and bool(await r.tail(type="mesh.deny"))
        await eventually(deny_delivered, deadline=15)
        denies = [t for t in await r.tail(type="mesh.deny") if t["details"].get("subject") == "storage"]
        assert len(denies) == 1

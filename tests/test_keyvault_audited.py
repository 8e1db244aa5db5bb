"""keyvault's refusals and releases reach the real audit log (DESIGN.md invariants 3 and 7).

tests/test_keyvault.py checks what keyvault hands to a recording stand-in for audit; here the same
refusals happen over a real in-process mesh (real CURVE keys, the broker's stamped identities) with
the real audit service and its SQLCipher log, and each one is read back through ``audit.tail`` as
an operator, from a freshly restarted audit service, so that what is found is what was made durable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from services.keyvault.service import REFUSED_NOT_RECORDING, Keyvault
from shared import Forbidden, Sealed, Unauthenticated, Unavailable

from .conftest import eventually
from .mesh import InProcessMesh
from .test_audit_delivery import DeliveryRig
from .test_audit_service import PASSWORD
from .test_audit_service import rig as audit_rig
from .test_keyvault import Clock


class ClockedRig(DeliveryRig):
    """The audit delivery rig with keyvault on an injected clock: the delay a wrong password imposes
    on the next password check is passed by moving the clock, never by waiting."""

    def __init__(self, mesh: InProcessMesh) -> None:
        super().__init__(mesh)
        self.clock = Clock()
        self.vault = Keyvault(mesh.home, mesh.config, clock=self.clock)


def summary(record: dict[str, Any], *fields: str) -> tuple[Any, ...]:
    """Who recorded it (the actor audit stamped from the authenticated sender), the outcome, who
    asked keyvault (``details.subject``), then the named ``details`` fields."""
    details = record.get("details", {})
    return (record["actor"], record["outcome"], details.get("subject"), *(details.get(f) for f in fields))


async def test_keyvault_refusals_and_releases_are_durable_records_in_the_real_audit_log(short_tmp: Path) -> None:
    async with audit_rig(short_tmp / "h", ship=True, kind=ClockedRig) as r:
        assert r.runner is not None
        audit_client = r.runner.client  # the running audit service's own connection, identity "audit"
        key = await r.key()  # storage's data key: audit records the release before it leaves

        # Not entitled: a service asking for another's key, an operator asking for a data key, and
        # audit asking for a data key over its own certificate.
        for client, caller, purpose in ((r.storage, "storage", "token-signing"),
                                        (r.operator, "meshctl", "sqlcipher"),
                                        (audit_client, "audit", "sqlcipher")):
            with pytest.raises(Forbidden, match=f"^{caller} is not entitled to {purpose} keys$"):
                await client.call("keyvault.keys.get", {"purpose": purpose}, timeout=5)

        with pytest.raises(Unauthenticated, match=r"^wrong password$"):
            await r.operator.call("keyvault.unlock", {"password": "wrong-" + PASSWORD}, timeout=10)
        r.clock.now += 1.1  # past the delay the wrong password imposes

        # Sealed: the fetch is refused (and recorded) until an operator unlocks again.
        assert await r.operator.call("keyvault.lock", timeout=5) == {"sealed": True}
        with pytest.raises(Sealed, match=r"^the mesh is sealed"):
            await r.key()
        assert await r.operator.call("keyvault.unlock", {"password": PASSWORD}, timeout=10) == {"sealed": False}

        # Audit down: the release is refused, and the refusal itself is kept for audit.
        await r.stop_audit()
        with pytest.raises(Unavailable, match=f"^{re.escape(REFUSED_NOT_RECORDING)}$"):
            await r.key()
        await r.start_audit()

        # Everything keyvault spooled has been taken by audit (acknowledged only once durable).
        async def delivered() -> bool:
            assert r.vault.spool is not None
            return len(r.vault.spool) == 0 and len(await r.tail(type="keyvault.key_refused")) == 5
        await eventually(delivered, deadline=30)

        # Read back from a restarted audit service: what it finds was on disk.
        await r.stop_audit()
        await r.start_audit()
        assert (await r.operator.call("audit.verify", timeout=10))["ok"] is True

        refused = await r.tail(type="keyvault.key_refused")
        assert {t["type"] for t in refused} == {"keyvault.key_refused"}
        assert [summary(t, "role", "purpose", "reason") for t in refused] == [
            ("keyvault", "refused", "storage", "service", "token-signing", "not entitled"),
            ("keyvault", "refused", "meshctl", "operator", "sqlcipher", "not entitled"),
            ("keyvault", "refused", "audit", "service", "sqlcipher", "not entitled"),
            ("keyvault", "refused", "storage", "service", "sqlcipher", "sealed"),
            ("keyvault", "refused", "storage", "service", "sqlcipher", "audit not recording"),
        ]
        assert refused[-1]["details"]["audit_error"] == "UNAVAILABLE"
        unlocks = await r.tail(type="keyvault.unlock")
        assert [summary(t, "role") for t in unlocks] == [("keyvault", "wrong-password", "meshctl", "operator"),
                                                         ("keyvault", "ok", "meshctl", "operator")]
        assert [summary(t) for t in await r.tail(type="keyvault.lock")] == [("keyvault", "ok", "meshctl")]

        releases = await r.tail(type="keyvault.key_release")
        data = [t for t in releases if t["target"] == "sqlcipher"]
        assert [summary(t, "role", "purpose", "version") for t in data] == [
            ("keyvault", "ok", "storage", "service", "sqlcipher", key["version"])]  # the one that was served
        own = [t for t in releases if t["details"].get("purpose") in ("audit-hmac", "audit-signing")]
        # Audit fetches its own keys at each start and after each unlock: spooled, then shipped.
        assert {summary(t, "purpose") for t in own} == {("keyvault", "ok", "audit", "audit-hmac"),
                                                       ("keyvault", "ok", "audit", "audit-signing")}
        assert len(releases) == len(data) + len(own)  # nothing else was released
        assert PASSWORD not in repr(await r.tail())

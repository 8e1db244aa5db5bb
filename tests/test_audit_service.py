"""The audit service over a real in-process mesh: durable group-committed appends, the tamper
suite on the stored SQLCipher database, kill -9 with no loss, offline export, planted secrets."""

from __future__ import annotations

import asyncio
import io
import math
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlcipher3
import structlog

from services.audit import chain
from services.audit.errors import TamperError
from services.audit.proofs import decode_record, verify_bundle
from services.audit.service import Audit, export_page
from services.audit.store import AuditStore, db_path
from services.keyvault.service import Keyvault
from services.keyvault.setup import initialise
from shared import MeshClient, MeshError, Sealed, ServiceRunner, Unavailable, configure_logging
from shared.crypto import derive_subkey
from shared.testing import call_handler

from .conftest import FAST_CONFIG, TEST_ARGON2, eventually
from .mesh import InProcessMesh
from .processes import kill_9, spawn_service, stop_service

PASSWORD = "planted-Master-Passphrase-9431"
CONFIG = FAST_CONFIG + TEST_ARGON2 + """
[acl.role.service]
call = ["keyvault.keys.get", "keyvault.status", "audit.append", "audit.public_key"]
subscribe = ["security."]

[acl.identity.keyvault]
publish = ["security."]

[acl.identity.meshctl]
call = ["keyvault.*", "audit.*"]

"""
IDENTITIES = {"keyvault": "service", "audit": "service", "storage": "service", "meshctl": "operator"}


class Rig:
    """A mesh with keyvault (initialised, unsealed) and audit, a producer and an operator client."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.home = mesh.home
        self.vault = Keyvault(mesh.home, mesh.config)
        self.audit: Audit | None = None
        self.runner: ServiceRunner | None = None
        self.producer: MeshClient
        self.operator: MeshClient

    async def start_audit(self) -> Audit:
        self.audit = Audit(self.home, self.mesh.config)
        self.runner = await self.mesh.start_service(self.audit)
        return self.audit

    async def stop_audit(self) -> None:
        assert self.runner is not None
        await self.runner.stop()  # on_stop writes the final checkpoint and closes the database
        await self.runner.client.close()
        self.runner = self.audit = None

    async def db_key(self) -> bytearray:
        reply = await call_handler(self.vault, "keys.get", {"purpose": "audit-hmac"}, caller="audit", role="service")
        return derive_subkey(bytearray(reply["key"]), "audit-db")

    async def append(self, count: int, **extra: Any) -> list[int]:
        seqs: list[int] = []
        for start in range(0, count, 50):
            records = [{"type": "test.event", "outcome": "ok", "target": f"t{start + i}", **extra}
                       for i in range(min(50, count - start))]
            reply = await self.producer.call("audit.append", {"records": records}, timeout=10)
            seqs += range(reply["first_seq"], reply["last_seq"] + 1)
        return seqs


@asynccontextmanager
async def rig(root: Path, *, audit: bool = True, ship: bool = False, kind: type[Rig] = Rig,
              config: str = CONFIG, identities: dict[str, str] | None = None) -> AsyncIterator[Any]:
    mesh = InProcessMesh(root, config, dict(identities or IDENTITIES))
    initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    async with mesh:
        # Most of these tests count audit's records exactly, so unless ``ship`` is set the
        # producers' own audit spools (the broker's registrations, keyvault's releases of
        # audit's keys) are not shipped; tests/test_audit_delivery.py ships them.
        if not ship:
            mesh.broker.delivery.ship_after = math.inf
        r = kind(mesh)
        await mesh.start_service(r.vault)
        if not ship and r.vault.shipper is not None:
            await r.vault.shipper.stop()
            r.vault.shipper = None
        r.producer = await mesh.client("storage")
        r.operator = await mesh.client("meshctl")
        if audit:
            await r.start_audit()
        try:
            yield r
        finally:
            if r.runner is not None:
                await r.stop_audit()
            await r.vault.on_stop()


async def test_append_tail_and_actor_from_the_broker(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        reply = await r.producer.call("audit.append", {"records": [
            {"type": "authn.login", "outcome": "ok", "on_behalf_of": "alice", "target": "session"},
            {"type": "authz.deny", "outcome": "denied", "details": {"method": "storage.get"}}]}, timeout=5)
        assert reply == {"first_seq": 0, "last_seq": 1}
        tail = (await r.operator.call("audit.tail", {"limit": 10}, timeout=5))["records"]
        assert [(t["seq"], t["type"], t["actor"]) for t in tail] == [(0, "authn.login", "storage"),
                                                                    (1, "authz.deny", "storage")]
        assert tail[0]["on_behalf_of"] == "alice" and tail[1]["details"] == {"method": "storage.get"}
        only = (await r.operator.call("audit.tail", {"type": "authz.deny"}, timeout=5))["records"]
        assert [t["seq"] for t in only] == [1]
        with pytest.raises(MeshError) as denied:  # producers append; only operators read
            await r.producer.call("audit.tail", {}, timeout=5)
        assert denied.value.code == "FORBIDDEN"
        health = await r.operator.call("audit.health", timeout=5)
        assert health["state"] == "ready" and health["log"] == "ok" and health["size"] == 2


async def test_group_commit_gives_contiguous_durable_sequences(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        assert r.audit is not None and r.audit.store is not None
        store, commits = r.audit.store, []
        original = store.append

        def counting(entries: Any, checkpoint: Any = None) -> None:
            commits.append(len(entries))
            original(entries, checkpoint)
        store.append = counting  # type: ignore[method-assign]
        replies = await asyncio.gather(*(r.producer.call("audit.append", {"records": [
            {"type": "test.burst", "outcome": "ok", "target": f"r{i}"}]}, timeout=20) for i in range(300)))
        seqs = sorted(reply["first_seq"] for reply in replies)
        assert seqs == list(range(300))
        record_commits = [n for n in commits if n]
        assert sum(record_commits) == 300 and len(record_commits) < 150  # batched, not one fsync each
        await r.stop_audit()
        with AuditStore.open(db_path(r.home), await r.db_key()) as db:
            entries, checkpoints = db.load()
        targets = {e.record.seq: e.record.target for e in entries}
        assert {targets[reply["first_seq"]] for reply in replies} == {f"r{i}" for i in range(300)}
        assert checkpoints[-1].tree_size == 300  # the clean stop signed everything


def _rows(path: Path, key: bytearray) -> sqlcipher3.Connection:
    db = sqlcipher3.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return db


def _edit(db: sqlcipher3.Connection) -> None:
    blob = db.execute("SELECT record FROM records WHERE seq = 42").fetchone()[0]
    record = decode_record(bytes(blob))
    forged = chain.Record(seq=42, time=record.time, actor=record.actor, event=record.event, outcome="denied",
                          target=record.target, details=dict(record.details))
    db.execute("UPDATE records SET record = ? WHERE seq = 42", (chain.encode_record(forged),))


def _swap(db: sqlcipher3.Connection) -> None:
    a = db.execute("SELECT record, chain_hash FROM records WHERE seq = 42").fetchone()
    b = db.execute("SELECT record, chain_hash FROM records WHERE seq = 43").fetchone()
    db.execute("UPDATE records SET record = ?, chain_hash = ? WHERE seq = 42", b)
    db.execute("UPDATE records SET record = ?, chain_hash = ? WHERE seq = 43", a)


TAMPERS = {
    "edit-a-field": (_edit, 42),
    "delete-a-record": (lambda db: db.execute("DELETE FROM records WHERE seq = 42"), 42),
    "swap-two-records": (_swap, 42),
    # The attacker removes the checkpoints too: only the trusted copy outside the log can tell.
    "cut-off-the-tail": (lambda db: db.executescript("DELETE FROM records WHERE seq >= 230;"
                                                     "DELETE FROM checkpoints WHERE tree_size > 230;"), 230),
}


#: Attacks on records below the last verified anchor: a start does not read them (the background pass does).
OLD_PART = ("edit-a-field", "delete-a-record", "swap-two-records")


@pytest.mark.parametrize("attack", [*TAMPERS, "restore-an-older-copy"])
async def test_tamper_suite_is_detected_and_located(short_tmp: Path, attack: str) -> None:
    async with rig(short_tmp / "h") as r:
        path = db_path(r.home)
        await r.append(150)
        await r.stop_audit()
        saved = short_tmp / "saved.db"
        shutil.copy2(path, saved)  # the clean stop folded the WAL into the main file
        await r.start_audit()
        await r.append(100)
        await r.stop_audit()
        key = await r.db_key()
        if attack == "restore-an-older-copy":
            for leftover in (path.with_name("audit.db-wal"), path.with_name("audit.db-shm")):
                leftover.unlink(missing_ok=True)
            shutil.copy2(saved, path)
            first_bad = 150
        else:
            tamper, first_bad = TAMPERS[attack]
            db = _rows(path, key)
            tamper(db)
            db.close()
        audit = await r.start_audit()
        health = await r.operator.call("audit.health", timeout=5)
        if attack in OLD_PART:
            # Below the verified anchor (250): the start does not read it, the background pass finds it,
            # stops appends and raises the verify_failed alert.
            assert audit.start_report is not None and audit.start_report.from_seq == 250
            assert audit.start_report.records_read == 0

            async def tampered() -> dict[str, Any] | None:
                reply = await r.operator.call("audit.health", timeout=5)
                return reply if reply["log"] == "tampered" else None
            health = await eventually(tampered)

            async def alerted() -> list[Any]:
                return list((await r.operator.call("audit.alerts", timeout=5))["alerts"])
            alerts = await eventually(alerted)
            assert [(a["rule"], a["subject"]) for a in alerts] == [("verify_failed", "audit.db")]
            failure = (await r.operator.call("audit.tail", {"type": "audit.verify_failed"}, timeout=5))["records"]
            assert [(f["actor"], f["details"]["first_bad"]) for f in failure] == [("audit", first_bad)]
            assert health["background"]["first_bad"] == first_bad
        # ... detected at restart (a cut or an older copy), or by the background pass (the old part)
        assert health["log"] == "tampered" and health["state"] == "failed" and f"{first_bad}" in health["reason"]
        with pytest.raises(Unavailable, match="tampered"):
            await r.producer.call("audit.append", {"records": [{"type": "x", "outcome": "ok"}]}, timeout=5)
        result = await r.operator.call("audit.verify", timeout=10)  # ... and by verify, naming the record
        assert result["ok"] is False and result["first_bad"] == first_bad, result
        assert audit.slot is not None and (trusted := audit.slot.get()) is not None
        # The trusted copy was not "repaired" to fit the bad log: a cut or an older copy leaves it
        # where it was; a failure found by the pass moves it over the two failure records only, to a
        # checkpoint of audit's own head, which the bad log still fails (verify said so above).
        assert chain_size(bytes(trusted)) == (252 if attack in OLD_PART else 250)
        if attack in OLD_PART:
            # A restart does not forget it: the verify_failed record after the anchor makes the start
            # verify the whole log before it is ready, so the log is refused at start, with no window
            # in which audit would be ready (and keyvault release keys) until the pass found it again.
            await r.stop_audit()
            audit = await r.start_audit()
            assert audit.state == "tampered" and f"{first_bad}" in (audit.problem or "")
            with pytest.raises(MeshError) as released:
                await r.producer.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
            assert released.value.code == "UNAVAILABLE"


async def _edited_and_found(r: Rig) -> bytes:
    """250 records (an anchor at 250), record 42 edited while audit was stopped, the edit found by
    the background pass (failure records at 250 and 251), audit stopped again. The original record."""
    path = db_path(r.home)
    await r.append(150)
    await r.stop_audit()
    await r.start_audit()
    await r.append(100)
    await r.stop_audit()
    db = _rows(path, await r.db_key())
    original = bytes(db.execute("SELECT record FROM records WHERE seq = 42").fetchone()[0])
    _edit(db)
    db.close()
    await r.start_audit()

    async def tampered() -> dict[str, Any] | None:
        reply = await r.operator.call("audit.health", timeout=5)
        return reply if reply["log"] == "tampered" else None
    await eventually(tampered)
    await r.stop_audit()
    return original


async def test_the_failure_record_cannot_be_cut_off_to_skip_the_whole_verification(short_tmp: Path) -> None:
    # The background pass records the failure under a signed checkpoint and moves the trusted copy
    # to it. Cutting the failure records (and that checkpoint) off the end of the log, so the next
    # start would resume from the anchor, is a rollback that start refuses.
    async with rig(short_tmp / "h") as r:
        await _edited_and_found(r)
        db = _rows(db_path(r.home), await r.db_key())
        failure = decode_record(bytes(db.execute("SELECT record FROM records WHERE seq = 250").fetchone()[0]))
        assert (failure.actor, failure.event) == ("audit", "audit.verify_failed")
        db.executescript("DELETE FROM records WHERE seq >= 250; DELETE FROM checkpoints WHERE tree_size > 250;")
        db.close()
        audit = await r.start_audit()
        assert audit.state == "tampered" and "were cut off" in (audit.problem or ""), audit.problem


async def test_a_failure_a_whole_verification_no_longer_finds_is_cleared_by_it(short_tmp: Path) -> None:
    # The edit found by the background pass, then put back:
    async with rig(short_tmp / "h") as r:
        original = await _edited_and_found(r)
        db = _rows(db_path(r.home), await r.db_key())
        db.execute("UPDATE records SET record = ? WHERE seq = 42", (original,))
        db.close()
        # the next start verifies the whole log (the failure is after the anchor), which passes now,
        audit = await r.start_audit()
        assert audit.state == "ok" and audit.start_report is not None and audit.start_report.full
        assert audit.start_report.records_read == audit.start_report.size
        # and saves an anchor past the failure, so the start after goes on from there again.
        await r.stop_audit()
        audit = await r.start_audit()
        assert audit.state == "ok" and audit.start_report is not None and not audit.start_report.full
        assert audit.start_report.from_seq > 250


def chain_size(blob: bytes) -> int:
    from services.audit.proofs import decode_checkpoint
    return decode_checkpoint(blob).tree_size


async def test_sealed_until_keyvault_unlocks_and_seals_again_on_lock(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(3)
        await r.operator.call("keyvault.lock", timeout=5)
        await eventually(lambda: _status(r, "sealed"), deadline=10)
        with pytest.raises(Sealed):
            await r.producer.call("audit.append", {"records": [{"type": "x", "outcome": "ok"}]}, timeout=5)
        await r.operator.call("keyvault.unlock", {"password": PASSWORD}, timeout=30)
        await eventually(lambda: _status(r, "ok"), deadline=10)  # on security.unsealed, not a timer
        assert await r.append(1) == [3]
        assert (await r.operator.call("audit.verify", timeout=10))["ok"] is True


async def _status(r: Rig, want: str) -> bool:
    try:
        return bool((await r.operator.call("audit.health", timeout=5))["log"] == want)
    except Unavailable:  # not (yet, or no longer) registered with the broker
        return False


async def test_export_verifies_offline_with_only_the_public_key(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(120)
        public = (await r.producer.call("audit.public_key", timeout=5))["public_key"]
        exported = await r.operator.call("audit.export", timeout=10)
        assert exported["public_key"] == public and exported["tree_size"] == 120
        bundle = verify_bundle(exported["bundle"], public)
        assert [rec.seq for rec in bundle.records] == list(range(120))
        assert bundle.records[7].target == "t7" and bundle.records[7].actor == "storage"
        forged = exported["bundle"].replace(b"t77", b"t78", 1)
        with pytest.raises(TamperError):
            verify_bundle(forged, public)


async def test_export_pages_share_one_checkpoint_and_shrink_to_fit(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(120)
        public = (await r.producer.call("audit.public_key", timeout=5))["public_key"]
        first = await r.operator.call("audit.export", {"limit": 50}, timeout=10)
        assert (first["from_seq"], first["count"], first["next_seq"], first["tree_size"]) == (0, 50, 50, 120)
        await r.append(30)  # later records do not move a pinned export
        pages, reply = [first], first
        while reply["next_seq"] is not None:
            reply = await r.operator.call("audit.export", {"from_seq": reply["next_seq"], "limit": 50,
                                                           "tree_size": 120}, timeout=10)
            pages.append(reply)
        assert [(p["from_seq"], p["count"]) for p in pages] == [(0, 50), (50, 50), (100, 20)]
        bundles = [verify_bundle(p["bundle"], public) for p in pages]
        assert {b.checkpoint for b in bundles} == {bundles[0].checkpoint}
        assert [rec.seq for b in bundles for rec in b.records] == list(range(120))
        latest = await r.operator.call("audit.export", {"from_seq": 140}, timeout=10)
        assert latest["tree_size"] == 150 and latest["count"] == 10 and latest["next_seq"] is None
        for bad in ({"from_seq": 150}, {"from_seq": -1}, {"limit": 0}, {"tree_size": 7}):
            with pytest.raises(MeshError) as refused:
                await r.operator.call("audit.export", bad, timeout=10)
            assert refused.value.code == "BAD_REQUEST"
        # A page too big for the message cap is shrunk until it fits; one record too big is refused.
        assert r.audit is not None
        one, _, _ = export_page(*r.audit._paths(), 0, 1, None, 1 << 20)
        small, checkpoint, count = export_page(*r.audit._paths(), 0, 150, None, len(one) * 20)
        assert 1 <= count < 150 and len(small) <= len(one) * 20 and checkpoint.tree_size == 150
        assert [rec.seq for rec in verify_bundle(small, public).records] == list(range(count))
        with pytest.raises(MeshError) as too_big:
            export_page(*r.audit._paths(), 0, 10, None, len(one) - 1)
        assert too_big.value.code == "BAD_REQUEST"


async def test_planted_secrets_never_reach_the_database_logs_or_replies(short_tmp: Path) -> None:
    secret, code, plain = "planted-Secret-Token-77413", "918273", "planted-plain-marker-5521"
    stream = io.StringIO()
    configure_logging("test", stream=stream)
    try:
        async with rig(short_tmp / "h") as r:
            reply = await r.producer.call("audit.append", {"records": [{
                # A type without a schema of its own: the name-based rule alone must catch the secrets.
                "type": "companion.login", "outcome": "failed", "target": plain,
                "details": {"password": secret, "nested": {"api_token": secret, "otp": code}, "note": plain}}]},
                timeout=5)
            tail = await r.operator.call("audit.tail", {}, timeout=5)
            details = tail["records"][0]["details"]
            assert details["password"].startswith("hmac-sha256:") and details["note"] == plain
            await r.stop_audit()
            with AuditStore.open(db_path(r.home), await r.db_key()) as db:
                entries, _ = db.load()
            decrypted = b"".join(chain.encode_record(e.record) for e in entries)
    finally:
        structlog.reset_defaults()
    assert plain.encode() in decrypted  # the search below would find a planted string
    for haystack in (decrypted, repr(reply).encode(), repr(tail).encode(), stream.getvalue().encode()):
        assert secret.encode() not in haystack and code.encode() not in haystack
    raw = b"".join(p.read_bytes() for p in db_path(r.home).parent.iterdir())
    assert plain.encode() not in raw and secret.encode() not in raw  # encrypted at rest, WAL included


async def test_kill_9_while_producers_append_loses_nothing_acknowledged(short_tmp: Path) -> None:
    async with rig(short_tmp / "h", audit=False) as r:
        log_path = short_tmp / "audit.log"
        proc = spawn_service("services.audit", r.home, log_path)
        acked: dict[int, str] = {}
        stop = asyncio.Event()

        async def produce(name: str) -> None:
            n = 0
            while not stop.is_set():
                marker = f"{name}-{n}"
                try:
                    reply = await r.producer.call("audit.append", {"records": [
                        {"type": "test.load", "outcome": "ok", "target": marker}]}, timeout=3)
                except MeshError:
                    await eventually(lambda: _status(r, "ok"), deadline=30)  # audit is away: wait for it
                    continue
                acked[reply["first_seq"]] = marker
                n += 1
        try:
            await eventually(lambda: _status(r, "ok"), deadline=30)
            producers = [asyncio.create_task(produce(f"p{i}")) for i in range(4)]
            await eventually(lambda: _true(len(acked) >= 150), deadline=30)
            await kill_9(proc)
            before_restart = dict(acked)
            proc = spawn_service("services.audit", r.home, log_path)
            await eventually(lambda: _status(r, "ok"), deadline=30)
            await eventually(lambda: _true(len(acked) >= len(before_restart) + 20), deadline=30)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*producers), 10)
            result = await r.operator.call("audit.verify", timeout=30)
            assert result["ok"] is True, result
        finally:
            stop.set()
            await stop_service(proc)
        with AuditStore.open(db_path(r.home), await r.db_key()) as db:
            entries, _ = db.load()
        stored = {e.record.seq: e.record.target for e in entries}
        assert all(stored.get(seq) == marker for seq, marker in acked.items())
        assert log_path.read_bytes().count(b'"unsealed"') == 2  # both runs verified the log at start


async def _true(value: bool) -> bool:
    return value


async def test_audit_hmac_rotation_rekeys_the_log_live_and_after_a_restart(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(30)
        rotated = await r.operator.call("keyvault.keys.rotate", {"purpose": "audit-hmac", "password": PASSWORD},
                                        timeout=30)
        assert rotated["version"] == 2
        # audit hears security.key_rotated and re-keys the open database to version 2.
        await eventually(lambda: _opens_with(r, 2), deadline=20)
        await r.append(10)
        assert (await r.operator.call("audit.verify", timeout=30))["ok"]
        # A rotation while audit is stopped: at start it opens with version 2 and re-keys to 3.
        await r.stop_audit()
        assert (await r.operator.call("keyvault.keys.rotate", {"purpose": "audit-hmac", "password": PASSWORD},
                                      timeout=30))["version"] == 3
        await r.start_audit()
        await eventually(lambda: _status(r, "ok"), deadline=20)
        assert await _opens_with(r, 3) and not await _opens_with(r, 2)
        await r.append(5)
        result = await r.operator.call("audit.verify", timeout=30)
        assert result["ok"] and result["size"] >= 45


async def test_audit_signing_key_rotation_is_refused(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        with pytest.raises(MeshError) as refused:
            await r.operator.call("keyvault.keys.rotate", {"purpose": "audit-signing", "password": PASSWORD},
                                  timeout=30)
        assert refused.value.code == "BAD_REQUEST" and "cannot be rotated" in refused.value.message
        assert (await r.operator.call("audit.verify", timeout=30))["ok"]


async def _opens_with(r: Rig, version: int) -> bool:
    """True when the audit database opens with the key derived from ``audit-hmac`` ``version``."""
    reply = await call_handler(r.vault, "keys.get", {"purpose": "audit-hmac", "version": version}, caller="audit",
                               role="service")
    key = derive_subkey(bytearray(reply["key"]), "audit-db")
    try:
        AuditStore.open(db_path(r.home), key).close()
    except MeshError:
        return False
    return True

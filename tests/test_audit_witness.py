"""Paired devices as witnesses of the audit log, over a real in-process mesh and a real audit service:
``audit.checkpoint`` answers checkpoints and consistency proofs a device verifies with
``shared.transparency``; the mesh ACL of the repository's mesh.toml lets devices (and services) ask
and only devices report; and a machine rolled back as a whole (the audit database and its trusted
checkpoint together, as a restored disk image does) is caught by the device, which refuses, reports,
and so raises the ``witness_mismatch`` alert."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from services.audit import chain
from services.audit.proofs import decode_record
from services.audit.store import db_path
from shared import (
    DEFAULT_CONFIG_PATH,
    AlertRules,
    BadRequest,
    Forbidden,
    MeshClient,
    MeshError,
    Sealed,
    Unavailable,
    compile_grant,
    load_config,
)
from shared.transparency import (
    Checkpoint,
    Witness,
    WitnessMismatch,
    decode_checkpoint,
    verify_checkpoint,
    verify_consistency,
    witness_check,
)

from .conftest import eventually
from .test_audit_service import CONFIG as AUDIT_CONFIG
from .test_audit_service import IDENTITIES as AUDIT_IDENTITIES
from .test_audit_service import Rig, _rows, _status, rig

# The repository's own declaration of audit (its expose table is the ACL under test), on the audit rig.
_DECLARED = tomllib.loads(DEFAULT_CONFIG_PATH.read_text("utf-8"))["services"]["audit"]
CONFIG = AUDIT_CONFIG + "\n" + tomli_w.dumps({"services": {"audit": _DECLARED}})
IDENTITIES = {**AUDIT_IDENTITIES, "phone": "device", "plugin1": "plugin"}


def witness_rig(root: Path) -> Any:
    return rig(root, config=CONFIG, identities=IDENTITIES)


async def public_key(r: Rig) -> bytes:
    return bytes((await r.producer.call("audit.public_key", timeout=5))["public_key"])


async def paired(r: Rig, root: Path, records: int) -> tuple[MeshClient, Witness]:
    """The phone's connection and its witness, which has kept the checkpoint after ``records`` records."""
    phone = await r.mesh.client("phone")
    witness = Witness(root / "phone" / "audit-witness", await public_key(r))
    await r.append(records)
    assert (await witness_check(phone, witness)).tree_size == records
    return phone, witness


def test_mesh_toml_lets_devices_and_services_ask_and_only_devices_report() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    phone, service = compile_grant(config.acl, "phone", "device"), compile_grant(config.acl, "storage", "service")
    plugin = compile_grant(config.acl, "plugin1", "plugin")
    assert phone.may_call("audit", "checkpoint") and phone.may_call("audit", "witness_report")
    assert service.may_call("audit", "checkpoint") and not service.may_call("audit", "witness_report")
    assert not plugin.may_call("audit", "checkpoint") and not plugin.may_call("audit", "witness_report")
    assert not phone.may_call("audit", "append") and not phone.may_call("audit", "tail")
    assert config.audit.rules == AlertRules()  # mesh.toml states the defaults, the new rules included
    assert (config.audit.rules.witness_mismatch.threshold, config.audit.rules.pairing_failures.threshold) == (1, 5)


async def test_checkpoint_answers_a_signed_checkpoint_and_a_proof_from_since(short_tmp: Path) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone = await r.mesh.client("phone")
        key = await public_key(r)
        await r.append(30)
        first = await phone.call("audit.checkpoint", {"since": 0}, timeout=10)
        assert set(first) == {"checkpoint", "proof", "public_key"} and first["public_key"] == key
        old = decode_checkpoint(first["checkpoint"])
        verify_checkpoint(key, old)
        assert old.tree_size == 30 and first["proof"] == []  # signed for the device: the log as it is now
        await r.append(170)
        for since in (1, 17, 30, 64, 129, 199):
            reply = await phone.call("audit.checkpoint", {"since": since}, timeout=10)
            new = decode_checkpoint(reply["checkpoint"])
            verify_checkpoint(key, new)
            assert new.tree_size == 200
            if since == 30:
                verify_consistency(30, 200, old.root, new.root, reply["proof"])
            assert len(reply["proof"]) > 0 and all(type(h) is bytes and len(h) == 32 for h in reply["proof"])
        for since in (200, 201, 10**12):  # nothing to prove, or a device that kept more: no proof, it sees the shrink
            reply = await phone.call("audit.checkpoint", {"since": since}, timeout=10)
            assert reply["proof"] == [] and decode_checkpoint(reply["checkpoint"]).tree_size == 200
        for bad in (-1, "3", True, 1.5, None, 1 << 63):
            with pytest.raises(BadRequest):
                await phone.call("audit.checkpoint", {"since": bad}, timeout=5)
        await r.producer.call("audit.checkpoint", {"since": 0}, timeout=5)  # services may ask too
        plugin = await r.mesh.client("plugin1")
        with pytest.raises(Forbidden):
            await plugin.call("audit.checkpoint", {"since": 0}, timeout=5)


async def test_a_device_keeps_up_with_a_growing_log_across_restarts(short_tmp: Path) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone = await r.mesh.client("phone")
        witness = Witness(short_tmp / "phone" / "audit-witness", await public_key(r))
        for round_ in range(4):
            await r.append(45 + round_)
            kept = await witness_check(phone, witness)
            assert kept == witness.kept() and kept.tree_size == (await r.operator.call("audit.health"))["size"]
            if round_ == 1:  # the tree is rebuilt from the verified log at unseal
                await r.stop_audit()
                await r.start_audit()
        assert witness.since() == 45 + 46 + 47 + 48


async def test_only_a_device_reports_and_a_report_is_checked(short_tmp: Path) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone = await r.mesh.client("phone")
        await r.append(3)
        cp = (await phone.call("audit.checkpoint", {"since": 0}, timeout=5))["checkpoint"]
        with pytest.raises(Forbidden):  # the mesh ACL: services do not witness
            await r.producer.call("audit.witness_report", {"seen": cp, "problem": "shrunk"}, timeout=5)
        with pytest.raises(Forbidden):  # nor is the record theirs to append
            await r.producer.call("audit.append", {"records": [{"type": "audit.witness_mismatch", "outcome": "x"}]},
                                  timeout=5)
        for body in ({"seen": b"\x93garbage", "problem": "forked"}, {"seen": cp, "problem": " "},
                     {"seen": cp, "problem": "x" * 513}, {"seen": cp}, {"seen": cp, "problem": "shrunk", "extra": 1}):
            with pytest.raises(BadRequest):
                await phone.call("audit.witness_report", body, timeout=5)
        reply = await phone.call("audit.witness_report", {"kept": None, "seen": cp, "problem": "bad_signature"},
                                 timeout=5)
        record = (await r.operator.call("audit.tail", {"type": "audit.witness_mismatch"}, timeout=5))["records"][-1]
        assert record["seq"] == reply["seq"] and record["actor"] == "phone" and record["target"] == "phone"
        assert record["details"] == {"problem": "bad_signature", "seen_tree_size": 3,
                                     "seen_root": decode_checkpoint(cp).root.hex(), "seen_signed": True}


async def test_a_sealed_audit_answers_sealed_not_a_mismatch(short_tmp: Path) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone, witness = await paired(r, short_tmp, 5)
        await r.operator.call("keyvault.lock", timeout=5)
        await eventually(lambda: _status(r, "sealed"), deadline=10)
        with pytest.raises(Sealed):
            await witness_check(phone, witness)
        assert witness.since() == 5


def _edit(path: Path, key: bytearray, seq: int) -> None:
    """Change one stored record in place (the attacker who edits the database behind audit's back)."""
    db = _rows(path, key)
    record = decode_record(bytes(db.execute("SELECT record FROM records WHERE seq = ?", (seq,)).fetchone()[0]))
    forged = chain.Record(seq=seq, time=record.time, actor=record.actor, event=record.event, outcome="denied",
                          target=record.target, details=dict(record.details))
    db.execute("UPDATE records SET record = ? WHERE seq = ?", (chain.encode_record(forged), seq))
    db.close()


@pytest.mark.parametrize("when", ["before the tree reads it", "after the tree read it"])
async def test_a_record_edited_behind_audits_back_gets_no_checkpoint(short_tmp: Path, when: str) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone = await r.mesh.client("phone")
        await r.append(150)
        if when == "after the tree read it":
            await phone.call("audit.checkpoint", {"since": 0}, timeout=10)
        _edit(db_path(r.home), await r.db_key(), 70)
        with pytest.raises(Unavailable, match="failed verification"):
            await phone.call("audit.checkpoint", {"since": 65}, timeout=10)
        assert await _status(r, "tampered")  # and audit refuses appends, as after a failed audit.verify
        with pytest.raises(Unavailable, match="tampered"):
            await r.producer.call("audit.append", {"records": [{"type": "x", "outcome": "ok"}]}, timeout=5)


@pytest.mark.parametrize("after", ["shrunk", "forked"])
async def test_a_machine_rolled_back_whole_is_caught_by_its_device(short_tmp: Path, after: str) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone, witness = await paired(r, short_tmp, 20)
        # The disk image: the audit database and, with it, audit's trusted checkpoint (off the home,
        # in the keyring: a VM snapshot or a restored disk takes that back too).
        assert r.audit is not None and r.audit.slot is not None
        slot, directory, image = r.audit.slot, db_path(r.home).parent, short_tmp / "image"
        await r.stop_audit()
        shutil.copytree(directory, image)
        anchor = slot.get()
        assert anchor is not None
        await r.start_audit()
        await r.append(30)
        kept = await witness_check(phone, witness)
        kept_file = witness.path.read_bytes()
        assert kept.tree_size == 50
        await r.stop_audit()
        shutil.rmtree(directory)
        shutil.copytree(image, directory)
        slot.put(anchor)
        await r.start_audit()
        assert await _status(r, "ok")  # audit alone cannot tell: the log and its anchor agree
        if after == "forked":
            await r.append(45)  # written on after the rollback: longer than what the device kept
        alerts = await r.operator.subscribe("alerts.", timeout=5)
        with pytest.raises(WitnessMismatch) as caught:
            await witness_check(phone, witness)
        found = caught.value
        assert found.problem == after and found.kept == kept and found.reported is True
        assert isinstance(found.seen, Checkpoint) and found.seen.tree_size == (20 if after == "shrunk" else 65)
        assert witness.path.read_bytes() == kept_file  # the device keeps what it saw
        event = await alerts.next(timeout=10)
        assert event.topic == "alerts.witness_mismatch" and event.sender == "audit"
        assert event.body["subject"] == "phone" and event.body["rule"] == "witness_mismatch"
        records = (await r.operator.call("audit.tail", {"type": "audit.witness_mismatch"}, timeout=5))["records"]
        assert [(x["actor"], x["details"]["problem"]) for x in records] == [("phone", after)]
        details = records[0]["details"]
        assert details["kept_tree_size"] == 50 and details["kept_root"] == kept.root.hex()
        assert details["kept_signed"] is True and details["seen_signed"] is True  # audit's own key signed both
        open_alerts = (await r.operator.call("audit.alerts", timeout=5))["alerts"]
        assert [(a["rule"], a["subject"]) for a in open_alerts] == [("witness_mismatch", "phone")]
        with pytest.raises(WitnessMismatch):  # and it stays refused: nothing was started over
            await witness_check(phone, witness)


async def test_a_report_that_cannot_be_delivered_still_refuses(short_tmp: Path) -> None:
    async with witness_rig(short_tmp / "h") as r:
        phone, _ = await paired(r, short_tmp, 4)
        other = Witness(short_tmp / "other", bytes(32))  # pinned to a key that is not this mesh's

        class NoReports:
            """The mesh answers the checkpoint, and the report is lost on the way."""

            def __init__(self, client: MeshClient) -> None:
                self.client = client

            async def call(self, target: str, body: Any = None, *, timeout: float | None = None) -> Any:
                if target == "audit.witness_report":
                    raise MeshError("the connection went away")
                return await self.client.call(target, body, timeout=timeout)
        with pytest.raises(WitnessMismatch) as caught:
            await witness_check(NoReports(phone), other)  # type: ignore[arg-type]
        assert caught.value.problem == "bad_signature" and caught.value.reported is False
        assert not other.path.exists()

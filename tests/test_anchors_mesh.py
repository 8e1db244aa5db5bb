"""Audit's trusted checkpoint and storage's backup lineage live off the home (DESIGN.md invariant 12):
restoring an older copy of the home alone is detected by audit (unseal and ``audit verify``) and by
backup restore, and the in-home slots an older version left move out once, audited.

Real in-process meshes (the audit rig of tests/test_audit_service.py, tests/storage_rig.py) with
``[keyvault] keystore = "file"`` (the session runs a real Secret Service; the file keystore is the
no-keyring path) and this test's own anchor directory (``XDG_STATE_HOME``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from services.audit.proofs import decode_checkpoint
from services.audit.store import AuditStore, db_path
from shared import MeshHome
from shared.keystore import FileKeystore

from .conftest import eventually, holds
from .storage_rig import CONFIG as STORAGE_CONFIG
from .storage_rig import StorageRig, storage_rig
from .test_audit_service import CONFIG as AUDIT_CONFIG
from .test_audit_service import Rig, rig

FILE_KEYSTORE = '\n[keyvault]\nkeystore = "file"\n'


@pytest.fixture
def anchors(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's anchor directory (its own ``XDG_STATE_HOME``)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state"))
    return short_tmp / "state" / "curvemesh"


def snapshot(home: MeshHome, parts: tuple[str, ...], into: Path) -> None:
    for part in parts:
        shutil.copytree(home.root / part, into / part)


def roll_back(home: MeshHome, parts: tuple[str, ...], snap: Path) -> None:
    """Put ``parts`` of the home back as they were in ``snap``: the home restored from an older copy."""
    for part in parts:
        shutil.rmtree(home.root / part)
        shutil.copytree(snap / part, home.root / part)


async def audit_state(r: Rig, *wanted: str) -> bool:
    return r.audit is not None and r.audit.state in wanted


async def tail(r: Any, event: str) -> list[dict[str, Any]]:
    reply = await r.operator.call("audit.tail", {"limit": 100, "type": event}, timeout=10)
    records: list[dict[str, Any]] = reply["records"]
    return records


# The audit database and the home's keys/ (where the trusted checkpoint lived in file mode).
AUDIT_PARTS = ("data/audit", "keys")


async def test_the_home_rolled_back_alone_is_detected_by_audit(short_tmp: Path, anchors: Path) -> None:
    async with rig(short_tmp / "h", config=AUDIT_CONFIG + FILE_KEYSTORE) as r:
        await eventually(lambda: audit_state(r, "ok"), deadline=20)
        await r.append(5)
        await r.stop_audit()  # a clean stop signs a checkpoint of every record
        snap = short_tmp / "snap"
        snapshot(r.home, AUDIT_PARTS, snap)
        await r.start_audit()
        await eventually(lambda: audit_state(r, "ok"), deadline=20)
        await r.append(20)  # the trusted checkpoint moves on to cover these
        await r.stop_audit()
        roll_back(r.home, AUDIT_PARTS, snap)
        await r.start_audit()
        await eventually(lambda: audit_state(r, "ok", "tampered", "failed"), deadline=20)
        assert r.audit is not None and r.audit.state == "tampered", r.audit.problem
        assert "an older copy of the log was restored" in str(r.audit.problem)
        report = await r.operator.call("audit.verify", timeout=10)
        assert report["ok"] is False and "an older copy of the log was restored" in report["error"]


async def test_audit_moves_an_in_home_checkpoint_off_the_home_once_audited(short_tmp: Path, anchors: Path) -> None:
    async with rig(short_tmp / "h", config=AUDIT_CONFIG + FILE_KEYSTORE) as r:
        await eventually(lambda: audit_state(r, "ok"), deadline=20)
        await r.append(3)
        await r.stop_audit()
        (slot,) = anchors.glob("audit-checkpoint_*")
        legacy = r.home.keys / "audit-checkpoint"
        older = slot.read_bytes()
        was = decode_checkpoint(bytes(FileKeystore(slot).get() or b""))
        slot.rename(legacy)  # as an older curvemesh left it: in the home, nothing outside
        await r.start_audit()
        await eventually(lambda: audit_state(r, "ok", "tampered", "failed"), deadline=20)
        assert r.audit is not None and r.audit.state == "ok", r.audit.problem
        await eventually(lambda: holds(not legacy.exists()), deadline=10)
        # The moved checkpoint, or (once the start's anchor signed the move record in) a later one of
        # the same log: never an older one, and never another log's.
        moved_to = decode_checkpoint(bytes(FileKeystore(slot).get() or b""))
        assert slot.stat().st_mode & 0o777 == 0o600
        assert moved_to == was or (moved_to.tree_size > was.tree_size and moved_to.chain_head != was.chain_head)
        with AuditStore.open(db_path(r.home), await r.db_key()) as db:
            stored = {c.tree_size: c for c in db.checkpoints()}
        assert stored[was.tree_size] == was and stored[moved_to.tree_size] == moved_to
        (moved,) = await tail(r, "audit.anchor_moved")
        assert moved["actor"] == "audit" and moved["details"]["source"] == str(legacy)
        assert moved["details"]["destination"] == str(slot)
        await r.append(2)
        await r.stop_audit()
        await r.start_audit()  # the second start has nothing to move
        await eventually(lambda: audit_state(r, "ok"), deadline=20)
        assert len(await tail(r, "audit.anchor_moved")) == 1
        await r.stop_audit()
        # An in-home copy that differs from the one outside (an older checkpoint): refuse, never guess.
        legacy.write_bytes(older)
        legacy.chmod(0o600)
        await r.start_audit()
        await eventually(lambda: audit_state(r, "ok", "tampered", "failed"), deadline=20)
        assert r.audit is not None and r.audit.state == "failed"
        assert "differ" in str(r.audit.problem) and str(legacy) in str(r.audit.problem)
        assert legacy.exists() and slot.read_bytes() != older


# Storage's own state and its archives, and the home's keys/ (where the lineage lived in file mode).
STORAGE_PARTS = ("data/storage", "backups", "keys")


async def _backup(r: StorageRig) -> dict[str, Any]:
    job = await r.job("storage.backup.create", {})
    assert job["state"] == "done", job
    result: dict[str, Any] = job["result"]
    return result


async def test_the_home_rolled_back_alone_is_detected_by_backup_restore(short_tmp: Path, anchors: Path) -> None:
    async with storage_rig(short_tmp / "h", config=STORAGE_CONFIG + FILE_KEYSTORE) as r:
        first = await _backup(r)
        await r.stop_storage()
        snap = short_tmp / "snap"
        snapshot(r.home, STORAGE_PARTS, snap)
        await r.start_storage()
        second = await _backup(r)
        assert (first["sequence"], second["sequence"]) == (1, 2)
        await r.stop_storage()
        roll_back(r.home, STORAGE_PARTS, snap)
        await r.start_storage()
        status = await r.operator.call("storage.status", timeout=10)
        assert status["backup"]["sequence"] == 1  # the home says #1 is the newest ...
        refused = await r.job("storage.backup.restore", {"archive": first["archive"]})
        assert refused["state"] == "failed" and "older than #2" in refused["error"], refused  # ... its anchor not
        forced = await r.job("storage.backup.restore", {"archive": first["archive"], "force": True})
        assert forced["state"] == "done" and forced["result"]["rollback"] is True, forced


async def test_storage_moves_an_in_home_lineage_off_the_home_once_audited(short_tmp: Path, anchors: Path) -> None:
    async with storage_rig(short_tmp / "h", config=STORAGE_CONFIG + FILE_KEYSTORE) as r:
        await _backup(r)
        await r.stop_storage()
        (slot,) = anchors.glob("storage-backup-lineage_*")
        legacy = r.home.keys / "storage-backup-lineage"
        kept = slot.read_bytes()
        slot.rename(legacy)  # as an older curvemesh left it
        await r.start_storage()
        await eventually(lambda: holds(not legacy.exists()), deadline=10)
        assert slot.read_bytes() == kept and slot.stat().st_mode & 0o777 == 0o600
        (moved,) = await tail(r, "storage.anchor_moved")
        assert moved["actor"] == "storage" and moved["details"]["source"] == str(legacy)
        await r.stop_storage()
        await r.start_storage()  # the second start has nothing to move
        assert (await _backup(r))["sequence"] == 2
        assert len(await tail(r, "storage.anchor_moved")) == 1

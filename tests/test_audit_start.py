"""What an audit start reads (issue 18): only the records after the saved verified anchor, with their
consistency to the trusted checkpoint; the whole log is verified in the background once ready.

Structural, never timed: every record row read goes through :meth:`AuditStore.entries`, which the
``rows_read`` fixture counts, and the start says what it read (:attr:`Audit.start_report`).
Real SQLCipher databases, real keys from keyvault.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.audit.alert_engine import AlertEngine
from services.audit.seal import SealMixin
from services.audit.store import AuditStore, db_path
from shared import MeshError

from .conftest import eventually
from .test_audit_service import CONFIG, _rows, rig
from .test_readiness import _damage_a_middle_page

#: A log of any size is "large": its pages are checked by the background pass, not at start.
NO_START_PAGE_CHECK = CONFIG + "[audit]\nstart_page_check_mib = 0\n"


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count = [0]
    original = AuditStore.entries

    def counting(self: AuditStore, *args: Any, **kwargs: Any) -> Iterator[Any]:
        for entry in original(self, *args, **kwargs):
            count[0] += 1
            yield entry
    monkeypatch.setattr(AuditStore, "entries", counting)
    return count


async def _background_done(r: Any) -> dict[str, Any] | None:
    health = await r.operator.call("audit.health", timeout=5)
    return health if (health["background"] or {}).get("state") in ("ok", "failed") else None


async def test_a_start_reads_only_the_records_after_the_anchor(short_tmp: Path, rows_read: list[int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(300)
        await r.stop_audit()            # a clean stop saves the anchor at 300
        key = await r.db_key()
        db = _rows(db_path(r.home), key)
        old_anchor = db.execute("SELECT tree_size, blob FROM anchor").fetchone()
        db.close()
        assert old_anchor[0] == 300
        await r.start_audit()
        await r.append(40)
        await r.stop_audit()            # the anchor moves to 340
        # An older anchor (a crash before the next one was saved) only makes a start read more.
        db = _rows(db_path(r.home), key)
        db.execute("UPDATE anchor SET tree_size = ?, blob = ?", old_anchor)
        db.close()
        rows_read[0] = 0
        held: list[SealMixin] = []
        background = SealMixin._start_background
        monkeypatch.setattr(SealMixin, "_start_background", lambda self: held.append(self))  # started below
        audit = await r.start_audit()
        report = audit.start_report
        assert report is not None and (report.from_seq, report.size, report.full) == (300, 340, False)
        assert report.records_read == 40 and rows_read[0] == 40  # not one of the 300 older records
        assert held == [audit]
        background(audit)
        done = await eventually(lambda: _background_done(r))  # then the background pass reads the whole log
        assert done["background"] == {"state": "ok", "size": 340, "first_bad": None} and done["log"] == "ok"
        assert (await r.producer.call("audit.append", {"records": [{"type": "x", "outcome": "ok"}]},
                                      timeout=5))["first_seq"] == 340


async def test_without_a_usable_anchor_the_start_verifies_everything(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(120)
        await r.stop_audit()
        db = _rows(db_path(r.home), await r.db_key())
        db.execute("UPDATE anchor SET blob = x'00'")  # not an anchor: ignored, never trusted
        db.close()
        audit = await r.start_audit()
        assert audit.start_report is not None and audit.start_report.full and audit.start_report.records_read == 120
        assert audit.state == "ok"


async def test_a_cut_below_the_anchor_that_also_drops_the_anchor_fails_at_start(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(250)
        await r.stop_audit()
        db = _rows(db_path(r.home), await r.db_key())
        db.executescript("DELETE FROM records WHERE seq >= 200; DELETE FROM checkpoints WHERE tree_size > 200;"
                         "DELETE FROM anchor;")
        db.close()
        audit = await r.start_audit()
        assert audit.state == "tampered" and "200" in (audit.problem or "")


async def test_a_record_rewritten_at_the_anchor_fails_at_start(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(150)
        await r.stop_audit()
        db = _rows(db_path(r.home), await r.db_key())
        db.execute("UPDATE records SET chain_hash = zeroblob(32) WHERE seq = 149")
        db.close()
        audit = await r.start_audit()
        assert audit.state == "tampered" and "149" in (audit.problem or "")


async def test_open_alerts_come_back_from_the_anchor_without_reading_the_log(
        short_tmp: Path, rows_read: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(130)
        await r.producer.call("audit.append", {"records": [
            {"type": "authn.login", "outcome": "failure", "on_behalf_of": "alice"}] * 5}, timeout=5)

        async def opened() -> list[Any]:
            assert r.audit is not None
            return r.audit.alerts.open()
        before = await eventually(opened)
        assert [(a["rule"], a["subject"], a["count"]) for a in before] == [("failed_logins_account", "alice", 5)]
        await r.stop_audit()
        rows_read[0] = 0
        monkeypatch.setattr(SealMixin, "_start_background", lambda self: None)  # it would read the log
        audit = await r.start_audit()
        assert audit.start_report is not None and audit.start_report.records_read == 0 and rows_read[0] == 0
        restored = audit.alerts.open()  # from the anchor's saved state, not replayed ...
        # ... and what a replay of the whole log gives (times are the records' own, as in a replay).
        replayed = AlertEngine(audit.config.audit)
        with AuditStore.open(db_path(r.home), await r.db_key()) as db:
            replayed.rebuild(entry.record for entry in db.load()[0])
        assert restored == [a.to_wire() for a in replayed.open_alerts()]
        untimed = [{k: v for k, v in a.items() if k not in ("opened", "last_seen")} for a in before]
        assert [{k: v for k, v in a.items() if k not in ("opened", "last_seen")} for a in restored] == untimed


async def test_a_damaged_old_page_in_a_small_log_fails_the_start(short_tmp: Path) -> None:
    async with rig(short_tmp / "h") as r:
        await r.append(400, details={"note": "x" * 100})
        await r.stop_audit()
        _damage_a_middle_page(db_path(r.home))
        audit = await r.start_audit()
        assert audit.state == "failed" and "integrity check (page" in (audit.problem or "")


async def test_a_damaged_old_page_in_a_large_log_is_found_by_the_background_pass(short_tmp: Path) -> None:
    # A log over start_page_check_mib (0 here: any log) is ready without its pages checked at start ...
    async with rig(short_tmp / "h", config=NO_START_PAGE_CHECK) as r:
        await r.append(400, details={"note": "x" * 100})
        await r.stop_audit()
        path = db_path(r.home)
        _damage_a_middle_page(path)
        audit = await r.start_audit()
        assert audit.start_report is not None and not audit.start_report.pages_checked

        # ... and the background pass checks every page first: the log fails, naming the page,
        async def failed() -> dict[str, Any] | None:
            reply = await r.operator.call("audit.health", timeout=5)
            return reply if reply["log"] == "failed" else None
        health = await eventually(failed, deadline=30)
        assert health["state"] == "failed" and str(path) in health["reason"]
        assert "integrity check (page" in health["reason"] and health["background"]["state"] == "failed"

        # the verify_failed alert is raised (open, whether or not the damaged file took its record),
        async def alerted() -> list[Any]:
            return list((await r.operator.call("audit.alerts", timeout=5))["alerts"])
        alerts = await eventually(alerted)
        assert [(a["rule"], a["subject"]) for a in alerts] == [("verify_failed", "audit.db")]

        # appends are refused from then on, and keyvault releases no key while audit cannot record it.
        with pytest.raises(MeshError) as refused:
            await r.producer.call("audit.append", {"records": [{"type": "x", "outcome": "ok"}]}, timeout=5)
        assert refused.value.code == "UNAVAILABLE"
        with pytest.raises(MeshError) as released:
            await r.producer.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
        assert released.value.code == "UNAVAILABLE"

        # A restart does not forget it: with the failure recorded after the anchor, the start checks
        # every page and verifies the whole log before it is ready, and fails at once.
        await r.stop_audit()
        audit = await r.start_audit()
        assert audit.state == "failed" and "integrity check (page" in (audit.problem or "")


async def test_a_failure_the_database_cannot_record_is_remembered_off_the_home(short_tmp: Path) -> None:
    # The audit directory on a filesystem of its own (a tmpfs) that is then filled: the database
    # cannot take the audit.verify_failed record, so only the mark beside the trusted checkpoint
    # (off the home) remembers the failure.
    async with rig(short_tmp / "h", config=NO_START_PAGE_CHECK) as r:
        await r.append(400, details={"note": "x" * 100})
        await r.stop_audit()
        path = db_path(r.home)
        keep = short_tmp / "keep"
        shutil.copytree(path.parent, keep)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "curvemesh-test", str(path.parent)],
                       check=True, capture_output=True)
        try:
            for item in keep.iterdir():
                shutil.copy2(item, path.parent / item.name)
            audit = await r.start_audit()

            async def verified() -> bool:
                return bool(audit.background and audit.background["state"] == "ok")
            await eventually(verified, deadline=30)
            # A middle page damaged (its bytes kept, to repair it later), then the filesystem filled.
            middle, original = _damage_a_middle_page(path)
            with (path.parent / "filler").open("wb") as filler, pytest.raises(OSError) as full:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            assert full.value.errno == errno.ENOSPC

            result = await r.operator.call("audit.verify", timeout=10)
            assert result["ok"] is False and result["damaged"]
            assert audit.state == "failed" and audit.failure_slot is not None
            assert audit.failure_slot.get() is not None  # remembered ...
            with AuditStore.open(path, await r.db_key()) as db:
                assert db.max_seq() == 399  # ... though the log took no record of it
            await r.stop_audit()
            (path.parent / "filler").unlink()

            # The next start verifies the whole log, pages first, though no record says so: refused.
            audit = await r.start_audit()
            assert audit.state == "failed" and "integrity check (page" in (audit.problem or "")
            await r.stop_audit()

            # Repaired, the log passes the whole verification at start, which clears the mark ...
            with path.open("r+b") as f:
                f.seek(middle)
                f.write(original)
            audit = await r.start_audit()
            assert audit.state == "ok" and audit.start_report is not None and audit.start_report.full
            assert audit.failure_slot is not None and audit.failure_slot.get() is None
            await r.stop_audit()
            # ... and the start after resumes from the anchor again.
            audit = await r.start_audit()
            assert audit.state == "ok" and audit.start_report is not None and not audit.start_report.full
        finally:
            if r.runner is not None:
                await r.stop_audit()
            subprocess.run(["umount", "-l", str(path.parent)], check=False, capture_output=True)

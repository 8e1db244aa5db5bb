"""meshctl audit tail/verify/export/verify --offline and meshctl alerts, against a real in-process
mesh (broker thread, keyvault and audit on the test's loop). The command line runs in a worker
thread (``main`` calls ``asyncio.run``) and talks to the broker over its ipc socket like the real
tool; ``verify --offline`` runs with no home and no mesh at all."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from services.audit import chain
from services.audit.proofs import decode_record
from services.audit.store import db_path
from tools.meshctl_cli import _audit, main

from .conftest import eventually
from .test_audit_alerts import RULES, Clock, alert_rig
from .test_audit_service import Rig, _rows, rig

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")  # the in-process mesh's own log


async def meshctl(capsys: pytest.CaptureFixture[str], home: Path | None, *argv: str) -> tuple[int, str, str]:
    """Run the meshctl command line; stdout without the log lines of the services in this process."""
    args = (["--home", str(home)] if home is not None else []) + list(argv)
    status = await asyncio.wait_for(asyncio.to_thread(main, args), 60)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    out = "".join(line for line in out.splitlines(keepends=True) if not _LOG_LINE.match(line))
    return status, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshctl: "), err
    return lines[0]


@asynccontextmanager
async def audited(root: Path) -> AsyncIterator[Rig]:
    async with rig(root) as r:
        await r.producer.call("audit.append", {"records": [
            {"type": "authn.login", "outcome": "ok", "on_behalf_of": "alice", "target": "session"},
            {"type": "mesh.deny", "outcome": "denied", "details": {"subject": "outsider", "action": "call"}},
            {"type": "authn.login", "outcome": "failure", "on_behalf_of": "bob"}]}, timeout=5)
        yield r


async def test_audit_tail_shows_records_filtered_as_a_table_or_json(short_tmp: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    async with audited(short_tmp / "h") as r:
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "tail", "--actor", "storage")
        assert status == 0
        header, *lines = out.strip().splitlines()
        assert header.split() == ["SEQ", "TIME", "TYPE", "OUTCOME", "ACTOR", "TARGET", "DETAILS"]
        assert len(lines) == 3 and "authn.login" in lines[0] and "storage for alice" in lines[0]
        assert "mesh.deny" in lines[1] and '"subject":"outsider"' in lines[1]
        # Aligned: every row's TYPE starts under the header's.
        assert {line.index(" authn.login") if "authn.login" in line else line.index(" mesh.deny")
                for line in lines} == {header.index(" TYPE")}
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "tail", "--type", "authn.login", "--actor",
                                       "storage", "--json")
        rows = [json.loads(line) for line in out.strip().splitlines()]
        assert status == 0 and [x["outcome"] for x in rows] == ["ok", "failure"]
        assert rows[1]["seq"] == rows[0]["seq"] + 2  # the deny between them is filtered out
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "tail", "--actor", "nobody", "--json")
        assert status == 0 and out == ""  # a JSON-lines stream of no records: no lines
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "tail", "--actor", "nobody")
        assert status == 0 and out == "no records\n"
        status, _, err = await meshctl(capsys, r.home.root, "audit", "tail", "-n", "0")
        assert status == 2 and "--lines" in one_line(err)


async def test_audit_tail_follow_prints_new_records_as_they_arrive(short_tmp: Path) -> None:
    async with audited(short_tmp / "h") as r:
        shown: list[dict[str, Any]] = []
        follower = asyncio.create_task(_audit.tail(r.home, limit=1, type_=None, actor="storage", follow=True,
                                                   show=shown.extend, keep_going=lambda: len(shown) < 5))
        async def first_poll_done() -> bool:  # what is appended after it is new
            assert not follower.done(), "tail stopped before showing anything"
            return bool(shown)

        await eventually(first_poll_done, deadline=10)
        await r.producer.call("audit.append", {"records": [
            {"type": "test.late", "outcome": "ok", "target": f"late{i}"} for i in range(4)]}, timeout=5)
        count = await asyncio.wait_for(follower, 10)
        assert count == 5 and shown[0]["type"] == "authn.login" and shown[0]["outcome"] == "failure"
        assert [x["target"] for x in shown[1:]] == ["late0", "late1", "late2", "late3"]


async def test_audit_verify_passes_then_names_the_first_bad_record(short_tmp: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    async with audited(short_tmp / "h") as r:
        await r.append(20)
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "verify")
        assert status == 0 and "audit log verified: " in out
        status, out, _ = await meshctl(capsys, r.home.root, "--json", "audit", "verify")
        assert status == 0 and json.loads(out)["ok"] is True
        # Someone with the database key edits record 5 behind audit's back.
        db = _rows(db_path(r.home), await r.db_key())
        blob = db.execute("SELECT record FROM records WHERE seq = 5").fetchone()[0]
        old = decode_record(bytes(blob))
        forged = chain.Record(seq=5, time=old.time, actor=old.actor, event=old.event, outcome="denied",
                              target=old.target, details=dict(old.details))
        db.execute("UPDATE records SET record = ? WHERE seq = 5", (chain.encode_record(forged),))
        db.close()
        status, _, err = await meshctl(capsys, r.home.root, "audit", "verify")
        line = one_line(err)
        assert status == 1 and "FAILED" in line and "first bad record: 5" in line


async def test_export_then_verify_offline_with_only_the_public_key(short_tmp: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = short_tmp / "audit-bundle.msgpack"
    single = short_tmp / "single.msgpack"
    monkeypatch.setattr(_audit, "EXPORT_PAGE_RECORDS", 15)  # 43 records: pages of 15, 15 and 13
    async with audited(short_tmp / "h") as r:
        await r.append(40)
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "export", str(bundle))
        assert status == 0 and str(bundle.resolve()) in out and "records with proofs" in out
        assert bundle.stat().st_mode & 0o777 == 0o600
        status, out, _ = await meshctl(capsys, r.home.root, "--json", "audit", "export", str(bundle))
        exported = json.loads(out)
        assert exported["records"] == 43 and exported["pages"] == 3
        public = (await r.producer.call("audit.public_key", timeout=5))["public_key"]
        assert exported["public_key_hex"] == public.hex() and exported["public_key_z85"] in out
        assert _audit.parse_public_key(exported["public_key_z85"]) == public
        # A file holding one bundle (what earlier versions wrote) still verifies.
        single.write_bytes((await r.operator.call("audit.export", timeout=10))["bundle"])
    # The mesh is gone: offline verification needs the file and the key only.
    monkeypatch.delenv("CURVEMESH_HOME", raising=False)
    for key in (exported["public_key_z85"], exported["public_key_hex"]):
        status, out, _ = await meshctl(capsys, None, "audit", "verify", "--offline", str(bundle),
                                       f"--public-key={key}")
        assert status == 0 and f"bundle verified: {exported['records']} records" in out
    status, out, _ = await meshctl(capsys, None, "audit", "verify", "--offline", str(single),
                                   f"--public-key={exported['public_key_z85']}")
    assert status == 0 and "bundle verified" in out
    # About one key in 85 has a Z85 form starting with "-": in the "=" form meshctl takes it as the
    # key (here another key, so the bundle must fail to verify), not as a missing option value.
    dashed = next(z for z in (_audit.z85(os.urandom(32)) for _ in range(100_000)) if z.startswith("-"))
    status, _, err = await meshctl(capsys, None, "audit", "verify", "--offline", str(bundle),
                                   f"--public-key={dashed}")
    assert status == 1 and "FAILED" in one_line(err)

    def rewrite(name: str, change: Any) -> Path:
        value = msgpack.unpackb(bundle.read_bytes(), raw=False)
        change(value)
        path = short_tmp / name
        path.write_bytes(msgpack.packb(value, use_bin_type=True))
        return path

    async def offline(path: Path) -> str:
        status, _, err = await meshctl(capsys, None, "audit", "verify", "--offline", str(path),
                                       f"--public-key={exported['public_key_z85']}")
        assert status == 1
        return one_line(err)

    # Tamper with record 17, in the second page (its bytes still decode; its proof no longer fits).
    def forge(value: dict[str, Any]) -> None:
        page = msgpack.unpackb(value["bundles"][1], raw=False)
        entry = page["records"][2]
        record = decode_record(entry["record"])
        entry["record"] = chain.encode_record(chain.Record(
            seq=record.seq, time=record.time, actor=record.actor, event=record.event, outcome="forged",
            on_behalf_of=record.on_behalf_of, target=record.target, details=dict(record.details)))
        value["bundles"][1] = msgpack.packb(page, use_bin_type=True)
    assert "first bad record: 17" in await offline(rewrite("tampered.msgpack", forge))
    # A missing page, a missing record at the end, a page repeated: each names the first missing record.
    line = await offline(rewrite("dropped.msgpack", lambda v: v["bundles"].pop(1)))
    assert "first bad record: 15" in line and "missing" in line
    def cut(value: dict[str, Any]) -> None:
        page = msgpack.unpackb(value["bundles"][2], raw=False)
        page["records"].pop()
        value["bundles"][2] = msgpack.packb(page, use_bin_type=True)
    assert "first bad record: 42" in await offline(rewrite("cut.msgpack", cut))
    assert "first bad record: 0" in await offline(rewrite("repeated.msgpack", lambda v: v["bundles"].append(
        v["bundles"][0])))
    status, _, err = await meshctl(capsys, None, "audit", "verify", "--offline", str(bundle),
                                   "--public-key", "00" * 32)
    assert status == 1 and "FAILED" in one_line(err)
    status, _, err = await meshctl(capsys, None, "audit", "verify", "--offline", str(bundle), "--public-key", "nope")
    assert status == 2 and "--public-key" in one_line(err)
    status, _, err = await meshctl(capsys, None, "audit", "verify", "--offline", str(bundle))
    assert status == 2 and one_line(err)


async def test_meshctl_alerts_lists_and_acknowledges(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "threshold = 3" in RULES
    async with alert_rig(short_tmp / "h", Clock()) as r:
        status, out, _ = await meshctl(capsys, r.home.root, "alerts")
        assert status == 0 and out.strip() == "no open alerts"
        await r.producer.call("audit.append", {"records": [
            {"type": "authn.login", "outcome": "failure", "on_behalf_of": "mallory"}] * 3}, timeout=5)

        async def listed() -> list[dict[str, Any]]:
            status, out, _ = await meshctl(capsys, r.home.root, "alerts", "--json")
            assert status == 0
            return list(json.loads(out))
        end = asyncio.get_running_loop().time() + 10
        while not (alerts := await listed()):
            assert asyncio.get_running_loop().time() < end, "no alert within 10 s"
        [alert] = [a for a in alerts if a["rule"] == "failed_logins_account"]
        status, out, _ = await meshctl(capsys, r.home.root, "alerts")
        assert status == 0 and "failed_logins_account" in out and "mallory" in out and "ID" in out
        status, out, _ = await meshctl(capsys, r.home.root, "alerts", "ack", str(alert["id"]))
        assert status == 0 and f"alert {alert['id']} acknowledged" in out
        status, _, err = await meshctl(capsys, r.home.root, "alerts", "ack", str(alert["id"]))
        assert status == 1 and "NOT_FOUND" in one_line(err)
        status, _, err = await meshctl(capsys, r.home.root, "alerts", "ack")
        assert status == 2 and one_line(err)
        status, out, _ = await meshctl(capsys, r.home.root, "audit", "tail", "--type", "alert.ack", "--json")
        [acked] = [json.loads(line) for line in out.strip().splitlines()]
        assert acked["actor"] == "meshctl" and acked["details"]["alert_id"] == alert["id"]

"""Backups over a real in-process mesh: create while serving, verify, restore into a fresh home with
only the passphrase, refuse corrupted and truncated archives before writing anything, and flag a
rollback unless forced."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .storage_rig import StorageRig, storage_rig

PASSPHRASE = "backup-Passphrase-for-the-test-5512"


async def _fill(r: StorageRig) -> dict[str, Any]:
    scope = {"category": "memories"}
    for i in range(40):
        await r.put(r.authn, f"memory/{i}".encode(), os.urandom(64) + f"#{i}".encode())
    await r.authn.call("storage.records.collection", {**scope, "collection": "notes", "indexed": ["day"]}, timeout=10)
    for day in range(10):
        await r.authn.call("storage.records.insert", {**scope, "collection": "notes",
                                                      "doc": {"day": day, "text": f"note {day}"}}, timeout=10)
    await r.authn.call("storage.analytics.table", {**scope, "table": "mood", "columns": [["day", "BIGINT"],
                                                                                          ["score", "DOUBLE"]]},
                       timeout=10)
    await r.authn.call("storage.analytics.ingest", {**scope, "table": "mood",
                                                    "rows": [[d, d / 10] for d in range(30)]}, timeout=10)
    blob = os.urandom(300_000)
    await r.upload(r.authn, "voice/note-1.ogg", blob, category="memories")
    return {"blob": blob, "kv": {f"memory/{i}".encode(): await r.get(r.authn, f"memory/{i}".encode())
                                 for i in range(40)}}


async def _check(r: StorageRig, expected: dict[str, Any]) -> None:
    scope = {"category": "memories"}
    for key, value in expected["kv"].items():
        assert await r.get(r.authn, key) == value
    notes = await r.authn.call("storage.records.query", {**scope, "collection": "notes", "where": {"day": 3}},
                               timeout=10)
    assert [i["doc"]["text"] for i in notes["items"]] == ["note 3"]
    mood = await r.authn.call("storage.analytics.query", {**scope, "sql": "SELECT count(*), max(day) FROM mood"},
                              timeout=10)
    assert mood["rows"] == [[30, 29]]
    assert await r.download(r.authn, "voice/note-1.ogg", category="memories") == expected["blob"]


async def _backup(r: StorageRig, passphrase: str | None = PASSPHRASE) -> dict[str, Any]:
    job = await r.job("storage.backup.create", {"passphrase": passphrase} if passphrase else {})
    assert job["state"] == "done", job
    result: dict[str, Any] = job["result"]
    return result


def _place(r: StorageRig, archive: Path, name: str) -> str:
    target = r.home.root / "backups"
    target.mkdir(mode=0o700, exist_ok=True)
    shutil.copyfile(archive, target / name)
    return name


def _store_files(r: StorageRig) -> set[str]:
    root = r.home.data / "storage"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "work" not in p.parts}


async def test_backup_restores_on_a_fresh_machine_with_only_the_passphrase(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "a") as a:
        expected = await _fill(a)
        made = await _backup(a)
        assert made["sequence"] == 1
        verified = await a.job("storage.backup.verify", {"archive": made["archive"]})  # by the mesh's backup key
        assert verified["state"] == "done" and verified["result"]["ok"], verified
        archive = Path(made["path"])
        assert archive.stat().st_mode & 0o777 == 0o600
        copy = short_tmp / "carried.cmbak"
        shutil.copyfile(archive, copy)
    # Another machine: another home, another master password, other keys; only the passphrase carries over.
    async with storage_rig(short_tmp / "b", password="another-Master-Password-2277") as b:
        name = _place(b, copy, "carried.cmbak")
        refused = await b.job("storage.backup.restore", {"archive": name})  # its backup key is not ours
        assert refused["state"] == "failed" and "passphrase" in refused["error"]
        job = await b.job("storage.backup.restore", {"archive": name, "passphrase": PASSPHRASE})
        assert job["state"] == "done", job
        assert job["result"]["sequence"] == 1 and job["result"]["rollback"] is False
        await _check(b, expected)
        assert (await b.operator.call("storage.verify", timeout=30))["ok"]
        again = await b.job("storage.backup.restore", {"archive": name, "passphrase": PASSPHRASE})
        assert again["state"] == "failed" and "not empty" in again["error"]


async def test_corrupted_or_truncated_archives_are_refused_before_anything_is_written(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "a") as a:
        await _fill(a)
        archive = Path((await _backup(a))["path"])
        data = archive.read_bytes()
    async with storage_rig(short_tmp / "b") as b:
        before = _store_files(b)
        middle = len(data) // 2
        damaged = {"flipped.cmbak": data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:],
                   "cut-half.cmbak": data[:len(data) // 2], "cut-end.cmbak": data[:-10],
                   "cut-header.cmbak": data[:40]}
        for name, content in damaged.items():
            (b.home.root / "backups").mkdir(mode=0o700, exist_ok=True)
            (b.home.root / "backups" / name).write_bytes(content)
            verify = await b.job("storage.backup.verify", {"archive": name, "passphrase": PASSPHRASE})
            assert verify["state"] == "failed", name
            restore = await b.job("storage.backup.restore", {"archive": name, "passphrase": PASSPHRASE})
            assert restore["state"] == "failed", name
            assert _store_files(b) == before, name
        status = await b.operator.call("storage.status", timeout=10)
        assert status["restoring"] is None and status["backup"]["sequence"] == 0


async def test_restoring_an_older_archive_is_flagged_as_a_rollback(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "a") as a:
        expected = await _fill(a)
        first = await _backup(a, passphrase=None)
        await a.put(a.authn, b"after-first", b"x")
        second = await _backup(a, passphrase=None)
        assert (first["sequence"], second["sequence"]) == (1, 2)
        # Everything storage kept is lost, its state file too: the lineage kept in the keyring
        # still says which archive is the newest.
        await a.stop_storage()
        shutil.rmtree(a.home.data / "storage")
        await a.start_storage()
        status = await a.operator.call("storage.status", timeout=10)
        assert status["backup"]["sequence"] == 0  # the state file is new ...
        refused = await a.job("storage.backup.restore", {"archive": first["archive"]})
        assert refused["state"] == "failed" and "older than #2" in refused["error"]  # ... the keyring's is not
        forced = await a.job("storage.backup.restore", {"archive": first["archive"], "force": True})
        assert forced["state"] == "done" and forced["result"]["rollback"] is True, forced
        await _check(a, expected)
        assert await a.get(a.authn, b"after-first") is None  # what the older archive did not hold
        third = await _backup(a, passphrase=None)
        assert third["sequence"] == 3  # numbers never go back, even after a forced rollback

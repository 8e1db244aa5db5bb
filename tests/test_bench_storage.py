"""The storage section of ``make bench`` (bench/storage.py, bench/storage_mesh.py): its mesh
configuration, the backup and restore growth curve (issue 18) in a tiny run against the real
processes, the restore check it relies on, the shape of the curve's figures, its command line.

The figures are timings in ``make bench``, never timed assertions here: what is asserted is that
each point of the curve was filled through the mesh, backed up and restored by the real storage
jobs, that the restore was read back and matched, that every figure is there and positive, and
that nothing the run made is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from bench import report, storage_mesh
from bench.__main__ import _args, _sections
from bench.harness import BenchError
from bench.storage import MIB, PIECE_BYTES, StorageOptions
from shared import MeshError, load_config

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
#: Two points (the fill adds at least one 8 MiB file per point); the data calls as small as they go.
TINY = StorageOptions(rounds=1, calls=4, messages=8, window=4, warmup=2, backup_sizes=(16, 48), backup_rounds=2)
PER_POINT = ("st_backup_s", "st_backup_s_per_gib", "st_backup_mib_s", "st_backup_cpu_s_per_gib", "st_restore_s",
             "st_restore_s_per_gib", "st_restore_mib_s", "st_restore_cpu_s_per_gib", "st_backup_archive_mib")


def test_the_bench_mesh_keeps_the_repository_s_rules_and_its_anchors_out_of_the_user_s(tmp_path: Path) -> None:
    repo = load_config(ROOT / "mesh.toml")
    anchors = tmp_path / "anchors"
    path = tmp_path / "mesh.toml"
    path.write_text(storage_mesh.mesh_toml(repo, anchors), "utf-8")
    config = load_config(path)  # parses and validates as every process of the bench home will
    for role in ("service", "operator"):  # the two the bench's identities have, as the repository has them
        assert config.acl.role[role] == repo.acl.role[role]
    for name in ("keyvault", "audit", "storage"):
        assert config.acl.identity[name] == repo.acl.identity[name]
    assert "storage.health" in config.acl.identity[storage_mesh.CALLER].call
    assert config.keyvault.entitlements == repo.keyvault.entitlements
    assert config.argon2.file == repo.argon2.file  # the passphrase wrap costs what it costs for real
    assert config.keyvault.keystore == "file" and config.keyvault.anchor_dir == str(anchors)


def test_a_repository_that_does_not_grant_the_calls_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("version = 1\n", "utf-8")  # no declarations: nothing is granted
    with pytest.raises(BenchError, match=r"does not grant storage\.kv\.\* and storage\.records\.\*"):
        storage_mesh.mesh_toml(load_config(path), tmp_path / "anchors")


def test_a_tiny_curve_backs_up_and_restores_real_data_at_each_size(monkeypatch: pytest.MonkeyPatch,
                                                                    short_tmp: Path) -> None:
    # Every home, archive and anchor directory of the run is made here: what is left is a leak.
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    raw = storage_mesh.measure(TINY)
    assert list(short_tmp.iterdir()) == []
    # Gets under writes: as many gets as the method's own per round, each answered while puts flowed.
    loaded = raw["calls"]["gets_under_puts"]
    assert len(loaded["samples"]) == TINY.calls * TINY.rounds and all(s > 0 for s in loaded["samples"])
    assert len(loaded["puts_s"]) == TINY.rounds and all(rate > 0 for rate in loaded["puts_s"])
    under = report.loaded_get_figures(raw)
    assert set(under) == {"st_mesh_kv_get_under_puts_p50_us", "st_mesh_kv_get_under_puts_p99_us"}
    assert under["st_mesh_kv_get_under_puts_p50_us"]["baseline"]["name"] == "storage.kv.get p50 alone"
    assert under["st_mesh_kv_get_under_puts_p50_us"]["value"] > 0
    points = raw["curve"]
    assert [p["mib"] for p in points] == [16, 48]
    previous = 0
    for point in points:
        stored, backup, restore = point["stored"], point["backup"], point["restore"]
        assert "error" not in backup and "error" not in restore, (backup, restore)
        # The store grew through the mesh to about the point's size (to a file), the same mix each time.
        assert previous < stored["bytes"] and abs(stored["bytes"] - point["mib"] * MIB) <= storage_mesh.FILE_BYTES
        previous = stored["bytes"]
        assert backup["result"]["bytes"] > stored["bytes"]  # the archive holds all of it, encrypted
        assert backup["seconds"] > 0 and set(backup["phases_s"]) <= {"starting", "snapshot", "pack"}
        # Each job ran backup_rounds times; the figure is the median run's, and storage did the work.
        for job in (backup, restore):
            assert len(job["runs"]) == 2 and job["seconds"] in [r["seconds"] for r in job["runs"]]
            assert all(r["cpu_s"] > 0 and r["run_queue_s"] >= 0 for r in job["runs"])
            assert all(r["user_s"] >= 0 and r["system_s"] >= 0 and r["user_s"] + r["system_s"] > 0
                       for r in job["runs"])
        # The restore is real: storage restored every file, and what was read back matched.
        assert restore["result"]["files"] == stored["files"]
        assert restore["result"]["kv"] >= stored["kv_entries"] and restore["result"]["records"] >= stored["records"]
        verified = restore["verified"]
        assert verified["files"] >= 2 * points.index(point) + 1 and verified["kv"] >= 2 and verified["records"] >= 2
        assert verified["file_bytes"] == verified["files"] * storage_mesh.FILE_BYTES
        # The phases the 50 ms polls saw (a short one may pass unseen) are the restore's.
        assert restore["seconds"] > 0 and set(restore["phases_s"]) <= {"starting", "verify", "extract", "import"}
    assert points[1]["fill"]["files"] > 0 and points[1]["fill"]["kv_puts_s"] > 0
    assert raw["disk"]["free_bytes"] >= raw["disk"]["needed_bytes"] > 0

    figs = report.backup_figures(raw)
    expected = {f"{key}_{mib}" for key in PER_POINT for mib in (16, 48)}
    expected |= {"st_backup_slope", "st_restore_slope", "st_backup_cpu_slope", "st_restore_cpu_slope",
                 "st_file_upload_mb_s"}
    assert set(figs) == expected
    for key, fig in figs.items():
        assert fig["group"] == report.STORAGE_GROUP and fig["informational"] and fig["met"] is None, key
        assert fig["value"] > 0 and math.isfinite(fig["value"]) and not fig.get("error"), key
    for name in ("backup", "restore", "backup_cpu", "restore_cpu"):
        job, cpu = name.removesuffix("_cpu"), "cpu_" if name.endswith("_cpu") else ""
        slope = figs[f"st_{name}_slope"]
        first, last = (figs[f"st_{job}_{cpu}s_per_gib_{mib}"]["value"] for mib in (16, 48))
        assert slope["from_mib"] == 16 and slope["to_mib"] == 48
        assert slope["value"] == pytest.approx(last / first, rel=0.01)
        assert figs[f"st_{job}_{cpu}s_per_gib_48"]["ratio"] == slope["value"]
        if cpu:  # the CPU split into the code's own (user) and the kernel's, each with its slope
            assert figs[f"st_{job}_cpu_s_per_gib_48"]["user_s_per_gib"] >= 0
            assert {"user_slope", "system_slope"} <= set(slope)  # to the clock tick: no sign asserted
    assert figs["st_restore_s_48"]["verified"] == points[1]["restore"]["verified"]
    assert report.storage_errors(figs) == []
    json.dumps(figs)  # the results file can hold every figure
    text = report.storage_table(figs)
    assert "backup per GiB at 48 MiB" in text and "restore per-GiB slope, 48 MiB / 16 MiB" in text


def test_a_failed_point_is_reported_as_not_measured() -> None:
    stored = {"bytes": 16 * MIB, "files": 2, "kv_entries": 1, "records": 1, "analytics_rows": 1}
    backup = {"seconds": 1.0, "wall_s": 1.1, "cpu_s": None, "run_queue_s": None, "phases_s": {"pack": 1.0},
              "result": {"bytes": 17 * MIB}}  # no /proc: no CPU figures
    points = [{"mib": 16, "stored": stored, "backup": backup, "restore": {"error": "restore: job failed: boom"}},
              {"mib": 48, "backup": {"error": "storage.files.put.chunk as authn: UNAVAILABLE: sealed"},
               "restore": {"error": "not run: the backup failed"}}]
    figs = report.backup_figures({"curve": points})
    assert figs["st_backup_s_16"]["value"] == 1.0 and "st_backup_cpu_s_per_gib_16" not in figs
    assert figs["st_restore_s_16"]["value"] is None and figs["st_backup_s_48"]["value"] is None
    assert "st_backup_slope" not in figs and "st_restore_slope" not in figs  # one point measured: no slope
    errors = report.storage_errors(figs)
    assert len(errors) == 3 and any("boom" in e for e in errors)



class FakeStorage:
    """Answers the reads :func:`bench.storage_mesh.verify_restore` makes, from what a fill stored
    (``spoil``: the file whose 1,000th byte reads back changed)."""

    name = "authn"

    def __init__(self, pool: list[bytes], files: int, spoil: str | None = None) -> None:
        self.pool, self.files, self.spoil = pool, files, spoil
        self.records = {f"r{n}": storage_mesh.record_doc(pool, n) for n in range(4)}

    async def call(self, target: str, body: Any, timeout: float) -> Any:
        if target == "storage.kv.get":
            return {"found": True, "value": storage_mesh.kv_value(int(body["key"].split(b"/")[1]))}
        if target == "storage.records.get":
            return {"found": True, "doc": self.records[body["id"]]}
        if target == "storage.files.get":  # two pieces a reply; ``offset`` counts pieces here
            number, index = int(body["name"][5:11]), body["offset"]
            data = b"".join(storage_mesh.file_piece(self.pool, number, i) for i in (index, index + 1))
            if body["name"] == self.spoil and index == 0:
                data = data[:999] + bytes([data[999] ^ 1]) + data[1000:]
            following = index + 2
            return {"data": data, "next": following if following < storage_mesh.FILE_BYTES // PIECE_BYTES else None}
        raise MeshError("NOT_FOUND", target)


async def test_the_restore_check_reads_every_byte_of_its_files_and_refuses_a_difference() -> None:
    filled = storage_mesh.Filled()
    stored = {"files": 3, "kv_entries": 2, "records": 2,
              "checks": {"kv": [0, 1], "files": [0, 2], "records": [(0, "r0"), (3, "r3")]}}
    counts = {"files": 3, "kv": 2, "records": 2}
    good = FakeStorage(filled.pool, 3)
    assert await storage_mesh.verify_restore(good, stored, filled.pool, counts) == {  # type: ignore[arg-type]
        "kv": 2, "files": 2, "file_bytes": 2 * storage_mesh.FILE_BYTES, "records": 2}
    spoiled = FakeStorage(filled.pool, 3, spoil=storage_mesh.file_name(2))
    with pytest.raises(BenchError, match=r"fill/000002\.bin reads back .* differ"):
        await storage_mesh.verify_restore(spoiled, stored, filled.pool, counts)  # type: ignore[arg-type]
    with pytest.raises(BenchError, match="do not cover"):
        await storage_mesh.verify_restore(good, stored, filled.pool, {**counts, "files": 2})  # type: ignore[arg-type]
    # Each fill file's content is its own: two files never read back alike.
    assert storage_mesh.file_piece(filled.pool, 0, 0) != storage_mesh.file_piece(filled.pool, 8, 0)


def test_the_curve_refuses_to_start_without_the_disk_space_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage_mesh.shutil, "disk_usage", lambda _path: usage(1 << 40, 1 << 40, 1 << 30))
    with pytest.raises(BenchError, match=r"needs about .* GiB free .* give smaller --backup-sizes"):
        storage_mesh.measure(dataclasses.replace(TINY, backup_sizes=(1024, 4096)))
    assert storage_mesh.disk_needed((1024, 4096)) > (2 * 4096 + 1024 + 4096) * MIB


def test_the_command_line_sizes_the_curve() -> None:
    args = _args(["--only", "storage"])
    assert _sections(args) == ["storage"] and args.storage_options.backup_sizes == (1024, 4096)
    assert _args(["--quick"]).storage_options.backup_sizes == (64, 256)
    assert (args.storage_options.backup_rounds, _args(["--quick"]).storage_options.backup_rounds) == (2, 1)
    quick = _args(["--quick", "--backup-sizes", "1024,4096"]).storage_options
    assert quick == dataclasses.replace(StorageOptions.quick(), backup_sizes=(1024, 4096))
    assert _args(["--backup-sizes", "8,16,1024"]).storage_options.backup_sizes == (8, 16, 1024)
    for bad in ("4,1024", "1024,1024", "4096,1024", "1024,1030", "1024,x", ""):
        with pytest.raises(SystemExit):
            _args(["--backup-sizes", bad])
    with pytest.raises(SystemExit):
        _args(["--backup-rounds", "0"])

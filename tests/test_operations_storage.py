"""meshctl storage status|verify and meshctl backup create|verify|restore, against a real in-process
mesh (broker thread; keyvault, audit and storage on the test's loop). The command line runs in a
worker thread and talks to the broker over its ipc socket like the real tool."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared import MeshError

from .storage_rig import storage_rig
from .test_operations_audit import meshctl, one_line

PASSPHRASE = "operator-Backup-Passphrase-7719"


def _secret_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return path


async def test_storage_status_and_verify_name_damage(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with storage_rig(short_tmp / "h") as r:
        blob = os.urandom(200_000)
        await r.upload(r.authn, "doc.pdf", blob)
        status, out, _ = await meshctl(capsys, r.home.root, "storage", "status")
        assert status == 0 and "storage: ok" in out and "files v1" in out
        status, out, _ = await meshctl(capsys, r.home.root, "storage", "verify")
        assert status == 0 and "storage verified" in out
        # Flip one byte in the middle of the file's blob: verify must fail and name the store.
        (path,) = [p for p in (r.home.data / "storage" / "files").rglob("*.v1")]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        status, out, err = await meshctl(capsys, r.home.root, "storage", "verify")
        assert status == 1 and "files" in out and "FAILED" in one_line(err)
        status, out, _ = await meshctl(capsys, r.home.root, "--json", "storage", "verify")
        report = json.loads(out)
        assert status == 1 and report["ok"] is False and report["problems"][0]["store"] == "files"
        # The damaged file is refused loudly on read, never served.
        reply = r.authn.call("storage.files.get", {"category": "files", "name": "doc.pdf"},
                             timeout=10)
        with pytest.raises(MeshError) as refused:
            await reply
        assert refused.value.code == "UNAVAILABLE" and "integrity" in refused.value.message


async def test_backup_create_verify_and_restore_from_the_command_line(short_tmp: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    passphrase_file = _secret_file(short_tmp / "passphrase", PASSPHRASE)
    output = short_tmp / "carried.cmbak"
    async with storage_rig(short_tmp / "a") as a:
        await a.put(a.authn, b"memory", b"the first day")
        status, out, _ = await meshctl(capsys, a.home.root, "backup", "create", "--passphrase-file",
                                       str(passphrase_file), "--output", str(output))
        assert status == 0 and "backup #1 written to" in out and output.stat().st_mode & 0o777 == 0o600
        status, out, _ = await meshctl(capsys, a.home.root, "backup", "verify", str(output))
        assert status == 0 and f"archive verified: {output}: backup #1" in out  # by the mesh's own backup key
        status, _, err = await meshctl(capsys, a.home.root, "backup", "restore", "--yes", str(output),
                                       "--passphrase-file", str(passphrase_file))
        assert status == 1 and "not empty" in one_line(err)
        assert [p.name for p in (a.home.root / "backups").iterdir() if p.name.startswith("incoming")] == []
    async with storage_rig(short_tmp / "b", password="second-Machine-Password-4410") as b:
        status, out, _ = await meshctl(capsys, b.home.root, "backup", "verify", str(output), "--passphrase-file",
                                       str(passphrase_file))
        assert status == 0 and "archive verified" in out
        status, out, err = await meshctl(capsys, b.home.root, "backup", "restore", "--yes", str(output),
                                       "--passphrase-file", str(passphrase_file))
        assert status == 0 and "restored backup #1" in out and "1 key-value entries" in out, err
        assert await b.get(b.authn, b"memory") == b"the first day"
        status, _, err = await meshctl(capsys, b.home.root, "backup", "create", "extra-file")
        assert status == 2 and "FILE does not apply to backup create" in one_line(err)

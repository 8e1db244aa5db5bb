"""Configuration changes are audited: the broker records its config file's digest at every start."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from services.broker.configuration import CONFIG_DIGEST_FILE

from .conftest import FAST_CONFIG
from .mesh import InProcessMesh
from .test_broker_attacks import read_spool


def config_records(mesh: InProcessMesh) -> list[dict]:
    return [r for r in read_spool(mesh) if r.get("type") == "mesh.config"]


def restart(mesh: InProcessMesh) -> None:
    mesh.stop_broker()
    mesh.start_broker()


async def test_config_digest_is_recorded_at_every_start(tmp_path: Path) -> None:
    config_file = tmp_path / "mesh.toml"
    async with InProcessMesh(tmp_path, FAST_CONFIG) as mesh:
        first_digest = hashlib.sha256(config_file.read_bytes()).hexdigest()
        [first] = config_records(mesh)
        assert first["outcome"] == "ok" and first["path"] == str(config_file)
        assert first["sha256"] == first_digest
        assert first["previous_sha256"] is None and first["changed"] is True
        state = mesh.home.spool / CONFIG_DIGEST_FILE
        assert state.read_text().strip() == first_digest
        assert stat.S_IMODE(state.stat().st_mode) == 0o600

        restart(mesh)  # same file: recorded, not changed
        second = config_records(mesh)[-1]
        assert second["sha256"] == second["previous_sha256"] == first_digest
        assert second["changed"] is False

        config_file.write_text(FAST_CONFIG + "\n# operator edit\n")
        new_digest = hashlib.sha256(config_file.read_bytes()).hexdigest()
        restart(mesh)
        third = config_records(mesh)[-1]
        assert third["changed"] is True
        assert third["sha256"] == new_digest and third["previous_sha256"] == first_digest
        assert state.read_text().strip() == new_digest
        assert len(config_records(mesh)) == 3


async def test_unreadable_config_is_recorded_and_does_not_stop_the_broker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with InProcessMesh(tmp_path, FAST_CONFIG) as mesh:
        mesh.stop_broker()
        missing = tmp_path / "gone.toml"
        monkeypatch.setenv("CURVEMESH_CONFIG", str(missing))
        mesh.start_broker()  # the broker keeps the config it was given; the file is gone
        last = config_records(mesh)[-1]
        assert last["path"] == str(missing)
        assert last["outcome"] == "unreadable" and last["sha256"] is None
        assert last["changed"] is True and last["previous_sha256"] is not None

"""Keys off the home (DESIGN.md invariant 12): without a platform keyring the master key lives in
the anchor directory outside the home, a copy of the home alone reads nothing, an older home's
in-home keystore moves out once (audited), and ``keystore = "password"`` stores the key nowhere.

Keyvault runs for real (its handlers called directly, as in tests/test_keyvault.py); the no-keyring
paths are chosen with ``[keyvault] keystore`` = ``file`` or ``password``, since the session runs a
real Secret Service. Each test has its own anchor directory (``XDG_STATE_HOME`` or ``anchor_dir``).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import keyring
import pytest

from services.keyvault import store
from services.keyvault.keystore import FILE_WARNING
from services.keyvault.setup import initialise
from shared import ConfigError, MeshHome, Sealed, StateError, parse_config
from shared.testing import call_handler

from .mesh import InProcessMesh
from .test_keyvault import IDENTITIES, KV_CONFIG, PASSWORD, get_key, started
from .test_operations_security import run

FILE_CONFIG = KV_CONFIG + 'keystore = "file"\n'
PASSWORD_CONFIG = KV_CONFIG + 'keystore = "password"\n'


@pytest.fixture
def state_home(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own ``XDG_STATE_HOME``; the anchor directory is ``<it>/curvemesh``."""
    path = short_tmp / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(path))
    return path


def file_home(root: Path, config: str = FILE_CONFIG) -> tuple[MeshHome, InProcessMesh, str]:
    mesh = InProcessMesh(root, config, dict(IDENTITIES))
    name, warning = initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    assert name == "file" and warning == FILE_WARNING
    state = store.load(mesh.home)
    assert state is not None
    return mesh.home, mesh, state.mesh_id


def spooled(home: MeshHome, event: bytes) -> int:
    return (home.spool / "keyvault-audit.spool").read_bytes().count(event)


async def test_a_copy_of_the_home_without_its_anchor_dir_stays_sealed(short_tmp: Path, state_home: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home, mesh, mesh_id = file_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    key = await get_key(vault)
    protection = (await call_handler(vault, "status")).get("protection")
    await vault.on_stop()
    # The home copied elsewhere (a sync, a backup, a stolen home directory), without the anchors.
    copy = MeshHome(short_tmp / "copy")
    shutil.copytree(home.root, copy.root)
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "elsewhere"))
    thief = await started(copy, parse_config(FILE_CONFIG))
    assert (await call_handler(thief, "status"))["sealed"] is True
    with pytest.raises(Sealed):
        await get_key(thief)
    await thief.on_stop()
    slot = state_home / "curvemesh" / f"master_{mesh_id}"
    assert stat.S_IMODE(os.stat(slot).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(slot.parent).st_mode) == 0o700
    assert protection == (f"file outside the home ({slot}): a copy of the home reads nothing; "
                          "a copy of the whole disk does")
    master = bytes(slot.read_bytes())
    for path in copy.root.rglob("*"):  # the master key (as stored) is nowhere in the copy
        if path.is_file():
            assert master not in path.read_bytes(), path
    # The original, with its anchors, still unseals alone.
    monkeypatch.setenv("XDG_STATE_HOME", str(state_home))
    again = await started(home, mesh.config)
    assert await get_key(again) == key
    await again.on_stop()


async def test_an_in_home_file_keystore_moves_off_the_home_once_audited(short_tmp: Path, state_home: Path) -> None:
    home, mesh, mesh_id = file_home(short_tmp / "h")
    slot = state_home / "curvemesh" / f"master_{mesh_id}"
    legacy = home.keys / "master.keystore"
    stored = slot.read_bytes()
    # As an older curvemesh left it: the master key in the home, nothing outside.
    slot.rename(legacy)
    vault = await started(home, mesh.config)
    assert (await call_handler(vault, "status"))["sealed"] is False
    assert not legacy.exists() and slot.read_bytes() == stored
    assert stat.S_IMODE(os.stat(slot).st_mode) == 0o600
    assert spooled(home, b"keyvault.anchor_moved") == 1
    spool = (home.spool / "keyvault-audit.spool").read_bytes()
    assert str(legacy).encode() in spool and str(slot).encode() in spool and stored not in spool
    await vault.on_stop()
    again = await started(home, mesh.config)  # the second start has nothing to move
    assert (await call_handler(again, "status"))["sealed"] is False
    assert spooled(home, b"keyvault.anchor_moved") == 1
    await again.on_stop()
    # An in-home copy that differs from the one outside: refuse, naming both, rather than guess.
    legacy.write_bytes(b"c29tZXRoaW5nIGVsc2U=")
    legacy.chmod(0o600)
    with pytest.raises(StateError, match="differ") as refused:
        await started(home, mesh.config)
    assert str(legacy) in refused.value.message and str(slot) in refused.value.message
    assert legacy.exists() and slot.read_bytes() == stored  # neither copy touched


async def test_password_keystore_stores_nothing_and_starts_sealed_each_time(short_tmp: Path,
                                                                             state_home: Path) -> None:
    mesh = InProcessMesh(short_tmp / "h", PASSWORD_CONFIG, dict(IDENTITIES))
    name, warning = initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    assert name == "password (not stored)" and warning is None
    state = store.load(mesh.home)
    assert state is not None

    def nothing_stored() -> None:
        assert not (state_home / "curvemesh").exists() or not any((state_home / "curvemesh").iterdir())
        assert not (mesh.home.keys / "master.keystore").exists()
        assert keyring.get_password("curvemesh", f"master:{state.mesh_id}") is None

    nothing_stored()
    for _ in range(2):  # each start of keyvault: sealed until unlocked
        vault = await started(mesh.home, mesh.config)
        status = await call_handler(vault, "status")
        assert status["sealed"] is True
        assert status["protection"] == "not stored: the mesh starts sealed; a copy of the disk reads nothing"
        with pytest.raises(Sealed):
            await get_key(vault)
        await call_handler(vault, "unlock", {"password": PASSWORD})
        assert (await get_key(vault))["version"] == 1
        nothing_stored()
        await call_handler(vault, "lock")
        with pytest.raises(Sealed):
            await get_key(vault)
        await call_handler(vault, "unlock", {"password": PASSWORD})
        await vault.on_stop()
        nothing_stored()


async def test_switching_to_password_removes_every_stored_copy_audited(short_tmp: Path, state_home: Path) -> None:
    home, _, mesh_id = file_home(short_tmp / "h")
    slot = state_home / "curvemesh" / f"master_{mesh_id}"
    assert slot.exists()
    vault = await started(home, parse_config(PASSWORD_CONFIG))
    assert (await call_handler(vault, "status"))["sealed"] is True
    assert not slot.exists() and spooled(home, b"keyvault.anchor_removed") == 1
    await vault.on_stop()


def test_anchor_dir_is_checked(short_tmp: Path) -> None:
    for bad in ("relative/dir", "/a/../b"):
        with pytest.raises(ConfigError, match=r"keyvault\.anchor_dir"):
            parse_config(FILE_CONFIG + f'anchor_dir = "{bad}"\n')
    from shared.keystore import anchor_dir
    home = MeshHome(short_tmp / "h")
    home.ensure()
    with pytest.raises(ConfigError, match=r"keyvault\.anchor_dir: .* is inside the mesh home"):
        anchor_dir(home, str(home.root / "anchors"))
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    (short_tmp / "link").symlink_to(real)
    with pytest.raises(ConfigError, match="symlink"):
        anchor_dir(home, str(short_tmp / "link"))
    real.chmod(0o755)
    with pytest.raises(ConfigError, match="chmod 700"):
        anchor_dir(home, str(real))
    created = anchor_dir(home, str(short_tmp / "new" / "anchors"))
    assert stat.S_IMODE(os.stat(created).st_mode) == 0o700


async def test_keyvault_refuses_an_anchor_dir_inside_the_home_at_start(short_tmp: Path) -> None:
    inside = KV_CONFIG + f'anchor_dir = "{short_tmp / "h" / "keys" / "anchors"}"\n'
    mesh = InProcessMesh(short_tmp / "h", inside, dict(IDENTITIES))
    initialise(mesh.home, parse_config(KV_CONFIG), bytearray(PASSWORD.encode()))
    with pytest.raises(ConfigError, match=r"keyvault\.anchor_dir: .* is inside the mesh home"):
        await started(mesh.home, mesh.config)


def test_init_with_the_password_keystore_says_the_mesh_starts_sealed(fast_home: MeshHome,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = fast_home.root / "mesh.toml"
    config.write_text(config.read_text().replace('keystore = "auto"', 'keystore = "password"', 1))
    assert parse_config(config.read_text()).keyvault.keystore == "password"
    status, out, err = run(capsys, fast_home, "init")
    assert status == 0, err
    assert "master key: password (not stored)" in out
    assert "the mesh starts sealed" in err and "meshctl security unlock" in err
    state = store.load(fast_home)
    assert state is not None and keyring.get_password("curvemesh", f"master:{state.mesh_id}") is None
    assert not (fast_home.keys / "master.keystore").exists()


def test_files_left_readable_by_older_versions_are_closed_before_it_starts(short_tmp: Path) -> None:
    """Older runs left ``log/supervisord.log`` and its rotated backups, and the public certificates,
    0644; the start path of ``meshctl up`` closes them (new ones are created 0600)."""
    from tools.meshctl_cli._supervisor import tighten_files
    home = MeshHome(short_tmp / "h")
    home.ensure()
    (home.certs / "allowed").mkdir(mode=0o700)
    old_files = [home.log / "supervisord.log", home.log / "supervisord.log.1", home.log / "keyvault.log",
                 home.keys / "broker.key", home.certs / "allowed" / "storage.key"]
    for path in old_files:
        path.write_text("old lines\n")
        path.chmod(0o644)
    outside = short_tmp / "outside.log"
    outside.write_text("not the mesh's\n")
    outside.chmod(0o644)
    (home.log / "linked.log").symlink_to(outside)
    exposed_secret = home.keys / "storage.key_secret"
    exposed_secret.write_text("a secret key someone made readable\n")
    exposed_secret.chmod(0o644)
    tighten_files(home)
    for path in old_files:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # Left as found: storage refuses to start with it, so the exposure is not hidden.
    assert stat.S_IMODE(os.stat(exposed_secret).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o644  # a symlink is not followed out of the home

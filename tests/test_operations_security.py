"""meshctl and the keyvault: init's master password, seal and unlock, sessions, passwd, rotation.

Init runs in process (no mesh needed); the rest drives a real mesh under
supervisord through the ``meshctl`` command line, with the real Secret Service
the test session runs (conftest.py). Every home gets a mesh.toml with a tiny
Argon2 master profile (``[argon2] test_profiles = true``), so a derivation
takes milliseconds instead of seconds and a GiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keyring
import pytest

from shared import MeshClient, MeshHome, Sealed, certs

from .test_operations_e2e import mesh_home, meshctl, wait_until, write_fast_config

PASSPHRASE = re.compile(r"^    ([a-z2-9]{5}(?:-[a-z2-9]{5}){5})$", re.M)
STRONG = "violet-harbour-quantum-47-ledger"
STRONGER = "amber Orchard 93 tidal compass lantern"


def secret_file(directory: Path, name: str, text: str, mode: int = 0o600) -> str:
    path = directory / name
    path.unlink(missing_ok=True)
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return str(path)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("meshctl: ")
    return lines[0]


@pytest.fixture
def secrets_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmpw") as path:
        yield Path(path)


@pytest.fixture
def fresh(fast_home: MeshHome) -> MeshHome:
    return fast_home


def run(capsys: pytest.CaptureFixture[str], home: MeshHome, *argv: str) -> tuple[int, str, str]:
    from tools.meshctl_cli import main
    status = main(["--home", str(home.root), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def mesh_id(home: MeshHome) -> str:
    marker = json.loads((home.root / "curvemesh-home.json").read_text())
    return str(marker["keyvault"]["mesh_id"])


# -- init -------------------------------------------------------------------------------


def test_init_without_a_terminal_shows_a_recovery_passphrase_once(fresh: MeshHome,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, fresh, "init")
    assert status == 0, err
    (passphrase,) = PASSPHRASE.findall(out)
    assert out.count(passphrase) == 1 and passphrase not in err
    assert "This is the only time it is shown. Without it, a sealed mesh cannot be unlocked." in out
    assert "deriving the master key (Argon2id, 8 MiB, 1 pass, 1 lane)..." in err
    assert "master key: keyring (SecretService)" in out
    assert "meshctl: warning: TEST ARGON2 PROFILES IN USE" in err and "TEST ARGON2" not in out  # warnings: stderr
    state = fresh.data / "keyvault" / "state"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert keyring.get_password("curvemesh", f"master:{mesh_id(fresh)}")  # the master key, in the keyring
    for path in fresh.root.rglob("*"):  # the passphrase is nowhere in the home
        if path.is_file():
            assert passphrase.encode() not in path.read_bytes(), path
    # The passphrase derives the master key the keystore holds (services unlock with it).
    from services.keyvault import store
    loaded = store.load(fresh)
    master = store.derive_master(bytearray(passphrase.encode()), loaded)
    assert len(store.open_keys(loaded, master)) == len(loaded.current)
    assert keyring.get_password("curvemesh", f"master:{loaded.mesh_id}").encode() != passphrase.encode()


def test_init_with_a_password_file(fresh: MeshHome, secrets_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readable = secret_file(secrets_dir, "open", STRONG, 0o644)
    status, _, err = run(capsys, fresh, "init", "--password-file", readable)
    assert status == 1 and "must be 0600" in one_line(err) and STRONG not in err
    weak = secret_file(secrets_dir, "weak", "password1234")
    status, _, err = run(capsys, fresh, "init", "--password-file", weak)
    assert status == 1 and "too weak" in one_line(err) and "password1234" not in err
    assert not list(fresh.keys.glob("*"))  # refused before any key was written
    good = secret_file(secrets_dir, "good", STRONG)
    status, out, err = run(capsys, fresh, "init", "--json", "--password-file", good)
    assert status == 0, err
    result = json.loads(out)
    assert result["recovery_passphrase"] is None and STRONG not in out + err
    assert result["keyvault"]["keystore"].startswith("keyring") and result["keyvault"]["test_profiles"] is True
    # A second init is refused, and changes nothing.
    first = mesh_id(fresh)
    status, _, err = run(capsys, fresh, "init", "--password-file", good)
    assert status == 1 and "already initialised" in one_line(err)
    status, out, _ = run(capsys, fresh, "init", "--if-needed")
    assert status == 0 and "already initialised" in out and mesh_id(fresh) == first
    # --force starts over: new hierarchy, the old master key gone from the keyring.
    status, out, err = run(capsys, fresh, "init", "--force", "--yes", "--password-file", good)
    assert status == 0 and "replaced" in out, err
    assert mesh_id(fresh) != first and keyring.get_password("curvemesh", f"master:{first}") is None


def test_init_on_a_terminal_asks_twice_and_refuses_weak_passwords(
        fresh: MeshHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.meshctl_cli import _intake
    monkeypatch.setattr(_intake, "on_terminal", lambda: True)
    answers: list[str] = []
    monkeypatch.setattr(_intake.getpass, "getpass", lambda prompt: answers.pop(0))
    answers[:] = ["short", "password1234", STRONG, STRONGER]  # too short, too weak, a mismatch
    status, _, err = run(capsys, fresh, "init")
    assert status == 1 and "did not match (gave up after 3 tries)" in err.splitlines()[-1]
    assert "too weak" in err and STRONG not in err and not (fresh.data / "keyvault" / "state").exists()
    answers[:] = ["password1234", STRONG, STRONG]
    status, out, err = run(capsys, fresh, "init")
    assert status == 0, err
    assert not PASSPHRASE.search(out) and answers == [] and STRONG not in out + err


def test_init_gives_an_older_home_its_master_key(fresh: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, fresh, "init")[0] == 0
    broker = certs.load_certificate(fresh.public_key_path("broker")).public_key
    # As a home initialised before keyvault had a key hierarchy looks:
    marker = fresh.root / "curvemesh-home.json"
    info = json.loads(marker.read_text())
    del info["keyvault"]
    marker.write_text(json.dumps(info))
    shutil.rmtree(fresh.data / "keyvault")
    status, out, err = run(capsys, fresh, "init", "--if-needed")
    assert status == 0 and "keys kept" in out and PASSPHRASE.search(out), err
    assert certs.load_certificate(fresh.public_key_path("broker")).public_key == broker
    assert (fresh.data / "keyvault" / "state").exists() and mesh_id(fresh)


def test_the_session_file_is_private(fresh: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.meshctl_cli._output import CliError
    from tools.meshctl_cli._security import load_session, save_session
    fresh.ensure()
    path = save_session(fresh, "first-token")
    inode = os.stat(path).st_ino
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and load_session(fresh) == "first-token"
    save_session(fresh, "second-token")  # a new login: unlink, then a new O_EXCL file
    assert load_session(fresh) == "second-token" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_ino != inode or path.read_text() == "second-token"
    os.chmod(path, 0o644)
    with pytest.raises(CliError, match="0600"):
        load_session(fresh)
    # Options an action does not take are refused, never silently ignored.
    for argv in (("security", "lock", "--password-file", "f"), ("security", "passwd", "--password-file", "f"),
                 ("keys", "list", "sqlcipher"), ("keys", "rotate"), ("security", "frobnicate")):
        status, _, err = run(capsys, fresh, *argv)
        assert status == 2 and one_line(err), argv


# -- a running mesh ------------------------------------------------------------------------


@dataclass
class Live:
    home: MeshHome
    secrets: Path
    password: str  # the current master password
    seen: list[str] = field(default_factory=list)  # every secret the run handled

    def file(self, text: str, name: str = "pw") -> str:
        return secret_file(self.secrets, name, text)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return meshctl(self.home, *args, timeout=120)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    secrets = Path(tempfile.mkdtemp(prefix="cmpw"))
    try:
        with mesh_home() as home:
            write_fast_config(home)
            init = meshctl(home, "init")
            assert init.returncode == 0, init.stderr
            (passphrase,) = PASSPHRASE.findall(init.stdout)
            up = meshctl(home, "up", "--timeout", "90")
            assert up.returncode == 0, f"meshctl up failed:\n{up.stdout}\n{up.stderr}"
            yield Live(home, secrets, passphrase, [passphrase])
    finally:
        shutil.rmtree(secrets, ignore_errors=True)


async def _fetch(home: MeshHome, purpose: str, version: int | None = None) -> dict[str, Any]:
    async with await MeshClient.connect(home, "storage", timeout=10) as client:
        body: dict[str, Any] = {"purpose": purpose} if version is None else {"purpose": purpose, "version": version}
        reply: dict[str, Any] = await client.call("keyvault.keys.get", body, timeout=10)
        return reply


def fetch(home: MeshHome, purpose: str, version: int | None = None) -> dict[str, Any]:
    """``keyvault.keys.get`` as the storage service asks it."""
    return asyncio.run(_fetch(home, purpose, version))


def status(live: Live) -> dict[str, Any]:
    done = live.ctl("status", "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_status_shows_the_keyvault(live: Live) -> None:
    report = status(live)
    vault = report["keyvault"]
    assert {k: vault[k] for k in ("reachable", "initialised", "sealed", "test_profiles")} == {
        "reachable": True, "initialised": True, "sealed": False, "test_profiles": True}
    assert vault["keystore"].startswith("keyring") and vault["keystore_warning"] is None
    assert any("TEST ARGON2 PROFILES IN USE" in w for w in report["warnings"])
    assert {"healthy", "broker", "services"} <= set(report)
    done = live.ctl("status")
    assert "keyvault: unsealed, master key in keyring" in done.stdout
    # Warnings go to stderr, each once; stdout stays the report.
    assert done.stderr.count("meshctl: warning: TEST ARGON2 PROFILES IN USE") == 1
    assert "TEST ARGON2" not in done.stdout


def test_status_says_what_protects_the_master_key(live: Live) -> None:
    line = ("platform keyring (SecretService): a copy of the home or of the disk reads nothing without your "
            "login keyring")
    assert status(live)["keyvault"]["protection"] == line
    assert f"  master key: {line}" in live.ctl("status").stdout.splitlines()


def test_lock_seals_the_mesh_and_unlock_restores_it(live: Live) -> None:
    before = fetch(live.home, "sqlcipher")
    assert len(before["key"]) == 32
    locked = live.ctl("security", "lock", "--yes")
    assert locked.returncode == 0 and "SEALED" in locked.stdout, locked.stderr
    with pytest.raises(Sealed):
        fetch(live.home, "sqlcipher")
    # Sealed is its own verdict (exit 3): neither healthy nor broken.
    done = live.ctl("status", "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 3 and report["state"] == "sealed" and report["healthy"] is False
    assert report["keyvault"]["sealed"] is True and report["problems"] == []
    assert "SEALED: run meshctl security unlock" in report["warnings"]
    assert "keyvault: SEALED" in live.ctl("status").stdout
    # No terminal and no file: a usage error, not a prompt.
    refused = live.ctl("security", "unlock")
    assert refused.returncode == 2 and "--password-file" in one_line(refused.stderr)
    unlocked = live.ctl("security", "unlock", "--password-file", live.file(live.password))
    assert unlocked.returncode == 0 and "unsealed" in unlocked.stdout, unlocked.stderr
    # Storage and audit fetch their keys again on security.unsealed: healthy once they have them.
    # (Until audit records again, keyvault releases no key at all: fail closed.)
    wait_until(lambda: live.ctl("status", "--json").returncode == 0, 20, "healthy after the unlock")
    assert status(live)["keyvault"]["sealed"] is False
    assert fetch(live.home, "sqlcipher")["key"] == before["key"]


def test_a_wrong_password_is_refused_in_one_line(live: Live) -> None:
    wrong = "not-the-master-password-0"
    live.seen.append(wrong)
    done = live.ctl("security", "unlock", "--password-file", live.file(wrong, "wrong"))
    assert done.returncode == 1 and "wrong password" in one_line(done.stderr)
    assert wrong not in done.stdout + done.stderr
    assert fetch(live.home, "sqlcipher")["version"] >= 1  # a failed unlock seals nothing


def test_login_session_keys_list_and_clear(live: Live) -> None:
    refused = live.ctl("keys", "list")
    assert refused.returncode == 1 and "meshctl security login" in one_line(refused.stderr)
    login = live.ctl("security", "login", "--password-file", live.file(live.password))
    assert login.returncode == 0, login.stderr
    session = live.home.run / "meshctl.session"
    assert stat.S_IMODE(os.stat(session).st_mode) == 0o600
    token = session.read_text().strip()
    live.seen.append(token)
    assert token not in login.stdout + login.stderr
    shown = json.loads(live.ctl("security", "session", "--json").stdout)
    assert shown["active"] is True and 0 < shown["remaining_s"] <= 1800
    listed = live.ctl("keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["purpose"] for r in rows} >= {"sqlcipher", "token-signing", "audit-hmac"}
    assert "PURPOSE" in live.ctl("keys", "list").stdout
    cleared = live.ctl("security", "clear")
    assert cleared.returncode == 0 and "session ended" in cleared.stdout
    assert not session.exists()
    assert json.loads(live.ctl("security", "session", "--json").stdout)["active"] is False
    after = live.ctl("keys", "list")
    assert after.returncode == 1 and "meshctl security login" in one_line(after.stderr)


def test_rotate_bumps_the_version(live: Live) -> None:
    old = fetch(live.home, "rocksdb")
    rotated = live.ctl("keys", "rotate", "rocksdb", "--yes", "--json", "--password-file", live.file(live.password))
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) == {"purpose": "rocksdb", "version": old["version"] + 1}
    new = fetch(live.home, "rocksdb")
    assert new["version"] == old["version"] + 1 and new["key"] != old["key"]
    assert fetch(live.home, "rocksdb", old["version"])["key"] == old["key"]  # older versions stay readable
    assert live.ctl("security", "login", "--password-file", live.file(live.password)).returncode == 0
    rows = [r for r in json.loads(live.ctl("keys", "list", "--json").stdout) if r["purpose"] == "rocksdb"]
    assert [(r["version"], r["current"]) for r in rows] == [(old["version"], False), (new["version"], True)]
    assert "storage" in rows[0]["fetched_by"]
    bad = live.ctl("keys", "rotate", "nonsense", "--yes", "--password-file", live.file(live.password))
    assert bad.returncode == 2 and one_line(bad.stderr)


def test_passwd_then_only_the_new_password_unlocks(live: Live) -> None:
    old_file = live.file(live.password, "old")
    weak = live.ctl("security", "passwd", "--old-password-file", old_file,
                    "--new-password-file", live.file("password1234", "weak"))
    assert weak.returncode == 1 and "too weak" in one_line(weak.stderr)
    live.seen.append(STRONGER)
    changed = live.ctl("security", "passwd", "--old-password-file", old_file,
                       "--new-password-file", live.file(STRONGER, "new"))
    assert changed.returncode == 0 and "changed" in changed.stdout, changed.stderr
    old_password, live.password = live.password, STRONGER
    key = fetch(live.home, "sqlcipher")["key"]  # still unsealed, same data keys
    assert live.ctl("security", "lock", "--yes").returncode == 0
    stale = live.ctl("security", "unlock", "--password-file", live.file(old_password, "old"))
    assert stale.returncode == 1 and "wrong password" in one_line(stale.stderr)
    # Wrong passwords are throttled (50 ms, then 100 ms in this configuration): retry past it.
    for _ in range(20):
        done = live.ctl("security", "unlock", "--password-file", live.file(STRONGER))
        if "RATE_LIMITED" not in done.stderr:
            break
    assert done.returncode == 0, done.stderr
    # keyvault releases keys again once audit records again (it fetches its own keys on the unlock).
    wait_until(lambda: live.ctl("status", "--json").returncode == 0, 20, "healthy after the unlock")
    assert fetch(live.home, "sqlcipher")["key"] == key


def test_unlock_and_passwd_on_a_terminal(live: Live, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.meshctl_cli import _intake
    monkeypatch.setattr(_intake, "on_terminal", lambda: True)
    answers: list[str] = []
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return answers.pop(0)

    monkeypatch.setattr(_intake.getpass, "getpass", getpass)
    assert live.ctl("security", "lock", "--yes").returncode == 0
    answers[:] = [live.password]
    status, out, err = run(capsys, live.home, "security", "unlock")
    assert status == 0 and "unsealed" in out and prompts == ["master password: "], err
    newest = "quiet meadow 58 copper kettle"
    live.seen.append(newest)
    answers[:] = [live.password, newest, newest]
    status, out, err = run(capsys, live.home, "security", "passwd")
    assert status == 0 and "changed" in out and answers == [], err
    assert prompts[1:] == ["current master password: ", "new master password: ", "new master password (again): "]
    live.password = newest
    assert newest not in out + err


def test_no_secret_reaches_a_log_or_spool(live: Live) -> None:
    assert len(live.seen) >= 3
    for directory in (live.home.log, live.home.spool, live.home.run):
        for path in directory.rglob("*"):
            if path.is_file() and path.name != "meshctl.session":
                data = path.read_bytes()
                for secret in live.seen:
                    assert secret.encode() not in data, f"a secret in {path}"

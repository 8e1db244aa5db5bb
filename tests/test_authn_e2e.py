"""authn in a real mesh under supervisord, driven as an operator would: ``meshctl users`` and
``meshctl sessions``, a sign-in through the mesh, a revocation seen on the next request, refusals
that need ``--yes``, TOTP enrolment, and a kill -9 of authn while accounts are created and a person
signs in over and over: no account acknowledged is lost, and none is left half made."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from shared import MeshHome

from .test_operations_e2e import meshctl, row, running_mesh, status, wait_until

PASSWORD = "planted-e2e-user-phrase-41c7"


@pytest.fixture(scope="module")
def live() -> Iterator[MeshHome]:
    with running_mesh() as home:
        yield home


def password_file(home: MeshHome, text: str = PASSWORD) -> str:
    path = home.root / "user-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
    return str(path)


def call(home: MeshHome, target: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    done = meshctl(home, "call", target, "--body", json.dumps(body), "--json", timeout=60)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def test_users_and_sessions_through_meshctl(live: MeshHome) -> None:
    added = meshctl(live, "users", "add", "alice", "--password-file", password_file(live))
    assert added.returncode == 0 and "user alice added" in added.stdout, added.stderr
    again = meshctl(live, "users", "add", "ALICE", "--password-file", password_file(live), "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "conflict"
    listing = json.loads(meshctl(live, "users", "list", "--json").stdout)
    assert [(u["username"], u["disabled"]) for u in listing] == [("alice", False)]
    # meshctl's own key signs alice in (operators may; the token is bound to meshctl's key).
    code, tokens, err = call(live, "authn.login.password", {"username": "alice", "password": PASSWORD})
    assert code == 0, err
    code, claims, err = call(live, "authn.verify", {"access_token": tokens["access_token"], "audience": "curvemesh"})
    assert code == 0 and claims["username"] == "alice", err
    sessions = json.loads(meshctl(live, "sessions", "list", "--user", "alice", "--json").stdout)
    assert [s["session"] for s in sessions] == [tokens["session"]]
    shown = meshctl(live, "users", "show", "alice")
    assert shown.returncode == 0 and tokens["session"] in shown.stdout and PASSWORD not in shown.stdout
    # Destructive commands ask; without a terminal they need --yes and change nothing without it.
    refused = meshctl(live, "sessions", "revoke", "--user", "alice")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert call(live, "authn.verify", {"access_token": tokens["access_token"], "audience": "curvemesh"})[0] == 0
    revoked = meshctl(live, "sessions", "revoke", "--user", "alice", "--yes")
    assert revoked.returncode == 0 and "1 session(s) ended" in revoked.stdout, revoked.stderr
    code, _, err = call(live, "authn.verify", {"access_token": tokens["access_token"], "audience": "curvemesh"})
    assert code == 1 and "token refused" in err
    # A refused password names the rule, never the password.
    weak = Path(password_file(live)).with_name("weak")
    fd = os.open(weak, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("bob-bob-bob-1\n")
    bad = meshctl(live, "users", "add", "bob", "--password-file", str(weak))
    assert bad.returncode == 1 and "username" in bad.stderr and "bob-bob-bob-1" not in bad.stderr
    assert meshctl(live, "users", "disable", "alice").returncode == 0
    assert call(live, "authn.login.password", {"username": "alice", "password": PASSWORD})[0] == 1
    assert meshctl(live, "users", "enable", "alice").returncode == 0
    assert call(live, "authn.login.password", {"username": "alice", "password": PASSWORD})[0] == 0


def test_totp_enrolment_through_meshctl(live: MeshHome) -> None:
    assert meshctl(live, "users", "add", "tess", "--password-file", password_file(live)).returncode == 0
    begun = meshctl(live, "users", "totp", "tess", "--json")
    assert begun.returncode == 0 and "totp-confirm tess --code" in begun.stderr
    secret = json.loads(begun.stdout)["secret"]
    shown = meshctl(live, "users", "totp-confirm", "tess", "--code", pyotp.TOTP(secret).now())
    assert shown.returncode == 0 and "Recovery codes" in shown.stdout, shown.stderr
    codes = [line.strip() for line in shown.stdout.splitlines() if line.startswith("  ")]
    assert len(codes) == 10
    code, _, err = call(live, "authn.login.password", {"username": "tess", "password": PASSWORD})
    assert code == 1 and "one-time code is required" in err
    code, tokens, err = call(live, "authn.login.password", {"username": "tess", "password": PASSWORD,
                                                            "otp": codes[3]})
    assert code == 0 and tokens["username"] == "tess", err
    qr = meshctl(live, "users", "totp", "tess")
    assert qr.returncode == 1 and "already enrolled" in qr.stderr  # turn it off first
    off = meshctl(live, "users", "totp-off", "tess", "--yes")
    assert off.returncode == 0 and "TOTP is off for tess" in off.stdout
    none = meshctl(live, "users", "passkeys", "tess")
    assert none.returncode == 0 and "tess has no passkeys" in none.stdout
    assert json.loads(meshctl(live, "users", "passkeys", "tess", "--json").stdout) == []
    missing = meshctl(live, "users", "passkeys", "tess", "--remove", "AAAA", "--yes")
    assert missing.returncode == 1 and "no such passkey" in missing.stderr


def test_kill_9_during_sign_ups_and_logins_loses_no_account(live: MeshHome) -> None:
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sign_ups(prefix: str) -> None:
        n = 0
        while not stop.is_set():
            name = f"{prefix}{n}"
            n += 1
            done = meshctl(live, "users", "add", name, "--password-file", password_file(live), timeout=60)
            if done.returncode == 0:
                with lock:
                    acknowledged.append(name)

    logins = {"ok": 0, "failed": 0}

    def sign_ins() -> None:
        # alice signs in over and over while authn dies: each attempt succeeds or fails cleanly.
        while not stop.is_set():
            code, _, _ = call(live, "authn.login.password", {"username": "alice", "password": PASSWORD})
            logins["ok" if code == 0 else "failed"] += 1

    workers = [threading.Thread(target=sign_ups, args=(p,)) for p in ("kate", "liam")]
    workers.append(threading.Thread(target=sign_ins))
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(acknowledged) >= 3, 120, "three accounts created")
        pid = row(status(live), "authn")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: row(status(live), "authn")["pid"] not in (None, pid) and row(status(live), "authn")[
            "healthy"], 120, "authn restarted by supervisord and ready")
        wait_until(lambda: len(acknowledged) >= 8, 120, "more accounts after the restart")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    assert logins["ok"] >= 2, logins  # sign-ins went on before and after the kill
    listing = {u["username"] for u in json.loads(meshctl(live, "users", "list", "--json").stdout)}
    assert set(acknowledged) <= listing  # nothing acknowledged was lost
    for name in sorted(listing - {"alice", "tess"}):
        # Every account there is whole: its password hash verifies (no half-created account).
        code, tokens, err = call(live, "authn.login.password", {"username": name, "password": PASSWORD})
        assert code == 0 and tokens["username"] == name, (name, err)

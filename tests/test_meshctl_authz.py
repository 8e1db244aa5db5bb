"""``meshctl roles``, ``meshctl policy`` and ``meshctl consent`` through the real CLI, against a real
mesh under supervisord: roles assigned, listed and revoked (revoking asks first), the policies in
force shown, a directory validated (a broken one named by file and line), decisions tested (the
exit status is the verdict), a reload refused and then taken, and a consent grant made by signing
the person in (password from a file, a one-time code when TOTP is on), seen, used and revoked.

The mesh runs with ``[authz] policy_dir`` set to a copy of the shipped policies inside its home, so
a reload can be refused (a broken file) and then taken again without touching the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from services.authn.logins import OTP_REQUIRED
from shared import MeshHome
from tools.meshctl_cli._consent import OTP_MARKER

from .test_meshctl_safety import Terminal
from .test_operations_e2e import REPO, meshctl, running_mesh, write_fast_config

PASSWORD = "planted-authz-e2e-phrase-7d2e"
SHIPPED = REPO / "services" / "authz" / "policy"
BROKEN = '\n// a comment\n@id("broken")\npermit (principal, action resource);\n'


def prepare(home: MeshHome) -> None:
    """The fast test configuration, with authz reading its policies from ``<home>/policy``."""
    write_fast_config(home)
    config = home.root / "mesh.toml"
    text = config.read_text("utf-8")
    assert 'policy_dir = ""' in text
    config.write_text(text.replace('policy_dir = ""', 'policy_dir = "policy"'), "utf-8")
    shutil.copytree(SHIPPED, home.root / "policy")
    (home.root / "policy").chmod(0o700)
    for path in (home.root / "policy").iterdir():
        path.chmod(0o600)


@pytest.fixture(scope="module")
def live() -> Iterator[MeshHome]:
    with running_mesh(prepare) as home:
        yield home


def ok(home: MeshHome, *args: str) -> str:
    done = meshctl(home, *args, timeout=60)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def as_json(home: MeshHome, *args: str) -> Any:
    return json.loads(ok(home, *args, "--json"))


def fails(home: MeshHome, status: int, *args: str) -> subprocess.CompletedProcess[str]:
    done = meshctl(home, *args, timeout=60)
    assert done.returncode == status, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meshctl: ") and "Traceback" not in done.stderr, done.stderr
    return done


def user(home: MeshHome, name: str) -> str:
    """A new account ``name`` (password from a 0600 file); its user id."""
    path = password_file(home)
    ok(home, "users", "add", name, "--password-file", path)
    return str(as_json(home, "users", "show", name)["id"])


def password_file(home: MeshHome, text: str = PASSWORD, name: str = "person-password") -> str:
    path = home.root / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
    return str(path)


def test_roles_are_assigned_listed_and_revoked(live: MeshHome) -> None:
    # The repository's mesh.toml declares one role: plugin-host acts for people (issue 17).
    declared = [{"principal": "service:plugin-host", "roles": [{"role": "user-data", "source": "declared"}]}]
    assert as_json(live, "roles", "list") == declared
    assert ok(live, "roles", "list").splitlines()[1].split() == ["service:plugin-host", "user-data", "declared", "-",
                                                                 "-"]
    assert as_json(live, "roles", "list", "service:helper") == []
    assigned = ok(live, "roles", "assign", "service:helper", "user-data")
    assert assigned.startswith("assigned: service:helper holds user-data")
    twice = fails(live, 1, "roles", "assign", "service:helper", "user-data", "--json")
    assert json.loads(twice.stdout)["error"]["code"] == "conflict" and "already" in twice.stderr
    listing = ok(live, "roles", "list").splitlines()
    assert listing[0].split() == ["PRINCIPAL", "ROLE", "SOURCE", "BY", "SINCE"]
    assert listing[1].split()[:4] == ["service:helper", "user-data", "assigned", "meshctl"]
    rows = as_json(live, "roles", "list", "service:helper")
    assert [(r["principal"], [x["role"] for x in r["roles"]]) for r in rows] == [("service:helper", ["user-data"])]
    # Revoking asks first: with no terminal and no --yes it refuses and nothing changes.
    refused = fails(live, 2, "roles", "revoke", "service:helper", "user-data")
    assert "--yes" in refused.stderr
    assert len(as_json(live, "roles", "list")) == 2
    revoked = ok(live, "roles", "revoke", "service:helper", "user-data", "--yes")
    assert revoked.startswith("revoked: service:helper no longer holds user-data") and "roles: none" in revoked
    assert as_json(live, "roles", "list") == declared
    # Revoking what is not held is authz's NOT_FOUND, asked about nothing.
    assert "was not assigned" in fails(live, 1, "roles", "revoke", "service:helper", "user-data", "-y").stderr


@pytest.mark.parametrize("argv", [("roles", "assign", "helper", "user-data"), ("roles", "list", "robot:x"),
                                  ("policy", "test", "notes", "read", "memories", "--owner", "x"),
                                  ("consent", "grant", "weather", "--user", "u", "--category", "notes",
                                   "--action", "read", "--purpose", "p")])
def test_a_principal_not_written_kind_colon_name_is_a_usage_error(live: MeshHome, argv: tuple[str, ...]) -> None:
    done = fails(live, 2, *argv)
    assert "kind:name, e.g. service:notes" in done.stderr
    assert json.loads(fails(live, 2, *argv, "--json").stdout)["error"]["code"] == "usage"


def test_policy_show_and_validate(live: MeshHome) -> None:
    text = ok(live, "policy", "show")
    assert f"directory: {(live.root / 'policy').resolve()}" in text and "health (sensitive)" in text
    assert "owner-data" in text and "access.cedar:7" in text and "consent-required" in text
    shown = as_json(live, "policy", "show")
    ids = {p["id"] for p in shown["policies"]}
    assert {"owner-data", "consented", "consent-required"} <= ids and shown["categories"]["notes"] == "personal"
    valid = ok(live, "policy", "validate")
    assert valid.startswith(f"valid: {len(shown['policies'])} policies")
    # A relative DIR is this shell's (meshctl runs in the checkout here), not authz's.
    assert as_json(live, "policy", "validate", "services/authz/policy")["directory"] == str(SHIPPED)
    broken = live.root.parent / f"{live.root.name}-broken-policy"
    shutil.copytree(SHIPPED, broken)
    try:
        (broken / "extra.cedar").write_text(BROKEN, "utf-8")
        done = fails(live, 1, "policy", "validate", str(broken))
        assert f"invalid: {broken / 'extra.cedar'}:3:" in done.stderr
        result = json.loads(meshctl(live, "policy", "validate", str(broken), "--json").stdout)
        assert result["valid"] is False and "extra.cedar:3:" in result["error"]
    finally:
        shutil.rmtree(broken)


def test_policy_test_exits_with_the_verdict(live: MeshHome) -> None:
    owner = user(live, "olive")
    asked = ("policy", "test", "service:stranger", "read", "memories", "--owner", owner)
    # Not acting for the owner: the built-in consent rule forbids it.
    done = meshctl(live, *asked)
    assert done.returncode == 1 and done.stdout.startswith("deny: "), done.stderr
    assert "decided by consent-required (forbid, invariants.cedar:4)" in done.stdout
    # Acting for the owner (a username resolves to the id), but holding no role: nothing allows it.
    done = meshctl(live, *asked, "--user", "olive")
    assert done.returncode == 1 and done.stdout.strip() == "deny: no policy allows this (deny by default)"
    denied = json.loads(meshctl(live, *asked, "--user", "olive", "--json").stdout)
    assert denied["allow"] is False and denied["reason"] == "no policy allows this (deny by default)"
    ok(live, "roles", "assign", "service:stranger", "user-data")
    try:
        allowed = ok(live, *asked, "--user", owner)
        assert allowed.startswith("allow: ") and "decided by owner-data (permit, access.cedar:7)" in allowed
        assert as_json(live, "policy", "test", "service:stranger", "read", "memories", "--owner", "olive",
                       "--user", "olive")["decision"] == "allow"
    finally:
        ok(live, "roles", "revoke", "service:stranger", "user-data", "--yes")
    assert meshctl(live, *asked, "--user", owner).returncode == 1
    assert "NOT_FOUND" in fails(live, 1, "policy", "test", "service:x", "read", "notes", "--owner", "nobody").stderr
    assert "needs --owner" in fails(live, 2, "policy", "test", "service:x", "read", "notes").stderr
    assert "--purpose does not apply to policy show" in fails(live, 2, "policy", "show", "--purpose", "x").stderr


def test_policy_reload_is_refused_with_file_and_line_then_taken(live: MeshHome) -> None:
    before = as_json(live, "policy", "show")["digest"]
    text = ok(live, "policy", "reload")
    assert text.strip().startswith(f"reloaded: digest {before} (was {before}), ")
    extra = live.root / "policy" / "extra.cedar"
    fd = os.open(extra, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(BROKEN)
    try:
        done = fails(live, 1, "policy", "reload")
        assert "the running policies stay in force" in done.stderr and f"{extra}:3:" in done.stderr
        assert as_json(live, "policy", "show")["digest"] == before
        assert f"{extra}:3:" in fails(live, 1, "policy", "validate").stderr
    finally:
        extra.unlink()
    reloaded = as_json(live, "policy", "reload")
    assert reloaded == {"reloaded": True, "digest": before, "previous": before, "policies": reloaded["policies"]}


def test_consent_granted_listed_used_and_revoked(live: MeshHome) -> None:
    gina = user(live, "gina")
    assert ok(live, "consent", "list").strip() == "no consent grants"
    assert as_json(live, "consent", "list") == [] and as_json(live, "consent", "list", "--all") == []
    terms = ("consent", "grant", "plugin:weather", "--user", "gina", "--category", "memories", "--category", "notes",
             "--action", "read", "--purpose", "reminders", "--days", "7", "--password-file", password_file(live))
    done = meshctl(live, *terms, timeout=60)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr and "access_token" not in done.stdout
    assert done.stdout.startswith("granted ") and ("plugin:weather can read memories and notes of gina for reminders "
                                                   "until ") in done.stdout
    grant_id = done.stdout.split()[1].rstrip(":")
    # meshctl's sign-in for the grant ended with it.
    assert as_json(live, "sessions", "list", "--user", "gina") == []
    consented = ("policy", "test", "plugin:weather", "read", "memories", "--owner", gina, "--purpose", "reminders")
    assert "decided by consented" in ok(live, *consented)
    listing = ok(live, "consent", "list", "--user", "gina")
    assert listing.startswith(f"{grant_id}  active: plugin:weather can read memories and notes of gina for ")
    grants = as_json(live, "consent", "list")
    assert [(g["id"], g["owner"], g["state"], g["categories"]) for g in grants] == [
        (grant_id, gina, "active", ["memories", "notes"])]
    assert 7 * 86400 - 120 < grants[0]["expires_at"] - grants[0]["granted_at"] <= 7 * 86400
    shown = ok(live, "consent", "show", grant_id)
    assert shown.startswith(f"grant {grant_id} (active)\n") and "granted " in shown
    assert as_json(live, "consent", "show", grant_id)["grantee"] == "plugin:weather"
    assert "--yes" in fails(live, 2, "consent", "revoke", grant_id).stderr
    assert as_json(live, "consent", "show", grant_id)["state"] == "active"
    revoked = ok(live, "consent", "revoke", grant_id, "--yes")
    assert revoked.strip() == "revoked: plugin:weather can no longer read memories and notes of gina from the next " \
                              "request"
    assert meshctl(live, *consented).returncode == 1
    assert ok(live, "consent", "list").strip() == "no consent grants" and as_json(live, "consent", "list") == []
    assert f"{grant_id}  revoked: plugin:weather could read" in ok(live, "consent", "list", "--all")
    assert [g["state"] for g in as_json(live, "consent", "list", "--all", "--user", "gina")] == ["revoked"]
    assert "already revoked" in ok(live, "consent", "revoke", grant_id, "-y")
    assert json.loads(fails(live, 1, "consent", "show", "0" * 32, "--json").stdout)["error"]["code"] == "not_found"
    # Another person as the grantee is named by username beside the principal.
    ivan = user(live, "ivan")
    ok(live, "consent", "grant", f"user:{ivan}", "--user", "gina", "--category", "notes", "--action", "read",
       "--purpose", "sharing", "--duration-s", "600", "--password-file", password_file(live))
    assert f"active: ivan (user:{ivan}) can read notes of gina for sharing" in ok(live, "consent", "list")


def test_consent_grant_refusals(live: MeshHome) -> None:
    user(live, "hank")
    terms = ("consent", "grant", "plugin:weather", "--user", "hank", "--category", "notes", "--action", "read",
             "--purpose", "reminders")
    wrong = password_file(live, "not-the-password-of-hank", "wrong-password")
    assert "login failed" in fails(live, 1, *terms, "--password-file", wrong).stderr
    assert "no terminal to ask for the password of hank" in fails(live, 2, *terms).stderr
    assert "needs --purpose P" in fails(live, 2, *terms[:-2], "--password-file", password_file(live)).stderr
    assert "give one of them" in fails(live, 2, *terms, "--days", "1", "--duration-s", "600").stderr
    hank = as_json(live, "users", "show", "hank")["id"]
    own = fails(live, 1, "consent", "grant", f"user:{hank}", *terms[3:], "--password-file", password_file(live))
    assert "an owner needs no consent of their own" in own.stderr
    unknown = fails(live, 1, *terms[:5], "--category", "secrets", *terms[7:], "--password-file", password_file(live))
    assert "BAD_REQUEST: categories: unknown 'secrets'" in unknown.stderr
    assert "--code does not apply to consent list" in fails(live, 2, "consent", "list", "--code", "1").stderr
    assert as_json(live, "sessions", "list", "--user", "hank") == []  # every sign-in for a grant ended


def test_consent_grant_asks_for_the_code_when_totp_is_on(live: MeshHome) -> None:
    import pyotp

    user(live, "tara")
    secret = as_json(live, "users", "totp", "tara")["secret"]
    confirmed = as_json(live, "users", "totp-confirm", "tara", "--code", pyotp.TOTP(secret).now())
    terms = ("consent", "grant", "device:phone", "--user", "tara", "--category", "settings", "--action", "read",
             "--action", "write", "--purpose", "sync", "--duration-s", "3600", "--password-file", password_file(live))
    assert "tara has TOTP on: give the code the app shows with --code CODE" in fails(live, 2, *terms).stderr
    # A recovery code: a TOTP code is spent by totp-confirm within the same 30 seconds.
    granted = as_json(live, *terms, "--code", confirmed["recovery_codes"][0])
    assert granted["grantee"] == "device:phone" and granted["actions"] == ["read", "write"]
    assert granted["expires_at"] - granted["granted_at"] == 3600


def test_meshctl_knows_how_authn_asks_for_a_code() -> None:
    assert OTP_MARKER in OTP_REQUIRED


def test_roles_revoke_on_a_terminal_asks(live: MeshHome) -> None:
    ok(live, "roles", "assign", "service:asked", "user-data")
    no = Terminal(live, "roles", "revoke", "service:asked", "user-data")
    no.expect("revoke the role user-data of service:asked")
    no.send(b"n\n")
    status, seen = no.finish()
    assert status == 1 and "aborted: nothing changed" in seen
    assert len(as_json(live, "roles", "list", "service:asked")) == 1
    yes = Terminal(live, "roles", "revoke", "service:asked", "user-data")
    yes.expect("[y/N]")
    yes.send(b"y\n")
    status, seen = yes.finish()
    assert status == 0 and "revoked: service:asked no longer holds user-data" in seen
    assert as_json(live, "roles", "list", "service:asked") == []



def test_consent_grant_on_a_terminal_asks_for_the_password_then_the_code(live: MeshHome) -> None:
    import pyotp

    user(live, "tomo")
    secret = as_json(live, "users", "totp", "tomo")["secret"]
    recovery = as_json(live, "users", "totp-confirm", "tomo", "--code", pyotp.TOTP(secret).now())["recovery_codes"]
    term = Terminal(live, "consent", "grant", "plugin:weather", "--user", "tomo", "--category", "notes",
                    "--action", "read", "--purpose", "reminders")
    term.expect("password of tomo: ")
    term.send(PASSWORD.encode() + b"\n")
    term.expect("one-time code of tomo (or a recovery code): ")
    term.send(recovery[0].encode() + b"\n")
    status, seen = term.finish()
    assert status == 0 and "granted g_" in seen and "plugin:weather can read notes of tomo for reminders" in seen
    assert as_json(live, "sessions", "list", "--user", "tomo") == []

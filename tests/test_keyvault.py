"""keyvault: key hierarchy, real Secret Service, seal/unlock, sessions, password change, rotation."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from services.audit.service import Audit
from services.keyvault import store
from services.keyvault.keystore import KeyringKeystore
from services.keyvault.service import Keyvault
from services.keyvault.setup import initialise
from shared import (
    PURPOSES,
    BadRequest,
    ConfigError,
    Forbidden,
    MeshHome,
    RateLimited,
    Sealed,
    StateError,
    Unauthenticated,
    Unavailable,
    configure_logging,
    parse_config,
)
from shared.testing import call_handler

from .conftest import FAST_CONFIG, TEST_ARGON2
from .mesh import InProcessMesh

PASSWORD = "planted-Master-Passphrase-9431"
NEW_PASSWORD = "another-Planted-Passphrase-2817"
KV_CONFIG = FAST_CONFIG + TEST_ARGON2 + """
[acl.role.service]
call = ["keyvault.keys.get", "keyvault.status", "audit.append"]

[acl.identity.keyvault]
publish = ["security."]

[acl.identity.meshctl]
call = ["keyvault.*"]

[keyvault]
session_idle_s = 1800

"""
IDENTITIES = {"keyvault": "service", "storage": "service", "audit": "service", "meshctl": "operator",
              "other-operator": "operator"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_home(root: Path) -> tuple[MeshHome, object]:
    mesh = InProcessMesh(root, KV_CONFIG, dict(IDENTITIES))
    name, warning = initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    assert "SecretService" in name and warning is None  # the real Secret Service, not the file
    return mesh.home, mesh


async def get_key(vault: Keyvault, caller: str = "storage", purpose: str = "sqlcipher", **extra: object) -> dict:
    return await call_handler(vault, "keys.get", {"purpose": purpose, **extra}, caller=caller, role="service")


class RecordingAudit:
    """Stands in for keyvault's mesh client when handlers are called directly: an audit service
    that records every ``audit.append`` (a key release needs one), or refuses when ``down``."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.down = False

    async def call(self, target: str, body: Any = None, *, timeout: float | None = None) -> Any:
        assert target == "audit.append"
        if self.down:
            raise Unavailable("service 'audit' is not registered")
        first = len(self.records)
        self.records += body["records"]
        return {"first_seq": first, "last_seq": len(self.records) - 1}

    async def publish(self, topic: str, body: Any = None, *, timeout: float | None = None) -> None:
        """security.sealed / unsealed: nobody listens here."""


async def started(home: MeshHome, config: object, **kwargs: object) -> Keyvault:
    vault = Keyvault(home, config, **kwargs)  # type: ignore[arg-type]
    await vault.on_start()
    vault.mesh = RecordingAudit()  # after on_start: no spool shipper, the spool stays inspectable
    return vault


async def test_master_key_lives_in_the_real_secret_service_and_unlocks_after_restart(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    state = store.load(home)
    assert state is not None
    keystore = KeyringKeystore(f"master:{state.mesh_id}", __import__("keyring").get_keyring())
    master = keystore.get()
    assert master is not None and len(master) == 32
    assert not (home.keys / "master.keystore").exists()  # never the file fallback here
    first = await started(home, mesh.config)
    key = await get_key(first)
    await first.on_stop()
    second = await started(home, mesh.config)  # a restart: no password asked
    assert (await call_handler(second, "status"))["sealed"] is False
    assert await get_key(second) == key and len(key["key"]) == 32 and key["version"] == 1
    await second.on_stop()


async def test_keys_go_only_to_entitled_identities_and_refusals_are_audited(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    audit = vault.mesh
    assert isinstance(audit, RecordingAudit)
    assert (await get_key(vault, "audit", "audit-hmac"))["purpose"] == "audit-hmac"
    assert (await get_key(vault, "storage", "sqlcipher"))["purpose"] == "sqlcipher"
    for caller, purpose in (("storage", "token-signing"), ("meshctl", "sqlcipher"), ("audit", "sqlcipher")):
        with pytest.raises(Forbidden):
            await get_key(vault, caller, purpose)
    audit.down = True  # fail closed: no audit record, no key
    with pytest.raises(Unavailable, match="audit is not recording"):
        await get_key(vault, "storage", "sqlcipher")
    await vault.on_stop()
    # A data key release is recorded by audit itself before the key leaves ...
    assert [(r["type"], r["target"], r["details"]["subject"]) for r in audit.records] == [
        ("keyvault.key_release", "sqlcipher", "storage")]
    # ... audit's own keys and every refusal go to the spool (shipped to audit later).
    spool = (home.spool / "keyvault-audit.spool").read_bytes()
    assert spool.count(b"keyvault.key_refused") == 4 and spool.count(b"keyvault.key_release") == 1
    assert spool.count(b"audit not recording") == 1


async def test_lock_seals_and_unlock_restores(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    before = await get_key(vault)
    with pytest.raises(Forbidden):  # only operators seal the mesh
        await call_handler(vault, "lock", caller="storage", role="service")
    assert (await call_handler(vault, "lock"))["sealed"] is True
    with pytest.raises(Sealed):
        await get_key(vault)
    await vault.on_stop()
    restarted = await started(home, mesh.config)  # sealed survives a restart: the keystore was cleared
    with pytest.raises(Sealed):
        await get_key(restarted)
    await call_handler(restarted, "unlock", {"password": PASSWORD})
    assert await get_key(restarted) == before
    await restarted.on_stop()


async def test_wrong_passwords_are_refused_with_growing_delays(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    clock = Clock()
    vault = await started(home, mesh.config, clock=clock)
    await call_handler(vault, "lock")
    with pytest.raises(Unauthenticated, match="wrong password") as info:
        await call_handler(vault, "unlock", {"password": "not-the-password"})
    assert "not-the-password" not in str(info.value)
    with pytest.raises(RateLimited, match="try again in 1 s"):
        await call_handler(vault, "unlock", {"password": PASSWORD})
    clock.now += 1.1
    with pytest.raises(Unauthenticated):
        await call_handler(vault, "unlock", {"password": "still-wrong"})
    with pytest.raises(RateLimited, match="try again in 2 s"):
        await call_handler(vault, "unlock", {"password": PASSWORD})
    clock.now += 2.1
    await call_handler(vault, "unlock", {"password": PASSWORD})
    assert (await call_handler(vault, "status"))["sealed"] is False
    await vault.on_stop()
    assert (home.spool / "keyvault-audit.spool").read_bytes().count(b"wrong-password") == 2


async def test_throttled_attempts_are_audited_once_per_wait_and_counted(short_tmp: Path) -> None:
    """A refusal while backing off is a deny too (invariant 3): the first of each wait is recorded as it
    happens, the rest are counted into the next record, so a flood cannot fill the audit spool."""
    home, mesh = make_home(short_tmp / "h")
    clock = Clock()
    vault = await started(home, mesh.config, clock=clock)
    await call_handler(vault, "lock")
    with pytest.raises(Unauthenticated):
        await call_handler(vault, "unlock", {"password": "not-the-password"})
    for _ in range(5):
        with pytest.raises(RateLimited):
            await call_handler(vault, "unlock", {"password": PASSWORD})
    with pytest.raises(RateLimited):
        await call_handler(vault, "login", {"password": PASSWORD})
    clock.now += 1.1
    await call_handler(vault, "unlock", {"password": PASSWORD})
    assert vault.spool is not None
    records = [(r["type"], r["outcome"], r.get("refused")) for r in vault.spool.pending(len(vault.spool))
               if r["type"] in ("keyvault.unlock", "keyvault.session_start")]
    # 6 refused (5 unlocks, 1 login): the first recorded as it happened, the other 5 counted in one record.
    assert records == [("keyvault.unlock", "wrong-password", None), ("keyvault.unlock", "throttled", None),
                       ("keyvault.unlock", "throttled", 5), ("keyvault.unlock", "ok", None)]
    await vault.on_stop()


async def test_sessions_expire_after_inactivity_and_are_bound_to_the_operator(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    clock = Clock()
    vault = await started(home, mesh.config, clock=clock)
    token = (await call_handler(vault, "login", {"password": PASSWORD}))["token"]
    assert len(await call_handler(vault, "keys.list", {"token": token})) == len(PURPOSES)
    for _ in range(3):  # each use extends the session by its full idle time
        clock.now += 29 * 60
        await call_handler(vault, "keys.list", {"token": token})
    status = await call_handler(vault, "session", {"token": token})
    assert status["active"] and 0 < status["remaining_s"] <= 1800
    with pytest.raises(Unauthenticated):  # another operator certificate cannot use it
        await call_handler(vault, "keys.list", {"token": token}, caller="other-operator")
    clock.now += 31 * 60
    with pytest.raises(Unauthenticated, match="security login"):
        await call_handler(vault, "keys.list", {"token": token})
    token = (await call_handler(vault, "login", {"password": PASSWORD}))["token"]
    assert (await call_handler(vault, "logout", {"token": token}))["cleared"] is True
    with pytest.raises(Unauthenticated):
        await call_handler(vault, "keys.list", {"token": token})
    await vault.on_stop()


async def test_sensitive_operations_ask_for_the_password_afresh(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    clock = Clock()
    vault = await started(home, mesh.config, clock=clock)
    token = (await call_handler(vault, "login", {"password": PASSWORD}))["token"]
    # The session is live and belongs to this operator: it opens what a session is for.
    assert len(await call_handler(vault, "keys.list", {"token": token})) == len(PURPOSES)
    # A live session in place of the password is refused before any handler runs: neither request
    # has a place for a session token, and the refusal names the only fields each one takes.
    with pytest.raises(BadRequest, match=re.escape("Rotate: 1 unknown field(s); allowed: password, purpose")):
        await call_handler(vault, "keys.rotate", {"purpose": "sqlcipher", "token": token})
    with pytest.raises(BadRequest, match=re.escape(
            "PasswordChange: 1 unknown field(s); allowed: new_password, old_password")):
        await call_handler(vault, "passwd", {"token": token, "new_password": NEW_PASSWORD})
    # Nor does the session token work when it is handed over where the password goes, and a wrong
    # password stays wrong while the session is live. Each wrong password doubles the delay before
    # the next check, so the clock moves past it each time.
    attempts = [("keys.rotate", {"purpose": "sqlcipher", "password": token}),
                ("passwd", {"old_password": token, "new_password": NEW_PASSWORD}),
                ("keys.rotate", {"purpose": "sqlcipher", "password": "wrong-one"}),
                ("passwd", {"old_password": "wrong-one", "new_password": NEW_PASSWORD})]
    for delay, (method, body) in zip((1, 2, 4, 8), attempts, strict=True):
        with pytest.raises(Unauthenticated, match=r"^wrong password$"):
            await call_handler(vault, method, body)
        clock.now += delay + 0.1
    refused = [(r["type"], r["outcome"]) for r in vault.spool.pending(len(vault.spool))  # type: ignore[union-attr]
               if r.get("outcome") == "wrong-password"]
    assert refused == [("keyvault.key_rotate", "wrong-password"), ("keyvault.password_change", "wrong-password")] * 2
    # None of those changed anything: the key is at version 1 and the session is still live.
    assert (await call_handler(vault, "status"))["current_versions"]["sqlcipher"] == 1
    assert (await call_handler(vault, "session", {"token": token}))["active"] is True
    # With the right password both succeed.
    old = await get_key(vault)
    rotated = await call_handler(vault, "keys.rotate", {"purpose": "sqlcipher", "password": PASSWORD})
    assert rotated == {"purpose": "sqlcipher", "version": 2}
    new = await get_key(vault)
    assert new["version"] == 2 and new["key"] != old["key"]
    assert await get_key(vault, version=1) == old  # older versions stay readable
    assert await call_handler(vault, "passwd", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}) == {
        "changed": True}
    with pytest.raises(Unauthenticated, match=r"^wrong password$"):  # the old password no longer opens it
        await call_handler(vault, "login", {"password": PASSWORD})
    clock.now += 1.1
    assert (await call_handler(vault, "login", {"password": NEW_PASSWORD}))["token"]
    await vault.on_stop()


@pytest.mark.parametrize("step", ["old-password-checked", "new-master-derived", "state-written",
                                  "state-renamed", "keystore-updated", "none"])
async def test_a_crash_during_password_change_leaves_exactly_one_password(short_tmp: Path, step: str) -> None:
    home, mesh = make_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    keys = {p: await get_key(vault, c, p) for c, p in (("storage", "sqlcipher"), ("audit", "audit-signing"))}
    await vault.on_stop()
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tests.kv_crash", str(home.root),
                                                      step, PASSWORD, NEW_PASSWORD], timeout=120)
    assert result.returncode == (0 if step == "none" else 137)
    valid = []
    for password in (PASSWORD, NEW_PASSWORD):
        candidate = await started(home, mesh.config)
        await call_handler(candidate, "lock")
        try:
            await call_handler(candidate, "unlock", {"password": password})
            valid.append(password)
            owners = {"sqlcipher": "storage", "audit-signing": "audit"}
            assert {p: await get_key(candidate, owners[p], p) for p in keys} == keys  # none changed or lost
        except Unauthenticated:
            pass
        await candidate.on_stop()
    assert valid == ([PASSWORD] if step in ("old-password-checked", "new-master-derived", "state-written")
                     else [NEW_PASSWORD])


async def test_a_corrupt_state_file_stops_keyvault_naming_the_file(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    path = store.state_path(home)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(StateError, match=re.escape(str(path))):
        await started(home, mesh.config)


def test_profiles_below_the_owasp_floor_are_refused_unless_test_profiles() -> None:
    weak = "[argon2.master]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n"
    with pytest.raises(ConfigError, match=r"argon2\.master"):
        parse_config(weak)
    assert parse_config("[argon2]\ntest_profiles = true\n" + weak).argon2.test_profiles


async def test_over_the_mesh_and_no_secret_reaches_any_log_or_file(short_tmp: Path) -> None:
    stream = io.StringIO()
    configure_logging("test", stream=stream)
    try:
        home, mesh = make_home(short_tmp / "h")
        async with mesh:  # type: ignore[attr-defined]
            clock = Clock()
            vault = Keyvault(home, mesh.config, clock=clock)  # type: ignore[attr-defined]
            await mesh.start_service(vault)  # type: ignore[attr-defined]
            # Key releases are recorded by audit first: run it, so its log is searched too.
            audit = Audit(home, mesh.config)  # type: ignore[attr-defined]
            await mesh.start_service(audit)  # type: ignore[attr-defined]
            assert audit.state == "ok"
            operator = await mesh.client("meshctl")  # type: ignore[attr-defined]
            events = await operator.subscribe("security.")
            storage = await mesh.client("storage")  # type: ignore[attr-defined]
            key = await storage.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
            with pytest.raises(Forbidden):
                await operator.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
            with pytest.raises(Unauthenticated):
                await operator.call("keyvault.unlock", {"password": "wrong-" + PASSWORD}, timeout=5)
            await operator.call("keyvault.lock", timeout=5)
            assert (await events.next(timeout=5)).topic == "security.sealed"
            with pytest.raises(Sealed):
                await storage.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5)
            clock.now += 1.1  # past the wrong-password delay
            await operator.call("keyvault.unlock", {"password": PASSWORD}, timeout=5)
            assert (await events.next(timeout=5)).topic == "security.unsealed"
            assert await storage.call("keyvault.keys.get", {"purpose": "sqlcipher"}, timeout=5) == key
            await operator.call("keyvault.passwd", {"old_password": PASSWORD, "new_password": NEW_PASSWORD},
                                timeout=30)
            await audit.on_stop()
            await vault.on_stop()
    finally:
        structlog.reset_defaults()
    raw = key["key"]
    secrets = [PASSWORD.encode(), NEW_PASSWORD.encode(), raw, raw.hex().encode(), base64.b64encode(raw)]
    haystacks = [stream.getvalue().encode()]
    haystacks += [p.read_bytes() for p in home.root.rglob("*") if p.is_file() and p.suffix != ".sock"]
    for secret in secrets:
        for haystack in haystacks:
            assert secret not in haystack


async def test_key_fetch_loops_are_rate_limited_per_identity(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    clock = Clock()
    vault = await started(home, mesh.config, clock=clock)
    for _ in range(60):  # the default: 60 a minute, in a burst
        await get_key(vault)
    with pytest.raises(RateLimited, match="key fetches"):
        await get_key(vault)
    assert (await get_key(vault, "audit", "audit-hmac"))["version"] == 1  # others are not affected
    clock.now += 1.1
    await get_key(vault)
    await vault.on_stop()


async def test_a_full_audit_spool_refuses_releases_and_unlocks(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    assert vault.spool is not None
    vault.spool.max_records = len(vault.spool)  # nothing can be recorded any more
    with pytest.raises(Unavailable, match="audit spool is full"):
        await get_key(vault, "audit", "audit-hmac")  # audit's own keys are recorded in the spool
    vault.spool.max_records = len(vault.spool) + 2  # room for the overflow marker and the lock record
    await call_handler(vault, "lock")
    with pytest.raises(Unavailable, match="audit spool is full"):
        await call_handler(vault, "unlock", {"password": PASSWORD})
    assert (await call_handler(vault, "status"))["sealed"] is True  # no audit, no unlock
    await vault.on_stop()


async def test_a_password_change_while_sealed_stays_sealed(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    vault = await started(home, mesh.config)
    await call_handler(vault, "lock")
    await call_handler(vault, "passwd", {"old_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert (await call_handler(vault, "status"))["sealed"] is True
    await vault.on_stop()
    again = await started(home, mesh.config)
    assert (await call_handler(again, "status"))["sealed"] is True
    await call_handler(again, "unlock", {"password": NEW_PASSWORD})
    assert (await get_key(again))["version"] == 1
    await again.on_stop()


async def test_a_stale_file_keystore_is_removed_once_the_keyring_holds_the_key(short_tmp: Path) -> None:
    home, mesh = make_home(short_tmp / "h")
    stale = home.keys / "master.keystore"
    stale.write_bytes(b"old copy")
    stale.chmod(0o600)
    vault = await started(home, mesh.config)
    assert not stale.exists()
    await vault.on_stop()


async def test_a_purpose_added_after_init_gets_its_first_key_at_unseal(short_tmp: Path) -> None:
    # A home initialised before `accounts` existed: its state has no key of that purpose.
    home, mesh = make_home(short_tmp / "h")
    state = store.load(home)
    assert state is not None
    del state.versions["accounts"], state.current["accounts"]
    store.save(home, state)
    vault = await started(home, mesh.config)  # unsealed from the keyring at start
    assert "accounts" in store.load(home).current  # type: ignore[union-attr]  # saved before use
    first = await get_key(vault, "authn", "accounts")
    assert first["version"] == 1 and len(first["key"]) == 32
    await vault.on_stop()
    again = await started(home, mesh.config)  # the same key after a restart, not another new one
    assert await get_key(again, "authn", "accounts") == first
    await call_handler(again, "lock")
    await call_handler(again, "unlock", {"password": PASSWORD})  # unlock path: nothing to add now
    assert await get_key(again, "authn", "accounts") == first
    await again.on_stop()

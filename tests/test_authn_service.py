"""authn over a real in-process mesh: accounts, password login, tokens bound to the caller's key,
refresh rotation and reuse detection, revocation on every path, uniform refusals with the reason in
audit, throttling that cannot lock the owner out, sealing, and no secret anywhere under the home."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest
import structlog

from bench.webauthn_soft import SoftAuthenticator
from services.authn.names import skeleton
from shared import Argon2Profile, MeshError, ReauthRequired, configure_logging
from shared.tokens import KEYS_REFRESH_S, InvalidToken, LocalVerifier

from .authn_rig import USER_PASSWORD, authn_rig
from .conftest import eventually


async def _code(call: Any) -> tuple[str, str]:
    with pytest.raises(MeshError) as caught:
        await call
    return caught.value.code, caught.value.message


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_a_login_gives_tokens_bound_to_the_device_that_logged_in(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        user = await r.add_user()
        tokens = await r.login("phone")
        claims = _claims(tokens["access_token"])
        assert claims["sub"] == user["id"] == tokens["user"] and claims["sid"] == tokens["session"]
        assert claims["cnf"] == {"ckt": r.fingerprint("phone")} and claims["amr"] == ["pwd"]
        assert claims["exp"] - claims["iat"] == 900 and claims["iss"] == "curvemesh"
        assert tokens["refresh_token"].startswith("rt.")
        # The phone presents its own token; a service checks one the phone presented to it.
        assert (await r.verify("phone", tokens["access_token"]))["sub"] == user["id"]
        checked = await r.verify("storage", tokens["access_token"], presenter=r.fingerprint("phone"))
        assert checked["username"] == "alice" and checked["sid"] == tokens["session"]
        # Proof of possession: the same token over any other key is refused, uniformly.
        assert await _code(r.verify("laptop", tokens["access_token"])) == ("UNAUTHENTICATED", "token refused")
        assert await _code(r.verify("storage", tokens["access_token"], presenter=r.fingerprint("laptop"))) == (
            "UNAUTHENTICATED", "token refused")
        # Only a service may speak for a presenter: a device cannot claim to be the phone.
        assert (await _code(r.verify("laptop", tokens["access_token"], presenter=r.fingerprint("phone"))))[0] == (
            "UNAUTHENTICATED")
        assert await _code(r.verify("phone", tokens["access_token"], audience="elsewhere")) == (
            "UNAUTHENTICATED", "token refused")
        spool = r.spool_text()
        for reason in (b"wrong_presenter", b"presenter_not_allowed", b"audience"):
            assert reason in spool


async def test_failed_logins_look_the_same_whatever_went_wrong(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        await r.add_user("bob")
        await r["meshctl"].call("authn.users.disable", {"username": "bob"}, timeout=10)
        alerts = await r["meshctl"].subscribe("alerts.", timeout=5)
        answers = {await _code(r.login("phone", "nobody")), await _code(r.login("phone", password="not-it-at-all")),
                   await _code(r.login("phone", "bob")), await _code(r.login("phone", "bad\x00name"))}
        assert answers == {("UNAUTHENTICATED", "login failed")}
        spool = r.spool_text()
        for reason in (b"unknown user", b"wrong password", b"account disabled"):
            assert reason in spool
        # The audit log has each with its reason (and no password); a burst fires the alert rule.
        async def recorded() -> bool:
            tail = await r["meshctl"].call("audit.tail", {"limit": 50, "type": "authn.login"}, timeout=10)
            return {rec["details"].get("reason") for rec in tail["records"]} >= {
                "unknown user", "wrong password", "account disabled"}
        await eventually(recorded, deadline=10)
        for _ in range(4):  # five failures for alice within the window (failed_logins_account)
            await _code(r.login("phone", password="not-it-at-all"))
        alert = await alerts.next(timeout=10)
        assert alert.topic == "alerts.failed_logins_account" and alert.body["subject"] == "alice"
        # Visually equal names are one person: the same account, whatever the case or script.
        assert (await r.login("laptop", "ALICE"))["username"] == "alice"
        assert await _code(r.add_user("Alice")) == (
            "CONFLICT", "a user with this name, or one that looks the same, already exists")


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_session(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        first = await r.login("phone")
        second = await r["phone"].call("authn.token.refresh", {"refresh_token": first["refresh_token"]}, timeout=10)
        assert second["session"] == first["session"] and second["refresh_token"] != first["refresh_token"]
        assert (await r.verify("phone", second["access_token"]))["sid"] == first["session"]
        # A refresh token is useless over another key, and that attempt changes nothing.
        assert await _code(r["laptop"].call("authn.token.refresh", {"refresh_token": second["refresh_token"]},
                                            timeout=10)) == ("UNAUTHENTICATED", "token refused")
        # The spent one comes back (a thief replaying it): the whole family is ended, and it is an alert.
        events = await r["meshctl"].subscribe("authn.revoked.", timeout=5)
        alerts = await r["meshctl"].subscribe("alerts.credential_theft", timeout=5)
        assert await _code(r["phone"].call("authn.token.refresh", {"refresh_token": first["refresh_token"]},
                                           timeout=10)) == ("UNAUTHENTICATED", "token refused")
        event = await events.next(timeout=5)
        assert event.sender == "authn" and event.body["sessions"] == [first["session"]]
        for token in (first["access_token"], second["access_token"]):
            assert (await _code(r.verify("phone", token)))[0] == "UNAUTHENTICATED"
        assert (await _code(r["phone"].call("authn.token.refresh", {"refresh_token": second["refresh_token"]},
                                            timeout=10)))[0] == "UNAUTHENTICATED"
        assert b"authn.refresh_reused" in r.spool_text()
        alert = await alerts.next(timeout=10)
        assert alert.sender == "audit" and alert.body["subject"] == "alice"
        # An access token is not a refresh token, nor the other way round.
        third = await r.login("phone")
        assert (await _code(r["phone"].call("authn.token.refresh", {"refresh_token": third["access_token"]},
                                            timeout=10)))[0] == "UNAUTHENTICATED"
        assert (await _code(r.verify("phone", third["refresh_token"])))[0] == "UNAUTHENTICATED"


@pytest.mark.parametrize("how", ["logout", "disable", "passwd", "delete", "revoke-session", "revoke-user",
                                 "revoke-device"])
async def test_every_way_of_ending_a_session_is_seen_on_the_next_request(short_tmp: Path, how: str) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        other = await r.login("laptop")
        op = r["meshctl"]
        if how == "logout":
            assert await r["phone"].call("authn.logout", {"access_token": tokens["access_token"]}, timeout=10) == {
                "ended": True}
        elif how == "disable":
            await op.call("authn.users.disable", {"username": "alice"}, timeout=10)
        elif how == "passwd":
            await op.call("authn.users.passwd", {"username": "alice", "password": "another-planted-phrase-93"},
                          timeout=10)
        elif how == "delete":
            await op.call("authn.users.delete", {"username": "alice"}, timeout=10)
        elif how == "revoke-session":
            assert (await op.call("authn.sessions.revoke", {"session": tokens["session"]}, timeout=10))["ended"] == [
                tokens["session"]]
        elif how == "revoke-user":
            await op.call("authn.sessions.revoke", {"username": "alice"}, timeout=10)
        else:
            await op.call("authn.sessions.revoke", {"device": r.fingerprint("phone")}, timeout=10)
        assert (await _code(r.verify("phone", tokens["access_token"])))[0] == "UNAUTHENTICATED"
        assert (await _code(r["phone"].call("authn.token.refresh", {"refresh_token": tokens["refresh_token"]},
                                            timeout=10)))[0] == "UNAUTHENTICATED"
        laptop_alive = how in ("logout", "revoke-session", "revoke-device")
        if laptop_alive:
            assert (await r.verify("laptop", other["access_token"]))["sid"] == other["session"]
        else:
            assert (await _code(r.verify("laptop", other["access_token"])))[0] == "UNAUTHENTICATED"


async def test_a_locked_out_attacker_does_not_lock_out_the_owners_device(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        await r.login("phone")  # the phone is now a known device of alice's
        codes = []
        for _ in range(10):  # lockout_after: each guess waits out the growing delay first
            codes.append((await _code(r.login("laptop", password="guessing-wrong-again")))[0])
            r.monotonic.advance(301)
        assert codes == ["UNAUTHENTICATED"] * 10
        code, message = await _code(r.login("laptop"))  # even the right password, from there
        assert code == "RATE_LIMITED" and "try again in" in message
        r.monotonic.advance(300)  # still within the 900 s lockout
        assert (await _code(r.login("laptop")))[0] == "RATE_LIMITED"
        assert (await r.login("phone"))["username"] == "alice"  # the owner's device still gets in
        assert b"throttled (lockout)" in r.spool_text()
        r.monotonic.advance(900)  # the lockout is temporary
        assert (await r.login("laptop"))["username"] == "alice"


async def test_sealed_authn_answers_sealed_and_comes_back(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        await r["meshctl"].call("keyvault.lock", timeout=10)
        await eventually(lambda: r.authn_state("sealed"), deadline=10)
        assert (await _code(r.verify("phone", tokens["access_token"])))[0] == "SEALED"
        assert (await _code(r.login("phone")))[0] == "SEALED"
        from .authn_rig import PASSWORD
        await r["meshctl"].call("keyvault.unlock", {"password": PASSWORD}, timeout=30)
        await eventually(lambda: r.authn_state("ready"), deadline=20)
        assert (await r.verify("phone", tokens["access_token"]))["sid"] == tokens["session"]


async def test_accounts_survive_a_restart_and_no_secret_is_under_the_home_or_in_a_log(short_tmp: Path) -> None:
    stream = io.StringIO()
    configure_logging("test", "debug", stream=stream)
    try:
        async with authn_rig(short_tmp / "h") as r:
            await r.add_user()
            tokens = await r.login("phone")
            await _code(r.login("phone", password="planted-wrong-guess-5e2a"))
            begun = await r["meshctl"].call("authn.mfa.totp.begin", {"username": "alice"}, timeout=10)
            totp = pyotp.TOTP(begun["secret"])
            codes = (await r["meshctl"].call("authn.mfa.totp.confirm", {"username": "alice", "code": totp.now()},
                                             timeout=10))["recovery_codes"]
            otp = totp.at(time.time() + 30)
            await r.login("laptop", otp=otp)
            await r.login("laptop", otp=codes[1])
            await _code(r.login("laptop", otp=codes[1]))  # spent: refused, and not logged
            await r.stop_authn()
            # A new authentication profile: the hash is re-made at the next successful login.
            stronger = dataclasses.replace(r.mesh.config, argon2=dataclasses.replace(
                r.mesh.config.argon2, authentication=Argon2Profile(2048, 1, 1)))
            await r.start_authn(stronger)
            assert r.authn is not None
            before = r.authn.db().user_by_skeleton(skeleton("alice"))
            assert before is not None and "m=1024," in before.password_hash
            assert (await r.verify("phone", tokens["access_token"]))["username"] == "alice"
            users = await r["meshctl"].call("authn.users.list", timeout=10)
            assert [(u["username"], u["sessions"]) for u in users] == [("alice", 3)]
            await r.login("laptop", otp=codes[2])
            after = r.authn.db().user_by_skeleton(skeleton("alice"))
            assert after is not None and "m=2048," in after.password_hash
            await r.stop_authn()
            planted = [USER_PASSWORD, "planted-wrong-guess-5e2a", tokens["refresh_token"].split(".")[2],
                       tokens["access_token"].split(".")[2], begun["secret"], otp, *codes]
            for path in r.home.root.rglob("*"):
                if path.is_file():
                    data = path.read_bytes()
                    for secret in planted:
                        assert secret.encode() not in data, (path, secret[:8])
    finally:
        structlog.reset_defaults()
    logged = stream.getvalue()
    assert "login_failed" in logged or "registered" in logged  # the log was really written
    for secret in planted:
        assert secret not in logged, secret[:8]


async def test_local_verification_honours_revocations_and_rotations(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        early = await r.login("phone")
        await r["phone"].call("authn.logout", {"access_token": early["access_token"]}, timeout=10)
        tokens = await r.login("phone")
        # A verifier started after a session ended still refuses it: it loads the recent ends first.
        offset = [0.0]  # the verifier's clock, moved past its key-refresh interval below
        local = LocalVerifier(r["storage"], "authn", clock=lambda: time.time() + offset[0])
        await local.start()
        try:
            with pytest.raises(InvalidToken, match="revoked"):
                await local.verify(early["access_token"], audience="curvemesh", presenter=r.fingerprint("phone"))
            claims = await local.verify(tokens["access_token"], audience="curvemesh", presenter=r.fingerprint("phone"))
            assert claims.session_id == tokens["session"]
            with pytest.raises(InvalidToken, match="wrong_presenter"):
                await local.verify(tokens["access_token"], audience="curvemesh", presenter=r.fingerprint("laptop"))
            offset[0] = 301.0  # five minutes after the sign-in: fine, except for sensitive operations
            assert (await local.verify(tokens["access_token"], audience="curvemesh",
                                       presenter=r.fingerprint("phone"))).session_id == tokens["session"]
            with pytest.raises(ReauthRequired, match=r"login\.reauth"):
                await local.verify(tokens["access_token"], audience="curvemesh", presenter=r.fingerprint("phone"),
                                   max_age_s=300)
            offset[0] = 0.0
            # An operator revokes the session: the event reaches the local verifier.
            await r["meshctl"].call("authn.sessions.revoke", {"session": tokens["session"]}, timeout=10)

            async def refused() -> bool:
                try:
                    await local.verify(tokens["access_token"], audience="curvemesh",
                                       presenter=r.fingerprint("phone"))
                except InvalidToken as exc:
                    return exc.reason == "revoked"
                return False
            await eventually(refused, deadline=10)
            # A rotation of the signing key: new tokens carry a kid the verifier fetches on first sight.
            from .authn_rig import PASSWORD
            before = await r.login("laptop")  # signed with version 1
            await r["meshctl"].call("keyvault.keys.rotate", {"purpose": "token-signing", "password": PASSWORD},
                                    timeout=30)

            async def rotated() -> bool:
                fresh = await r.login("laptop")
                return bool(_header(fresh["access_token"])["kid"] == "token-signing-v2")
            await eventually(rotated, deadline=10)
            newest = await r.login("laptop")
            offset[0] = KEYS_REFRESH_S  # a key fetch for an unknown kid is allowed once a second
            assert (await local.verify(newest["access_token"], audience="curvemesh",
                                       presenter=r.fingerprint("laptop"))).subject == tokens["user"]
            # A token signed before the rotation stays valid for its lifetime, on both paths.
            assert _header(before["access_token"])["kid"] == "token-signing-v1"
            assert (await r.verify("laptop", before["access_token"]))["sub"] == tokens["user"]
            assert (await local.verify(before["access_token"], audience="curvemesh",
                                       presenter=r.fingerprint("laptop"))).session_id == before["session"]
        finally:
            await local.stop()


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


async def test_totp_enrolment_login_reuse_and_recovery_codes(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        op = r["meshctl"]
        begun = await op.call("authn.mfa.totp.begin", {"username": "alice"}, timeout=10)
        assert begun["uri"].startswith("otpauth://totp/curvemesh:alice?")
        totp = pyotp.TOTP(begun["secret"])
        # Until confirmed, TOTP is not asked for; a wrong first code confirms nothing.
        assert (await r.login("phone"))["username"] == "alice"
        assert (await _code(op.call("authn.mfa.totp.confirm", {"username": "alice", "code": "000000"
                                                               if totp.now() != "000000" else "111111"},
                                    timeout=10)))[0] == "BAD_REQUEST"
        confirmed = await op.call("authn.mfa.totp.confirm", {"username": "alice", "code": totp.now()}, timeout=10)
        codes = confirmed["recovery_codes"]
        assert len(codes) == 10
        # The password alone is no longer enough, and the caller is told a code is needed.
        assert await _code(r.login("phone")) == ("UNAUTHENTICATED", "login failed: a one-time code is required (otp)")
        nxt = totp.at(time.time() + 30)  # the code of the next step (the confirming one is spent)
        tokens = await r.login("phone", otp=nxt)
        assert _claims(tokens["access_token"])["amr"] == ["pwd", "otp", "mfa"]
        assert await _code(r.login("phone", otp=nxt)) == ("UNAUTHENTICATED", "login failed")  # used once only
        # A recovery code works once, in any case and spacing.
        spaced = codes[0].upper().replace("-", " ")
        assert _claims((await r.login("laptop", otp=spaced))["access_token"])["amr"] == ["pwd", "otp", "recovery",
                                                                                         "mfa"]
        assert (await _code(r.login("laptop", otp=codes[0])))[0] == "UNAUTHENTICATED"
        # A wrong code with the right password is a failed guess like a wrong password.
        assert b"wrong one-time code" in r.spool_text()
        assert (await op.call("authn.mfa.totp.off", {"username": "alice"}, timeout=10))["removed"] is True
        assert (await r.login("phone"))["username"] == "alice"
        # Neither the secret nor any code is in the audit spool.
        spool = r.spool_text()
        assert begun["secret"].encode() not in spool and nxt.encode() not in spool
        assert not any(c.encode() in spool for c in codes)


async def test_sensitive_operations_need_a_recent_sign_in_and_reauth_gives_one(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        assert (await r.verify("phone", tokens["access_token"], sensitive=True))["sid"] == tokens["session"]
        r.wall.offset = 301.0  # [authn] step_up_s is 300: the sign-in is now too old for sensitive work
        assert (await r.verify("phone", tokens["access_token"]))["sid"] == tokens["session"]  # the rest goes on
        code, message = await _code(r.verify("phone", tokens["access_token"], sensitive=True))
        assert code == "REAUTH_REQUIRED" and "authn.login.reauth" in message
        # Signing in again within the session: same session, fresh auth_time, the refresh token unchanged.
        assert (await _code(r["phone"].call("authn.login.reauth", {"access_token": tokens["access_token"],
                                                                  "password": "wrong-guess-again-7"},
                                            timeout=10))) == ("UNAUTHENTICATED", "login failed")
        again = await r["phone"].call("authn.login.reauth", {"access_token": tokens["access_token"],
                                                            "password": USER_PASSWORD}, timeout=10)
        assert again["session"] == tokens["session"] and "refresh_token" not in again
        assert _claims(again["access_token"])["auth_time"] > _claims(tokens["access_token"])["auth_time"]
        assert (await r.verify("phone", again["access_token"], sensitive=True))["sid"] == tokens["session"]
        # Another key cannot step up someone else's session.
        assert (await _code(r["laptop"].call("authn.login.reauth", {"access_token": again["access_token"],
                                                                   "password": USER_PASSWORD}, timeout=10)))[0] == (
            "UNAUTHENTICATED")
        assert b"reauth_required" in r.spool_text()


async def test_passkeys_register_sign_in_and_a_clone_is_refused_and_alerted(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        device = SoftAuthenticator("localhost", "https://localhost")
        begun = await r["phone"].call("authn.passkey.register.begin", {"access_token": tokens["access_token"]},
                                      timeout=10)
        # The ceremony is the phone's: another key cannot finish it, and a used one is gone.
        stolen = {"ceremony": begun["ceremony"], "response": device.register(begun["options"])}
        code, _ = await _code(r["laptop"].call("authn.passkey.register.finish", stolen, timeout=10))
        assert code == "UNAUTHENTICATED"
        begun = await r["phone"].call("authn.passkey.register.begin", {"access_token": tokens["access_token"]},
                                      timeout=10)
        added = await r["phone"].call("authn.passkey.register.finish",
                                      {"ceremony": begun["ceremony"], "response": device.register(begun["options"])},
                                      timeout=10)
        listed = await r["meshctl"].call("authn.users.passkeys", {"username": "alice"}, timeout=10)
        assert [p["credential"] for p in listed] == [added["credential"]]

        async def passkey_login(via: str, authenticator: SoftAuthenticator, **knobs: Any) -> dict[str, Any]:
            start = await r[via].call("authn.login.passkey.begin", {"username": "alice"}, timeout=10)
            reply: dict[str, Any] = await r[via].call("authn.login.passkey.finish", {
                "ceremony": start["ceremony"], "response": authenticator.login(start["options"], **knobs)},
                timeout=10)
            return reply

        signed_in = await passkey_login("phone", device)
        assert _claims(signed_in["access_token"])["amr"] == ["hwk", "user", "mfa"]
        # As the second factor after the password, in one ceremony; a wrong password fails it all.
        start = await r["phone"].call("authn.login.passkey.begin", {"username": "alice"}, timeout=10)
        both = await r["phone"].call("authn.login.passkey.finish", {
            "ceremony": start["ceremony"], "response": device.login(start["options"]), "password": USER_PASSWORD},
            timeout=10)
        assert _claims(both["access_token"])["amr"] == ["pwd", "hwk", "user", "mfa"]
        start = await r["phone"].call("authn.login.passkey.begin", {"username": "alice"}, timeout=10)
        assert await _code(r["phone"].call("authn.login.passkey.finish", {
            "ceremony": start["ceremony"], "response": device.login(start["options"]), "password": "not-it-12345"},
            timeout=10)) == ("UNAUTHENTICATED", "login failed")
        assert (await r.verify("phone", signed_in["access_token"]))["username"] == "alice"
        # Wrong origin, wrong relying party, a tampered signature: refused, uniformly, reasons audited.
        for knobs in ({"origin": "https://evil.example"}, {"rp_id": "evil.example"}, {"tamper_signature": True}):
            assert await _code(passkey_login("phone", device, **knobs)) == ("UNAUTHENTICATED", "login failed")
        for reason in (b"passkey: origin", b"passkey: rp_id", b"passkey: signature"):
            assert reason in r.spool_text()
        # Those were failed guesses for the throttle too: the next attempt waits, then goes on.
        assert (await _code(passkey_login("phone", device)))[0] == "RATE_LIMITED"
        r.monotonic.advance(2)
        # A copy of the key whose counter is behind: a validly signed clone, refused and alerted.
        alerts = await r["meshctl"].subscribe("alerts.credential_theft", timeout=5)
        copy = device.clone()
        copy.sign_count = 0
        await passkey_login("phone", device)  # the real one moves on
        assert await _code(passkey_login("laptop", copy)) == ("UNAUTHENTICATED", "login failed")
        alert = await alerts.next(timeout=10)
        assert alert.body["subject"] == "alice" and b"authn.passkey_cloned" in r.spool_text()
        # An operator removes it: it signs in no more.
        await r["meshctl"].call("authn.users.passkeys.remove", {"username": "alice",
                                                               "credential": added["credential"]}, timeout=10)
        assert (await _code(passkey_login("phone", device)))[0] == "UNAUTHENTICATED"


async def test_a_rotation_of_the_accounts_key_re_encrypts_the_database(short_tmp: Path) -> None:
    from .authn_rig import PASSWORD
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        version = r.home.data / "authn" / "accounts.version"
        assert version.read_text() == "1\n"
        await r["meshctl"].call("keyvault.keys.rotate", {"purpose": "accounts", "password": PASSWORD}, timeout=30)
        async def rekeyed() -> bool:
            return version.read_text() == "2\n"
        await eventually(rekeyed, deadline=10)
        assert (await r.verify("phone", tokens["access_token"]))["username"] == "alice"  # no interruption
        await r.stop_authn()
        await r.start_authn()  # opens with version 2 only now
        assert (await r.verify("phone", tokens["access_token"]))["username"] == "alice"



async def test_forged_refresh_versions_do_not_spend_authn_s_key_fetches(short_tmp: Path) -> None:
    async with authn_rig(short_tmp / "h") as r:
        await r.add_user()
        tokens = await r.login("phone")
        forged = ["rt.999999." + tokens["refresh_token"].split(".")[2], "rt.7." + tokens["refresh_token"].split(".")[2]]
        for _ in range(80):  # more than keyvault's 60 key fetches a minute, were each one a fetch
            for token in forged:
                assert (await _code(r["phone"].call("authn.token.refresh", {"refresh_token": token},
                                                    timeout=10)))[0] == "UNAUTHENTICATED"
        # authn can still fetch what it needs: a real refresh works.
        assert (await r["phone"].call("authn.token.refresh", {"refresh_token": tokens["refresh_token"]},
                                      timeout=10))["session"] == tokens["session"]

"""No path to a person's data without a decision: storage, authn and authz running for real.

Every storage data method is walked with a token whose holder has no role (each is refused and
each refusal is authz's audited decision), with a subject and no token (refused: a forged claim),
with another holder's token (refused by authn). Consent is granted, used, expired and revoked
through the wire, and the very next request after a revocation is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared import MeshError

from .people_rig import people_rig

#: Every storage data method with a minimal body (the access fields are added per test) and the
#: action authz is asked about.
DATA_METHODS: list[tuple[str, dict[str, Any], str]] = [
    ("storage.kv.put", {"category": "memories", "key": b"k", "value": b"v"}, "write"),
    ("storage.kv.get", {"category": "memories", "key": b"k"}, "read"),
    ("storage.kv.delete", {"category": "memories", "key": b"k"}, "delete"),
    ("storage.kv.scan", {"category": "memories"}, "read"),
    ("storage.records.collection", {"category": "memories", "collection": "notes", "indexed": []}, "write"),
    ("storage.records.insert", {"category": "memories", "collection": "notes", "doc": {"a": 1}}, "write"),
    ("storage.records.get", {"category": "memories", "collection": "notes", "id": "x"}, "read"),
    ("storage.records.query", {"category": "memories", "collection": "notes"}, "read"),
    ("storage.records.update", {"category": "memories", "collection": "notes", "id": "x", "doc": {}}, "write"),
    ("storage.records.delete", {"category": "memories", "collection": "notes", "id": "x"}, "delete"),
    ("storage.analytics.table", {"category": "memories", "table": "t", "columns": [["a", "BIGINT"]]}, "write"),
    ("storage.analytics.ingest", {"category": "memories", "table": "t", "rows": [[1]]}, "write"),
    ("storage.analytics.query", {"category": "memories", "sql": "SELECT 1"}, "read"),
    ("storage.analytics.tables", {"category": "memories"}, "read"),
    ("storage.files.put.begin", {"category": "memories", "name": "a.txt"}, "write"),
    ("storage.files.get", {"category": "memories", "name": "a.txt"}, "read"),
    ("storage.files.info", {"category": "memories", "name": "a.txt"}, "read"),
    ("storage.files.list", {"category": "memories"}, "read"),
    ("storage.files.delete", {"category": "memories", "name": "a.txt"}, "delete"),
]


async def code_of(call: Any) -> str:
    with pytest.raises(MeshError) as raised:
        await call
    return raised.value.code


def test_the_walk_covers_every_data_method() -> None:
    from services.storage.service import Storage
    from shared import handler_table
    data = {f"storage.{name}" for name in handler_table(Storage)
            if name.split(".")[0] in ("kv", "records", "analytics", "files")}
    # Upload pieces, commits and aborts name only an upload begun (and decided) by the same caller.
    assert data - {m for m, _, _ in DATA_METHODS} == {"storage.files.put.chunk", "storage.files.put.commit",
                                                      "storage.files.put.abort"}


async def test_no_data_method_answers_without_a_decision(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice = await rig.add_user("alice")
        stranger_token = await rig.token("stranger", "alice")
        frontend_token = await rig.token("frontend", "alice")
        for method, body, _ in DATA_METHODS:
            # A holder of a valid token but no role: authz says no, and says it in audit.
            assert await code_of(rig["stranger"].call(method, {**body, "token": stranger_token},
                                                      timeout=10)) == "FORBIDDEN", method
            # A subject without the person's token is a forged claim, whoever it names.
            assert await code_of(rig["frontend"].call(method, {**body, "subject": alice},
                                                      timeout=10)) == "FORBIDDEN", method
            # Another peer's token: authn refuses it (bound to the frontend's key).
            assert await code_of(rig["stranger"].call(method, {**body, "token": frontend_token},
                                                      timeout=10)) == "UNAUTHENTICATED", method
        decisions = await rig.decisions()
        denied = [(d["details"]["action"], d["target"], d["on_behalf_of"]) for d in decisions
                  if d["outcome"] == "denied"]
        # Two audited denies per walked method, for alice: the stranger's own token, and the frontend's
        # token it presented (authz is asked while authn verifies; authn's refusal decides that call).
        # Cached decisions are audited too.
        assert denied == [(action, "Service::stranger", alice) for _, _, action in DATA_METHODS for _ in (1, 2)]


async def test_the_owner_reaches_their_data_through_a_user_data_service(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice, bob = await rig.add_user("alice"), await rig.add_user("bob")
        token = await rig.token("frontend", "alice")
        scope = {"category": "memories", "token": token}
        await rig["frontend"].call("storage.kv.put", {**scope, "key": b"diary", "value": b"dear diary"}, timeout=10)
        got = await rig["frontend"].call("storage.kv.get", {**scope, "key": b"diary"}, timeout=10)
        assert got == {"found": True, "value": b"dear diary"}
        # The person's data is not the frontend's own, and not bob's.
        own = await rig["frontend"].call("storage.kv.get", {"category": "memories", "key": b"diary"}, timeout=10)
        assert own["found"] is False
        bob_token = await rig.token("frontend", "bob")
        theirs = await rig["frontend"].call("storage.kv.get", {"category": "memories", "key": b"diary",
                                                               "token": bob_token}, timeout=10)
        assert theirs["found"] is False
        # Naming alice as the subject with bob's token is acting for a third party: consent needed.
        assert await code_of(rig["frontend"].call("storage.kv.get", {"category": "memories", "key": b"diary",
                                                                     "token": bob_token, "subject": alice},
                                                  timeout=10)) == "FORBIDDEN"
        # Reads are metered against the real person.
        await rig.storage.meter.flush()
        tail = await rig["meshctl"].call("audit.tail", {"type": "storage.read", "limit": 20}, timeout=10)
        per_person = {(t["details"]["subject"], t.get("on_behalf_of")) for t in tail["records"]}
        assert ("frontend", alice) in per_person and ("frontend", bob) in per_person
        assert ("frontend", None) in per_person  # its own read, counted against no one


async def test_consent_granted_used_expired_and_revoked(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice = await rig.add_user("alice")
        writer = await rig.token("frontend", "alice")
        await rig["frontend"].call("storage.kv.put", {"category": "memories", "token": writer, "key": b"k",
                                                      "value": b"remember"}, timeout=10)
        phone = await rig.token("phone", "alice")
        read = {"category": "memories", "token": phone, "key": b"k", "purpose": "sync"}
        # A paired device needs the owner's consent even for the owner's own data.
        assert await code_of(rig["phone"].call("storage.kv.get", read, timeout=10)) == "FORBIDDEN"
        grant = await rig["phone"].call("authz.consent.grant", {
            "access_token": phone, "grantee": "device:phone", "categories": ["memories"], "actions": ["read"],
            "purpose": "sync", "duration_s": 3600}, timeout=10)
        assert grant["owner"] == alice and grant["state"] == "active"
        assert (await rig["phone"].call("storage.kv.get", read, timeout=10))["value"] == b"remember"
        # Another purpose, or a write, is not covered.
        assert await code_of(rig["phone"].call("storage.kv.get", {**read, "purpose": "ads"},
                                               timeout=10)) == "FORBIDDEN"
        assert await code_of(rig["phone"].call("storage.kv.put", {**read, "value": b"x"}, timeout=10)) == "FORBIDDEN"
        # Revoked: the very next request is refused.
        revoked = await rig["phone"].call("authz.consent.revoke", {"grant_id": grant["id"], "access_token": phone},
                                          timeout=10)
        assert revoked["state"] == "revoked"
        assert await code_of(rig["phone"].call("storage.kv.get", read, timeout=10)) == "FORBIDDEN"
        # Expired (authz's clock moved past it): refused without anyone revoking it.
        again = await rig["phone"].call("authz.consent.grant", {
            "access_token": phone, "grantee": "device:phone", "categories": ["memories"], "actions": ["read"],
            "purpose": "sync", "duration_s": 120}, timeout=10)
        assert (await rig["phone"].call("storage.kv.get", read, timeout=10))["found"] is True
        rig.authz_wall.offset += 121
        assert await code_of(rig["phone"].call("storage.kv.get", read, timeout=10)) == "FORBIDDEN"
        listed = await rig["meshctl"].call("authz.consent.list", {"owner": alice, "all": True}, timeout=10)
        assert {(g["id"], g["state"]) for g in listed} == {(grant["id"], "revoked"), (again["id"], "expired")}


async def test_granting_needs_a_fresh_sign_in_of_the_owner(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        await rig.add_user("alice")
        token = await rig.token("phone", "alice")
        terms = {"grantee": "plugin:weather", "categories": ["memories"], "actions": ["read"], "purpose": "forecast"}
        rig.authn_wall.offset += 400  # past [authn] step_up_s (300 s)
        assert await code_of(rig["phone"].call("authz.consent.grant", {**terms, "access_token": token},
                                               timeout=10)) == "REAUTH_REQUIRED"
        # A token bound to another peer is refused, with one uniform answer.
        assert await code_of(rig["frontend"].call("authz.consent.grant", {**terms, "access_token": token},
                                                  timeout=10)) == "UNAUTHENTICATED"
        # Bad terms are named before anything is verified.
        assert await code_of(rig["phone"].call("authz.consent.grant", {**terms, "categories": ["secrets"],
                                                                       "access_token": token},
                                               timeout=10)) == "BAD_REQUEST"
        # Nothing was granted; a device without a token of its owner cannot even list.
        assert await rig["meshctl"].call("authz.consent.list", {}, timeout=10) == []
        assert await code_of(rig["phone"].call("authz.consent.list", {}, timeout=10)) == "UNAUTHENTICATED"


async def test_roles_assigned_and_revoked_take_effect_on_the_next_request(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        await rig.add_user("alice")
        token = await rig.token("stranger", "alice")
        body = {"category": "notes", "token": token, "key": b"k"}
        assert await code_of(rig["stranger"].call("storage.kv.get", body, timeout=10)) == "FORBIDDEN"
        await rig["meshctl"].call("authz.roles.assign", {"principal": "service:stranger", "role": "user-data"},
                                  timeout=10)
        assert (await rig["stranger"].call("storage.kv.get", body, timeout=10))["found"] is False
        listed = await rig["meshctl"].call("authz.roles.list", {}, timeout=10)
        assert {"principal": "service:frontend", "roles": [{"role": "user-data", "source": "declared"}]} in listed
        await rig["meshctl"].call("authz.roles.revoke", {"principal": "service:stranger", "role": "user-data"},
                                  timeout=10)
        assert await code_of(rig["stranger"].call("storage.kv.get", body, timeout=10)) == "FORBIDDEN"
        # Declared roles change in mesh.toml only.
        assert await code_of(rig["meshctl"].call("authz.roles.revoke", {"principal": "service:frontend",
                                                                        "role": "user-data"},
                                                 timeout=10)) == "BAD_REQUEST"


async def test_without_authz_no_person_s_data_is_served(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        await rig.add_user("alice")
        token = await rig.token("frontend", "alice")
        body = {"category": "memories", "token": token, "key": b"k"}
        assert (await rig["frontend"].call("storage.kv.get", body, timeout=10))["found"] is False
        await rig.stop_authz()
        # A question authz has not answered yet cannot be answered without it. (The allow it gave
        # for the read above may be reused until it runs out: no change can be made while authz is
        # away, and any change is announced before it is acknowledged.)
        for asked in ({**body, "category": "notes"}, {**body, "value": b"v"}):
            method = "storage.kv.put" if "value" in asked else "storage.kv.get"
            assert await code_of(rig["frontend"].call(method, asked, timeout=10)) == "UNAVAILABLE"
        # The frontend's own data does not need authz.
        own = await rig["frontend"].call("storage.kv.get", {"category": "memories", "key": b"k"}, timeout=10)
        assert own["found"] is False


async def test_tokens_never_reach_a_log_or_spool(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        await rig.add_user("alice")
        token = await rig.token("stranger", "alice")
        await code_of(rig["stranger"].call("storage.kv.get", {"category": "health", "token": token, "key": b"k"},
                                           timeout=10))
        await rig.decisions()
        for directory in (rig.home.spool, rig.home.log):
            for path in directory.rglob("*"):
                if path.is_file():
                    assert token.encode() not in path.read_bytes(), path


async def test_hostile_tokens_subjects_and_grant_ids(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        await rig.add_user("alice")
        await rig.add_user("bob")
        token = await rig.token("frontend", "alice")
        body = {"category": "memories", "key": b"k"}
        for junk in ("", "x", "a.b.c", "a" * 4000, token + "x", token.rsplit(".", 1)[0] + ".AAAA"):
            assert await code_of(rig["frontend"].call("storage.kv.get", {**body, "token": junk},
                                                      timeout=10)) == "UNAUTHENTICATED", junk[:20]
        # A presenter may be named only by a service relaying a token; a device may not.
        phone = await rig.token("phone", "alice")
        assert await code_of(rig["phone"].call("storage.kv.get", {**body, "token": phone, "presenter": "ab" * 32},
                                               timeout=10)) == "FORBIDDEN"
        # A relaying service naming the wrong presenter: authn refuses the binding.
        assert await code_of(rig["frontend"].call("storage.kv.get", {**body, "token": phone, "presenter": "ab" * 32},
                                                  timeout=10)) == "UNAUTHENTICATED"
        # Subjects that are not user ids are refused before anyone is asked.
        assert await code_of(rig["frontend"].call("storage.kv.get", {**body, "token": token, "subject": "../x"},
                                                  timeout=10)) == "BAD_REQUEST"
        # One person cannot see, or revoke, another's grant: it is as absent as a made-up one.
        grant = await rig["phone"].call("authz.consent.grant", {
            "access_token": phone, "grantee": "plugin:weather", "categories": ["memories"], "actions": ["read"],
            "purpose": "forecast"}, timeout=10)
        bob = await rig.token("frontend", "bob")
        for method in ("authz.consent.show", "authz.consent.revoke"):
            for grant_id in (grant["id"], "g_0000000000000000"):
                assert await code_of(rig["frontend"].call(method, {"grant_id": grant_id, "access_token": bob},
                                                          timeout=10)) == "NOT_FOUND"
        assert await rig["frontend"].call("authz.consent.list", {"access_token": bob}, timeout=10) == []
        assert await code_of(rig["frontend"].call("authz.consent.list", {"access_token": bob, "owner": grant["owner"]},
                                                  timeout=10)) == "FORBIDDEN"
        # Revoking twice says so and changes nothing; the owner's list shows it revoked.
        first = await rig["phone"].call("authz.consent.revoke", {"grant_id": grant["id"], "access_token": phone},
                                        timeout=10)
        again = await rig["meshctl"].call("authz.consent.revoke", {"grant_id": grant["id"]}, timeout=10)
        assert first["state"] == again["state"] == "revoked" and first["revoked_at"] == again["revoked_at"]

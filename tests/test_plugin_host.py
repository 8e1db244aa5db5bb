"""plugin-host end to end, in process: real packages signed with real keys, real sandboxed children,
real storage, authz consent and audit (tests/plugin_rig.py).

Hostile first: every refusal of a package (tampered, wrong key, unknown publisher, older version,
unapproved grant, changed since approval) is refused and audited; a capability not granted is
refused and audited; a person's data needs their consent, and a revoked grant refuses the very next
call; a plugin that breaks a sandbox rule or crashes is killed, audited, alerted on, restarted with
backoff and disabled after repeated failures, while another plugin keeps answering.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from shared import plugins

from .conftest import eventually
from .plugin_rig import CAPABILITIES, code_of, plugin_rig

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(240)]


async def test_install_shows_verifies_and_runs_a_signed_plugin(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        package = rig.package("notes")
        shown = await rig.inspect(package)
        assert shown["name"] == "notes" and shown["publisher"] == "test" and shown["problems"] == []
        assert [c["grant"] for c in shown["capabilities"]] == sorted(CAPABILITIES)
        assert all(c["words"] for c in shown["capabilities"])
        installed = await rig.install(package)
        assert installed["state"] == "running" and installed["enabled"] is True
        assert set(installed["functions"]) >= {"hello", "remember", "recall", "read_note"}
        assert installed["layers_applied"]["seccomp"] and installed["layers_applied"]["landlock"]
        assert await rig.call("notes", "hello", {"who": "gina"}) == {"ok": True, "value": {"hello": "gina"}}
        assert await code_of(rig.call("notes", "nope")) == "NOT_FOUND"
        assert await code_of(rig.call("absent", "hello")) == "NOT_FOUND"
        listed = await rig.operator.call("plugin-host.plugins.list", {}, timeout=10)
        assert [p["name"] for p in listed["plugins"]] == ["notes"]
        assert all(layer["available"] for layer in listed["layers"].values()), listed["layers"]
        [record] = await rig.records("plugin.installed")
        assert record["target"] == "plugin:notes" and record["details"]["content_hash"] == shown["content_hash"]
        # The installed copy is what runs: changing the source afterwards changes nothing.
        (package / "plugin.py").write_text("raise SystemExit(1)\n")
        assert (await rig.call("notes", "hello"))["ok"] is True


async def test_bad_packages_are_refused_and_audited(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        tampered = rig.package("tampered")
        (tampered / "plugin.py").write_text((tampered / "plugin.py").read_text() + "\n# changed\n")
        added = rig.package("added")
        (added / "extra.py").write_text("x = 1\n")
        wrong_key = rig.package("wrongkey", key="other", sign_as="test")  # signed by other's key as "test"
        unknown = rig.package("unknown", key="stranger")
        unsigned = rig.package("unsigned")
        (unsigned / plugins.SIGNATURE_FILE).unlink()
        cases = ((tampered, "tampered"), (added, "tampered"), (wrong_key, "bad_signature"),
                 (unknown, "unknown_publisher"), (unsigned, "unsigned"))
        for path, _ in cases:
            assert await code_of(rig.inspect(path)) == "BAD_REQUEST", path
            assert await code_of(rig.operator.call("plugin-host.plugins.install", {
                "path": str(path), "approve_hash": "sha256:" + "0" * 64, "approve_capabilities": CAPABILITIES},
                timeout=30)) == "BAD_REQUEST", path
        refusals = await rig.records("plugin.install_refused")
        # Inspect and install each refused with the precise reason, and by whom.
        assert [r["details"]["reason"] for r in refusals] == [reason for _, reason in cases for _ in range(2)]
        assert {r["details"]["source"] for r in refusals} == {"meshctl"}
        listed = await rig.operator.call("plugin-host.plugins.list", {}, timeout=10)
        assert listed["plugins"] == []


async def test_approval_must_cover_the_content_and_every_grant(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        package = rig.package("notes")
        shown = await rig.inspect(package)
        # One grant fewer than requested: refused.
        assert await code_of(rig.install(package, approve=[c["grant"] for c in shown["capabilities"]][1:])) \
            == "BAD_REQUEST"
        # Approved, then the package changes (re-signed by the publisher with another grant): refused.
        changed = rig.package("notes", capabilities=[*CAPABILITIES, "userdata:health:read"])
        assert changed == package
        assert await code_of(rig.install(package, approve=[c["grant"] for c in shown["capabilities"]],
                                         approve_hash=shown["content_hash"])) == "BAD_REQUEST"
        reasons = [r["details"]["reason"] for r in await rig.records("plugin.install_refused")]
        assert reasons.count("not_approved") == 2
        # A quota above [plugins] limits, and a layer this plugin-host does not know: refused too.
        greedy = rig.package("greedy", quotas={"memory_mb": 4096})
        assert "max_memory_mb" in " ".join((await rig.inspect(greedy))["problems"])
        assert await code_of(rig.install(greedy)) == "BAD_REQUEST"


async def test_older_versions_are_refused_even_after_remove(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        await rig.install(rig.package("notes", "1.2.0"))
        assert await code_of(rig.install(rig.package("notes", "1.1.9"))) == "BAD_REQUEST"
        # The same version with other content is refused too.
        assert await code_of(rig.install(rig.package("notes", "1.2.0", capabilities=CAPABILITIES[:1]))) \
            == "BAD_REQUEST"
        upgraded = await rig.install(rig.package("notes", "1.10.0"))
        assert upgraded["version"] == "1.10.0" and upgraded["state"] == "running"
        removed = await rig.operator.call("plugin-host.plugins.remove", {"name": "notes"}, timeout=10)
        assert removed == {"removed": True, "name": "notes", "version": "1.10.0"}
        assert await code_of(rig.install(rig.package("notes", "1.2.0"))) == "BAD_REQUEST"
        reasons = [r["details"]["reason"] for r in await rig.records("plugin.install_refused")]
        assert reasons.count("rollback") == 3
        # Reinstalling the very version removed is allowed (same content).
        again = await rig.install(rig.package("notes", "1.10.0"))
        assert again["state"] == "running"


async def test_own_storage_is_per_plugin_and_ungranted_is_refused_and_audited(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        await rig.install(rig.package("alpha"))
        await rig.install(rig.package("beta"))
        assert (await rig.call("alpha", "remember", {"key": "k", "value": "alpha's"}))["ok"] is True
        assert (await rig.call("alpha", "recall", {"key": "k"}))["value"] == "alpha's"
        # beta has the same grant and names the same key: it reaches only its own data.
        assert (await rig.call("beta", "recall", {"key": "k"}))["value"] is None
        assert (await rig.call("beta", "recall_all", {}))["value"] == []
        denied = await rig.call("alpha", "ungranted", {})
        assert "storage.kv:read:secrets" in denied["value"]["denied"]
        [record] = await rig.records("plugin.denied")
        assert record["target"] == "plugin:alpha" and record["details"]["grant"] == "storage.kv:read:secrets"
        # The plugin stays up: a refused request is not a fault.
        assert (await rig.show("alpha"))["state"] == "running"


async def test_a_persons_data_needs_their_consent_and_revocation_refuses_the_next_call(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        await rig.rig.add_user("gina")
        token = await rig.rig.token("frontend", "gina")
        await rig["frontend"].call("storage.kv.put", {"category": "notes", "token": token, "key": b"n1",
                                                      "value": b"buy milk"}, timeout=10)
        await rig.install(rig.package("notes"))
        # No token, no person's data.
        assert (await rig.call("notes", "read_note", {"key": "n1"}))["ok"] is False
        # A token but no consent: refused (authz's consent-required).
        refused = await rig.call("notes", "read_note", {"key": "n1"}, token=token)
        assert refused["ok"] is False and "consent" in refused["error"]
        grant = await rig["frontend"].call("authz.consent.grant", {
            "access_token": token, "grantee": "plugin:notes", "categories": ["notes"], "actions": ["read"],
            "purpose": "notes", "duration_s": 3600}, timeout=10)
        assert await rig.call("notes", "read_note", {"key": "n1"}, token=token) == {"ok": True, "value": "buy milk"}
        # Granted read, not write: the manifest has no userdata:notes:write grant at all.
        assert (await rig.call("notes", "write_note", {"key": "n2", "value": "x"}, token=token))["ok"] is False
        await rig["frontend"].call("authz.consent.revoke", {"grant_id": grant["id"], "access_token": token},
                                   timeout=10)
        after = await rig.call("notes", "read_note", {"key": "n1"}, token=token)
        assert after["ok"] is False
        denials = await rig.records("plugin.denied")
        assert len(denials) >= 3 and all(r["target"] == "plugin:notes" for r in denials)


async def test_events_reach_granted_plugins(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        await rig.install(rig.package("notes"))
        await rig.install(rig.package("deaf", capabilities=CAPABILITIES[:2]))
        await rig["frontend"].publish("notes.changed", {"id": "n1"})

        async def seen(name: str) -> bool:
            return (await rig.call(name, "recall", {"key": "last-event"}))["value"] == "notes.changed"
        await eventually(lambda: seen("notes"), deadline=20)
        assert (await rig.call("deaf", "recall", {"key": "last-event"}))["value"] is None


async def test_a_plugin_breaking_a_rule_is_killed_audited_alerted_restarted_then_disabled(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp, plugins_config="max_failures = 3\n") as rig:
        await rig.install(rig.package("bad"))
        await rig.install(rig.package("good"))
        for what in ("socket", "exec", "read"):
            await rig.state("bad", "running")
            args = {"what": what, "path": "/etc/passwd"}
            assert await code_of(rig.call("bad", "escape", args)) == "UNAVAILABLE", what
            # The other plugin keeps answering, whatever this one does.
            assert (await rig.call("good", "hello"))["ok"] is True
        shown = await rig.state("bad", "disabled")
        assert "3 failures" in shown["disabled_reason"]
        killed = await rig.records("plugin.killed")
        assert [r["details"]["reason"] for r in killed] == ["seccomp", "seccomp", "sandbox_denied"]
        assert {r["target"] for r in killed} == {"plugin:bad"}
        [disabled] = [r for r in await rig.records("plugin.disabled") if r["target"] == "plugin:bad"]
        assert disabled["outcome"] == "failure"
        alerts = await rig.operator.call("audit.alerts", {}, timeout=10)
        assert any(a["rule"] == "plugin_faults" and a["subject"] == "plugin:bad" for a in alerts["alerts"])
        assert await code_of(rig.call("bad", "hello")) == "UNAVAILABLE"
        # An operator enables it again: running, its failures forgotten.
        enabled = await rig.operator.call("plugin-host.plugins.enable", {"name": "bad"}, timeout=30)
        assert enabled["state"] == "running" and enabled["failures"] == 0
        assert (await rig.call("bad", "hello"))["ok"] is True


async def test_crash_and_timeout_restart_with_backoff(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        await rig.install(rig.package("flaky", quotas={"call_timeout_s": 1.0}))
        assert await code_of(rig.call("flaky", "escape", {"what": "crash"})) == "UNAVAILABLE"
        await rig.state("flaky", "running")
        assert await code_of(rig.call("flaky", "escape", {"what": "spin"})) == "UNAVAILABLE"
        shown = await rig.state("flaky", "running")
        assert shown["failures"] == 2 and shown["last_exit"]["reason"] == "call_timeout"
        reasons = [r["details"]["reason"] for r in await rig.records("plugin.killed")]
        assert reasons == ["crash", "call_timeout"]
        logs = await rig.operator.call("plugin-host.plugins.logs", {"name": "flaky", "limit": 50}, timeout=10)
        assert any("call_timeout" in line["line"] for line in logs["lines"] if line["stream"] == "host")


async def test_an_installed_package_changed_on_disk_does_not_start(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        installed = await rig.install(rig.package("notes"), enable=False)
        assert installed["state"] == "disabled"
        directory = Path(rig.host.db().plugin("notes").directory)  # type: ignore[union-attr]
        target = directory / "plugin.py"
        os.chmod(directory, 0o700)
        os.chmod(target, 0o600)
        target.write_text(target.read_text() + "\nimport os\n")
        shown = await rig.operator.call("plugin-host.plugins.enable", {"name": "notes"}, timeout=30)
        assert shown["state"] == "disabled" and "no longer verifies" in shown["disabled_reason"]
        assert await code_of(rig.call("notes", "hello")) == "UNAVAILABLE"
        shutil.rmtree(directory, ignore_errors=True)


async def test_operations_are_for_operators_only(short_tmp: Path) -> None:
    async with plugin_rig(short_tmp) as rig:
        package = rig.package("notes")
        for method, body in (("plugins.inspect", {"path": str(package)}), ("plugins.list", {}),
                             ("plugins.remove", {"name": "notes"})):
            assert await code_of(rig["frontend"].call(f"plugin-host.{method}", body, timeout=10)) == "FORBIDDEN"
        # A relative path, a path that is not there: refused with what to do.
        assert await code_of(rig.inspect(Path("relative/pkg"))) == "BAD_REQUEST"
        assert await code_of(rig.inspect(short_tmp / "missing")) == "BAD_REQUEST"


async def test_the_example_plugin_installs_and_counts_a_note_with_consent(short_tmp: Path) -> None:
    """examples/plugins/note-stats as shipped (its manifest unchanged but for the publisher key id)."""
    example = Path(__file__).parent.parent / "examples" / "plugins" / "note-stats"
    package = short_tmp / "note-stats"
    shutil.copytree(example, package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / plugins.MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('publisher = "acme"', 'publisher = "test"'))
    async with plugin_rig(short_tmp / "rig") as rig:
        plugins.sign_package(package, plugins.load_publisher_key(rig.root / "test.pem"), "test")
        await rig.rig.add_user("gina")
        token = await rig.rig.token("frontend", "gina")
        await rig["frontend"].call("storage.kv.put", {"category": "notes", "token": token, "key": b"n1",
                                                      "value": b"three little words"}, timeout=10)
        await rig.install(package)
        await rig["frontend"].call("authz.consent.grant", {
            "access_token": token, "grantee": "plugin:note-stats", "categories": ["notes"], "actions": ["read"],
            "purpose": "note-stats", "duration_s": 600}, timeout=10)
        assert await rig.call("note-stats", "count", {"note": "n1"}, token=token) == {"ok": True, "value": 3}
        assert await rig.call("note-stats", "last", {}) == {"ok": True, "value": 3}

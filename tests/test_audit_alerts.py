"""Audit anomaly alerts: each rule fires on a synthetic burst and not on normal traffic (injected
clock); alerts are records of their own and events on alerts.<rule>; dedup; ack is audited."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.audit.alert_engine import AlertEngine
from services.audit.chain import Record
from services.audit.service import Audit
from services.keyvault.setup import initialise
from services.supervisor_events.forwarder import audit_record
from shared import AuditConfig, ConfigError, MeshError, parse_config

from .conftest import eventually
from .mesh import InProcessMesh
from .test_audit_service import CONFIG, IDENTITIES, PASSWORD, Rig

RULES = """
[acl.identity.audit]
publish = ["alerts."]
subscribe = ["security."]

[acl.identity.supervisor-events]
publish = ["supervisor."]

[audit.rules.failed_logins_account]
window_s = 60.0
threshold = 3

[audit.rules.crash_loop]
window_s = 60.0
threshold = 3
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def rec(event: str, outcome: str = "ok", seq: int = 0, actor: str = "broker", **fields: Any) -> Record:
    on_behalf_of, target = fields.pop("on_behalf_of", None), fields.pop("target", None)
    return Record(seq=seq, time=1.0, actor=actor, event=event, outcome=outcome, on_behalf_of=on_behalf_of,
                  target=target, details=fields)


# rule -> (a record that counts 1 or `count` toward it, the subject it names, default threshold)
BURSTS: dict[str, tuple[Callable[[], Record], str]] = {
    "failed_logins_account": (lambda: rec("authn.login", "failure", on_behalf_of="alice", source="10.0.0.9"),
                              "alice"),
    "failed_logins_source": (lambda: rec("authn.login", "failure", on_behalf_of="bob", source="10.0.0.9"),
                             "10.0.0.9"),
    "unknown_certs": (lambda: rec("mesh.handshake_failed", "failure", count=1), "mesh"),
    "rate_limited": (lambda: rec("mesh.rate_limited", "limited", identity="flooder", count=1), "flooder"),
    "crash_loop": (lambda: rec("process.crash", "backoff", actor="supervisor-events", process="storage"),
                   "storage"),
    "large_read": (lambda: rec("storage.read", "ok", actor="storage", on_behalf_of="carol", bytes=1 << 20),
                   "carol"),
    # As the broker's shipper delivers it: the denied peer is details.subject.
    "repeated_denies": (lambda: rec("mesh.deny", "denied", actor="broker", subject="outsider",
                                    action="call", target="keyvault.keys.get"), "outsider"),
    "credential_theft": (lambda: rec("authn.refresh_reused", "denied", actor="authn", target="alice",
                                     user_id="u-1"), "alice"),
    # Written by audit from a device's audit.witness_report: the device is actor and target.
    "witness_mismatch": (lambda: rec("audit.witness_mismatch", "failure", actor="phone", target="phone",
                                     problem="shrunk"), "phone"),
    "pairing_failures": (lambda: rec("pairing.attempt", "failure", actor="pairing", window="w1",
                                     source="10.0.0.7", reason="wrong code"), "pairing"),
    # plugin-host stopped a plugin: the plugin is the target.
    "plugin_faults": (lambda: rec("plugin.killed", "failure", actor="plugin-host", target="plugin:weather",
                                  reason="seccomp"), "plugin:weather"),
}


def needed(engine: AlertEngine, rule: str, make: Callable[[], Record]) -> int:
    """How many of ``make()`` records reach the rule's threshold."""
    threshold = engine.rules[rule].threshold
    amount = 1 << 20 if rule == "large_read" else 1
    return -(-threshold // amount)


@pytest.mark.parametrize("rule", sorted(BURSTS))
def test_each_rule_fires_on_a_burst_and_not_on_the_same_traffic_spread_out(rule: str) -> None:
    make, subject = BURSTS[rule]
    clock = Clock()
    engine = AlertEngine(AuditConfig(), clock)
    n = needed(engine, rule, make)
    window = engine.rules[rule].window_s
    # Normal traffic: the same events, spread so no window ever holds a threshold's worth.
    spread = window / max(n - 1, 1) * 1.01 if n > 1 else None
    if spread is not None:
        for seq in range(3 * n):
            assert [a.rule for a in engine.observe([make()]) if a.rule == rule] == [], seq
            clock.now += spread
    # A burst: n within one second.
    fired = [a for seq in range(n) for a in engine.observe([make()]) if a.rule == rule]
    assert [(a.rule, a.subject) for a in fired] == [(rule, subject)]


def test_normal_traffic_raises_nothing() -> None:
    clock = Clock()
    engine = AlertEngine(AuditConfig(), clock)
    normal = [rec("authn.login", "ok", on_behalf_of="alice"), rec("mesh.register", "ok", service="storage"),
              rec("keyvault.keys.get", "ok", actor="keyvault", purpose="sqlcipher"),
              rec("storage.read", "ok", actor="storage", on_behalf_of="alice", bytes=4096),
              rec("process.state", "running", actor="supervisor-events", process="storage"),
              rec("authn.login", "failure", on_behalf_of="alice", source="10.0.0.1")]  # one typo
    for _ in range(200):
        assert engine.observe(normal) == []
        clock.now += 120.0  # a mistyped password every two minutes is not an attack
    assert engine.open_alerts() == []


def test_one_open_alert_per_rule_and_subject_until_ack_or_the_window_passes() -> None:
    clock = Clock()
    engine = AlertEngine(parse_config(RULES).audit, clock)
    login = BURSTS["failed_logins_account"][0]
    fired = engine.observe([login() for _ in range(3)])
    alice = [a for a in fired if a.rule == "failed_logins_account"]
    assert len(alice) == 1 and alice[0].count == 3
    engine.opened(alice[0], 41)
    assert [a.rule for a in engine.observe([login() for _ in range(10)])] == []  # counted, not re-raised
    assert alice[0].count == 13
    other = engine.observe([rec("authn.login", "failure", on_behalf_of="bob") for _ in range(3)])
    assert [(a.rule, a.subject) for a in other if a.rule == "failed_logins_account"] == [
        ("failed_logins_account", "bob")]
    # Acknowledged: gone; it takes a fresh burst to raise it again.
    assert engine.take(41) is alice[0]
    with pytest.raises(MeshError) as missing:
        engine.take(41)
    assert missing.value.code == "NOT_FOUND"
    assert [a for a in engine.observe([login(), login()]) if a.rule == "failed_logins_account"] == []
    again = [a for a in engine.observe([login()]) if a.rule == "failed_logins_account"]
    assert len(again) == 1
    # The window passes with no further match: the open alert closes by itself.
    engine.opened(again[0], 99)
    clock.now += 61
    assert [a.id for a in engine.open_alerts() if a.rule == "failed_logins_account"] == []


def test_audit_config_is_strict() -> None:
    assert parse_config("").audit == AuditConfig()
    assert parse_config("[audit.rules.crash_loop]\nthreshold = 9\n").audit.rules.crash_loop.window_s == 600.0
    for text, key in [("[audit]\nnope = 1\n", "audit.nope"), ("[audit.rules.bogus]\nthreshold = 1\n",
                                                              "audit.rules.bogus"),
                      ("[audit.rules.crash_loop]\nthreshold = 0\n", "audit.rules.crash_loop.threshold"),
                      ("[audit.rules.crash_loop]\nwindow_s = \"1m\"\n", "audit.rules.crash_loop.window_s")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config(text)


def test_supervisor_events_become_process_crash_or_state_audit_records() -> None:
    body = {"process": "storage", "group": "storage", "state": "BACKOFF", "from_state": "STARTING", "serial": 7,
            "time": 5.0, "severity": "alert"}
    crash = audit_record({"type": "process.state", "topic": "supervisor.process.backoff", "body": body})
    assert crash is not None and crash["type"] == "process.crash" and crash["target"] == "storage"
    assert crash["outcome"] == "backoff" and crash["time"] == 5.0 and "severity" not in crash
    running = audit_record({"type": "process.state", "body": {**body, "state": "RUNNING"}})
    assert running is not None and running["type"] == "process.state"
    assert audit_record({"type": "events.lost", "lost": 3}) is None


# -- over a real in-process mesh ------------------------------------------------------------


@asynccontextmanager
async def alert_rig(root: Path, clock: Clock) -> AsyncIterator[Rig]:
    mesh = InProcessMesh(root, CONFIG + RULES, {**IDENTITIES, "supervisor-events": "service"})
    initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    async with mesh:
        r = Rig(mesh)
        await mesh.start_service(r.vault)
        r.producer = await mesh.client("storage")
        r.operator = await mesh.client("meshctl")
        r.audit = Audit(r.home, mesh.config, clock=clock)
        r.runner = await mesh.start_service(r.audit)
        try:
            yield r
        finally:
            await r.stop_audit()
            await r.vault.on_stop()


async def _open(r: Rig) -> list[dict[str, Any]]:
    return list((await r.operator.call("audit.alerts", timeout=5))["alerts"])


async def test_failed_login_burst_raises_an_alert_record_and_event_and_ack_is_audited(short_tmp: Path) -> None:
    clock = Clock()
    async with alert_rig(short_tmp / "h", clock) as r:
        events = await r.operator.subscribe("alerts.", timeout=5)
        # Normal traffic first: successes, and failures spread over more than the window.
        ok = [{"type": "authn.login", "outcome": "ok", "on_behalf_of": "alice"} for _ in range(20)]
        await r.producer.call("audit.append", {"records": ok}, timeout=5)
        for _ in range(4):
            await r.producer.call("audit.append", {"records": [
                {"type": "authn.login", "outcome": "failure", "on_behalf_of": "alice"}]}, timeout=5)
            clock.now += 70  # more than the 60 s window apart
        assert await _open(r) == []
        # The burst.
        fail = {"type": "authn.login", "outcome": "failure", "on_behalf_of": "alice",
                "details": {"source": "10.1.2.3", "password": "hunter2-planted"}}
        reply = await r.producer.call("audit.append", {"records": [fail] * 3}, timeout=5)
        opened = await eventually(lambda: _open(r))
        assert [(a["rule"], a["subject"], a["count"]) for a in opened] == [("failed_logins_account", "alice", 3)]
        alert = opened[0]
        assert alert["first_seq"] == reply["first_seq"] and alert["last_seq"] == reply["last_seq"]
        event = await events.next(timeout=5)
        assert event.topic == "alerts.failed_logins_account" and event.sender == "audit"
        assert event.body["id"] == alert["id"]
        [record] = (await r.operator.call("audit.tail", {"type": "alert.failed_logins_account"}, timeout=5))["records"]
        assert record["seq"] == alert["id"] and record["actor"] == "audit" and record["target"] == "alice"
        assert record["details"]["count"] == 3
        # More of the same while open: counted on it, no second alert.
        await r.producer.call("audit.append", {"records": [fail] * 5}, timeout=5)
        assert [(a["id"], a["count"]) for a in await _open(r)] == [(alert["id"], 8)]
        # Acknowledge: recorded with the operator as actor, and the alert is closed.
        ack = await r.operator.call("audit.alerts.ack", {"id": alert["id"]}, timeout=5)
        assert ack["acknowledged"] is True
        [acked] = (await r.operator.call("audit.tail", {"type": "alert.ack"}, timeout=5))["records"]
        assert acked["seq"] == ack["record"] and acked["actor"] == "meshctl"
        assert acked["target"] == f"alert:{alert['id']}"
        assert await _open(r) == []
        with pytest.raises(MeshError) as again:
            await r.operator.call("audit.alerts.ack", {"id": alert["id"]}, timeout=5)
        assert again.value.code == "NOT_FOUND"
        with pytest.raises(MeshError) as denied:  # producers cannot list or acknowledge alerts
            await r.producer.call("audit.alerts", timeout=5)
        assert denied.value.code == "FORBIDDEN"
        assert (await r.operator.call("audit.verify", timeout=10))["ok"] is True


async def test_appended_process_crash_records_raise_a_crash_loop_alert_only_from_the_listener(
        short_tmp: Path) -> None:
    clock = Clock()
    async with alert_rig(short_tmp / "h", clock) as r:
        supervisor = await r.mesh.client("supervisor-events")
        events = await r.operator.subscribe("alerts.crash_loop", timeout=5)
        # Anyone else appending a process.* record is refused: only the listener speaks for supervisord.
        with pytest.raises(MeshError) as forged:
            await r.producer.call("audit.append", {"records": [
                {"type": "process.crash", "outcome": "fatal", "target": "storage"}]}, timeout=5)
        assert forged.value.code == "FORBIDDEN"
        for state in ("EXITED", "BACKOFF", "FATAL"):
            await supervisor.call("audit.append", {"records": [
                {"type": "process.crash", "outcome": state.lower(), "target": "storage",
                 "details": {"process": "storage", "group": "storage", "state": state}}]}, timeout=5)
        event = await events.next(timeout=5)
        assert event.body["rule"] == "crash_loop" and event.body["subject"] == "storage"

        async def crashes() -> list[Any]:
            reply = await r.operator.call("audit.tail", {"type": "process.crash"}, timeout=5)
            return list(reply["records"])
        got = await eventually(crashes)
        assert len(got) == 3 and {c["actor"] for c in got} == {"supervisor-events"}


async def test_open_alerts_survive_an_audit_restart_until_acked_or_their_window_passes(short_tmp: Path) -> None:
    clock = Clock()
    clock.now = time.time()  # the rebuild measures windows from the records' own times

    async def restart(r: Rig) -> None:
        await r.stop_audit()
        r.audit = Audit(r.home, r.mesh.config, clock=clock)
        r.runner = await r.mesh.start_service(r.audit)

    def fields(alerts: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(a["id"], a["rule"], a["subject"], a["count"], a["threshold"], a["first_seq"], a["last_seq"])
                for a in alerts]

    async with alert_rig(short_tmp / "h", clock) as r:
        for who in ("alice", "bob"):
            await r.producer.call("audit.append", {"records": [
                {"type": "authn.login", "outcome": "failure", "on_behalf_of": who}] * 3}, timeout=5)
            await eventually(lambda: _open(r))
        await eventually(lambda: _has(r, 2))
        bob = next(a for a in await _open(r) if a["subject"] == "bob")
        await r.operator.call("audit.alerts.ack", {"id": bob["id"]}, timeout=5)
        await r.producer.call("audit.append", {"records": [
            {"type": "authn.login", "outcome": "failure", "on_behalf_of": "alice"}] * 2}, timeout=5)
        # A producer cannot forge an acknowledgement (or an alert) into the log.
        alice = next(a for a in await _open(r) if a["subject"] == "alice")
        with pytest.raises(MeshError) as forged:
            await r.producer.call("audit.append", {"records": [
                {"type": "alert.ack", "outcome": "ok", "details": {"alert_id": alice["id"]}}]}, timeout=5)
        assert forged.value.code == "FORBIDDEN"
        before = await _open(r)
        assert fields(before) == fields([alice]) and alice["count"] == 5
        await restart(r)
        await eventually(lambda: _status_ok(r))
        assert fields(await _open(r)) == fields(before)
        await r.producer.call("audit.append", {"records": [  # still deduplicated onto the reopened alert
            {"type": "authn.login", "outcome": "failure", "on_behalf_of": "alice"}]}, timeout=5)
        assert [(a["id"], a["count"]) for a in await _open(r)] == [(alice["id"], 6)]
        clock.now = time.time() + 61  # past the 60 s window since the last matching record
        await restart(r)
        await eventually(lambda: _status_ok(r))
        assert await _open(r) == []


async def _has(r: Rig, count: int) -> bool:
    return len(await _open(r)) >= count


async def _status_ok(r: Rig) -> bool:
    try:
        return bool((await r.operator.call("audit.health", timeout=5))["state"] == "ready")
    except MeshError:
        return False

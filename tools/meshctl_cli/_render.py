"""Readable text for meshctl's results (``--json`` prints the same data as JSON instead)."""

from __future__ import annotations

import datetime
import json
from typing import Any

from shared import Event

from ._output import duration, millis, table


def yes(value: bool | None) -> str:
    return "yes" if value else "no"


def status(s: dict[str, Any]) -> str:
    """The status table: verdict, broker, keyring, one row per process, then problems."""
    broker = s["broker"]
    keyring = s.get("keyring") or {}
    out = [f"mesh in {s['home']}: {'HEALTHY' if s['healthy'] else 'UNHEALTHY'}",
           f"broker: {', '.join(broker['endpoints'])}",
           f"  public key {broker['public_key']}  fingerprint {broker['fingerprint'][:16]}"]
    if keyring:
        usable = "" if keyring.get("usable") else " (no usable platform keyring)"
        out.append(f"keyring: {keyring.get('backend')}{usable}")
    sup = s["supervisor"]
    out.append(f"supervisord: {'pid ' + str(sup['pid']) if sup['running'] else 'not running'}")
    rows = [[r["name"], r["state"], r["pid"], duration(r["uptime_s"]), r.get("restarts"), yes(r["registered"]),
             None if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.1f}s",
             r["msgs_in"], r["msgs_out"], r["errors"], millis(r["p50_ms"]), millis(r["p99_ms"])]
            for r in s["services"]]
    out += ["", table(["PROCESS", "STATE", "PID", "UPTIME", "RESTARTS", "REGISTERED", "HEARTBEAT", "IN", "OUT",
                       "ERRORS", "P50 MS", "P99 MS"], rows)]
    for warning in s.get("warnings", []):
        out.append(f"warning: {warning}")
    if not s["healthy"]:
        out += ["", f"verdict: {s['verdict']}"]
        for r in s["services"]:
            if r.get("log_tail"):
                out.append(f"--- {r['name']}: {r['problem']}; last log lines:")
                out += [f"    {line}" for line in r["log_tail"]]
    return "\n".join(out)


def init(result: dict[str, Any]) -> str:
    if not result["created"]:
        return f"{result['home']}: {result['reason']}"
    rows = [[i["name"], i["role"], i["fingerprint"][:16]] for i in result["identities"]]
    replaced = f" (replaced {result['replaced']} files)" if result["replaced"] else ""
    lines = [f"initialised {result['home']}{replaced}",
             "", table(["IDENTITY", "ROLE", "FINGERPRINT"], rows), "",
             f"operator certificate: {result['operator_certificate']}",
             f"supervisord credentials: {result['supervisord_credentials']} (0600)",
             "next: meshctl up"]
    return "\n".join(lines)


def ping(result: dict[str, Any]) -> str:
    reply = result["reply"] if isinstance(result["reply"], dict) else {}
    extra = ""
    if "pid" in reply:
        extra = f" (pid {reply['pid']}, up {duration(reply.get('uptime_s'))})"
    word = "pong" if result["target"] == "mesh.ping" else reply.get("status", "answered")
    return f"{result['service']}: {word} in {result['rtt_ms']:.2f} ms{extra}"


def certs(action: str, result: Any) -> str:
    if action in ("list", "pending"):
        if not result:
            return "no certificates" if action == "list" else "no pending keys"
        rows = [[e["state"], e.get("name"), e.get("role"), e["fingerprint"][:16], e["public_key"],
                 e.get("attempts"), e.get("address")] for e in result]
        return table(["STATE", "NAME", "ROLE", "FINGERPRINT", "PUBLIC KEY", "ATTEMPTS", "ADDRESS"], rows)
    if action == "show":
        return "\n".join(f"{k}: {v}" for k, v in result.items())
    if action == "reload":
        lines = [f"certificates reloaded: {result['allowed']} allowed"]
        lines += [f"problem: {p['file']}: {p['problem']}" for p in result["problems"]]
        return "\n".join(lines)
    verb = {"accept": "accepted", "reject": "rejected", "revoke": "revoked"}[action]
    who = f"{result['name']} " if result.get("name") else ""
    return f"{verb} {who}(fingerprint {result['fingerprint'][:16]})"


def event(e: Event) -> str:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    return f"{stamp} {e.topic} from {e.sender}: {json.dumps(e.body, sort_keys=True, default=str)}"


def event_json(e: Event) -> str:
    return json.dumps({"received": datetime.datetime.now(datetime.UTC).isoformat(), "topic": e.topic,
                       "sender": e.sender, "body": e.body}, sort_keys=True, default=str)

"""Readable text for meshctl's results (``--json`` prints the same data as JSON instead)."""

from __future__ import annotations

import datetime
import json
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # only for the annotations: an offline table must not load the mesh client
    from shared import Event

from ._output import duration, millis, paint, table


def qr_code(text: str) -> str:
    """``text`` as a QR code for a terminal (segno, imported only when one is shown): the TOTP
    enrolment URI, the pairing offer."""
    import io

    import segno

    out = io.StringIO()
    segno.make(text, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def yes(value: bool | None) -> str:
    return "yes" if value else "no"


def dash(value: Any) -> str:
    """A value for a line of text: ``-`` when there is none (never ``None``)."""
    return "-" if value is None else str(value)


_NO_KEYRING: Final = "no usable platform keyring backend on this machine"


def status_warnings(s: dict[str, Any]) -> list[str]:
    """The status's warnings, each once: keyvault's (where the master key is kept, test profiles,
    sealed) and the mesh's. Without a platform keyring keyvault says where the key went instead,
    which says it better: the bare "no usable platform keyring" is then left out."""
    vault = s.get("keyvault") or {}
    warnings = list(dict.fromkeys([*(vault.get("warnings") or []), *s.get("warnings", [])]))
    if vault.get("keystore_warning"):
        warnings = [w for w in warnings if w != _NO_KEYRING]
    return warnings


def status(s: dict[str, Any], *, with_warnings: bool = False) -> str:
    """The status table: verdict, broker, keyring, one row per process, then problems. The warnings
    (:func:`status_warnings`) go to stderr, unless ``with_warnings`` (a ``--watch`` frame) asks for
    them here."""
    broker = s["broker"]
    keyring = s.get("keyring") or {}
    out = [f"mesh in {s['home']}: {paint(s['state'].upper())}",
           f"broker: {', '.join(broker['endpoints'])}",
           f"  public key {broker['public_key']}  fingerprint {broker['fingerprint'][:16]}"]
    # When keyvault answered, its own line says where the master key is; the keyring line is for
    # when it could not (what keyvault will find on this machine) or need not (keystore = file).
    if keyring.get("source") == "probe":
        out.append(f"keyring: {keyring.get('backend') or 'none usable'}")
    elif keyring.get("source") == "configuration":
        out.append('keyring: not used (keyvault.keystore = "file")')
    vault = s.get("keyvault")
    out.append(keyvault_line(vault))
    if vault and vault.get("protection"):
        out.append(f"  master key: {vault['protection']}")
    store = s.get("storage")
    if store and "versions" in store:
        rotation = {p: r for p, r in (store.get("rotation") or {}).items() if r["state"] != "done"}
        line = f"storage: {store['state']}, key versions " + ", ".join(
            f"{p} v{v}" for p, v in sorted(store["versions"].items()))
        out.append(line + "".join(f"; re-encrypting {p} {r['done']}/{r['total']}" for p, r in sorted(rotation.items())))
    audit = s.get("audit")
    if audit:
        line = f"audit: log {audit['log']}, {audit['size'] if audit['size'] is not None else '?'} records, " \
               f"checkpoint at {audit['checkpoint_size']}"
        out.append(line + (f"; {audit['reason']}" if audit.get("reason") else ""))
    sup = s["supervisor"]
    out.append(f"supervisord: {'pid ' + dash(sup['pid']) if sup['running'] else 'not running'}")
    rows = [[r["name"], r["state"], r["ready"]["state"], r["pid"], duration(r["uptime_s"]), r.get("restarts"),
             yes(r["registered"]), None if r["heartbeat_age_s"] is None else f"{r['heartbeat_age_s']:.1f}s",
             r["msgs_in"], r["msgs_out"], r["errors"], millis(r["p50_ms"]), millis(r["p99_ms"])]
            for r in s["services"]]
    out += ["", table(["PROCESS", "STATE", "READY", "PID", "UPTIME", "RESTARTS", "REGISTERED", "HEARTBEAT", "IN",
                       "OUT", "ERRORS", "P50 MS", "P99 MS"], rows, states=(1, 2))]
    devices = s.get("devices") or []
    out += ["", "devices connected: " + (", ".join(f"{d['name']} ({d['mode']}, {d['address']})" for d in devices)
                                         if devices else "none")]
    if with_warnings:
        out += [f"warning: {w}" for w in status_warnings(s)]
    if not s["healthy"]:
        out += ["", f"verdict: {s['verdict']}"]
        for r in s["services"]:
            if r.get("log_tail"):
                out.append(f"--- {r['name']}: {r['problem']}; last log lines:")
                out += [f"    {line}" for line in r["log_tail"]]
    return "\n".join(out)


def init(result: dict[str, Any]) -> str:
    if not result["created"]:
        added = result.get("added_identities")
        return f"{result['home']}: {result['reason']}" + (
            f"; created and admitted the keys of newly declared {', '.join(added)}" if added else "")
    vault = result["keyvault"]
    lines = []
    if result.get("keyvault_only"):
        lines += [f"{result['home']}: keys kept; the keyvault now has its master key"]
    else:
        rows = [[i["name"], i["role"], i["fingerprint"][:16]] for i in result["identities"]]
        replaced = f" (replaced {result['replaced']} files)" if result["replaced"] else ""
        lines += [f"initialised {result['home']}{replaced}",
                  "", table(["IDENTITY", "ROLE", "FINGERPRINT"], rows), "",
                  f"operator certificate: {result['operator_certificate']}",
                  f"supervisord credentials: {result['supervisord_credentials']} (0600)"]
    lines.append(f"master key: {vault['keystore']}, derived in {vault['derive_s']:.1f} s")
    if result.get("recovery_passphrase"):
        lines += ["", "No terminal and no --password-file: the master password is this recovery passphrase:",
                  "", f"    {result['recovery_passphrase']}", "",
                  "This is the only time it is shown. Without it, a sealed mesh cannot be unlocked.",
                  "Store it safely now (a password manager, or on paper in a safe place).",
                  "`meshctl security passwd` replaces it with a password of your choice."]
    lines += ["", "next: meshctl up"]
    return "\n".join(lines)


def init_warnings(result: dict[str, Any]) -> list[str]:
    """What ``init`` warns about on stderr: where the master key is kept, test Argon2 profiles."""
    vault = result.get("keyvault") or {}
    warnings = [str(vault["keystore_warning"])] if vault.get("keystore_warning") else []
    if vault.get("test_profiles"):
        warnings.append("TEST ARGON2 PROFILES IN USE ([argon2] test_profiles = true): never for real data")
    return warnings


def keyvault_line(vault: dict[str, Any] | None) -> str:
    """One line: sealed or not, and where the master key is kept (its warnings follow it)."""
    if not vault or not vault.get("reachable"):
        return "keyvault: state unknown (" + ((vault or {}).get("error") or "not reachable") + ")"
    if not vault["initialised"]:
        return "keyvault: not initialised"
    if vault["sealed"]:
        return f"keyvault: {paint('SEALED')}"
    return f"keyvault: unsealed, master key in {vault['keystore']}"


def security(action: str, r: dict[str, Any]) -> str:
    """The text of ``meshctl security ACTION``."""
    if action == "lock":
        return "the mesh is SEALED: keys wiped from memory and the keystore; `meshctl security unlock` unseals it"
    if action == "unlock":
        return "the mesh is unsealed"
    if action == "login":
        return (f"session open: it ends after {duration(r['idle_s'])} without use (each use extends it), "
                f"or with `meshctl security clear`; token in {r['session_file']} (0600)")
    if action == "session":
        if not r["active"]:
            return f"no active session ({r['reason']}): `meshctl security login` opens one"
        return f"session active: {duration(r['remaining_s'])} left without use"
    if action == "clear":
        if not r["cleared"]:
            return "no session to end"
        return "session ended" if r["was_active"] else "session file removed (keyvault had already ended it)"
    return "master password changed: the old one no longer unlocks the mesh; data keys are unchanged"


def keys(action: str, result: Any) -> str:
    """The text of ``meshctl keys ACTION``."""
    if action == "rotate":
        return (f"{result['purpose']}: now version {result['version']} (new writes use it; "
                "older versions stay readable)")
    rows = [[k["purpose"], k["version"], "yes" if k["current"] else "", duration(k["age_s"]),
             ", ".join(k["fetched_by"]) or None] for k in result]
    return table(["PURPOSE", "VERSION", "CURRENT", "AGE", "FETCHED BY"], rows)


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
    verb = {"accept": "accepted", "reject": "rejected", "revoke": "revoked", "unrevoke": "unrevoked"}[action]
    who = f"{result['name']} " if result.get("name") else ""
    return f"{verb} {who}(fingerprint {result['fingerprint'][:16]})"


def event(e: Event) -> str:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    return f"{stamp} {e.topic} from {e.sender}: {json.dumps(e.body, sort_keys=True, default=str)}"


def event_json(e: Event) -> str:
    return json.dumps({"received": datetime.datetime.now(datetime.UTC).isoformat(), "topic": e.topic,
                       "sender": e.sender, "body": e.body}, sort_keys=True, default=str)


def config_reload(r: dict[str, Any]) -> str:
    """``meshctl config reload``: what the broker applied, and what needs a restart."""
    out = [f"broker applied the configuration {str(r.get('sha256', ''))[:16]}" + (
        " (unchanged)" if r.get('sha256') == r.get('previous_sha256') else "")]
    if r.get("restart_needed"):
        out.append(f"  takes effect only at `meshctl restart broker`: {', '.join(r['restart_needed'])}")
    return "\n".join(out)


def service_list(listing: dict[str, Any]) -> str:
    """``meshctl service list``: one row per declaration."""
    rows = [[s["name"], s["entry"] or "-", s["process"], s["priority"], s["state"] or "-",
             ", ".join(f"{k}: {'/'.join(v)}" for k, v in s["expose"].items()) or "-",
             ("added: " if s["added"] else "") + s["declared_in"]] for s in listing["services"]]
    return table(["SERVICE", "ENTRY", "PROCESS", "PRIORITY", "STATE", "EXPOSES", "DECLARED IN"], rows)


def service_added(row: dict[str, Any]) -> str:
    """``meshctl service add``: where its declaration is, its key, and whether it is ready."""
    ready = row.get("ready") or {}
    return "\n".join([f"{row['name']}: declared in {row['declaration']}",
                      f"  key fingerprint {row['fingerprint'][:16]}, admitted",
                      f"  {row.get('state', '?')}, pid {dash(row.get('pid'))}, ready: {ready.get('state', 'no')}"])


def service_removed(r: dict[str, Any]) -> str:
    """``meshctl service remove``: what went, and what stays."""
    out = [f"{r['name']}: stopped, {'revoked' if r['revoked'] else 'key was not admitted'}, removed:"]
    out += [f"  {path}" for path in r["removed"]]
    out.append(f"kept: {r['kept']}")
    return "\n".join(out)

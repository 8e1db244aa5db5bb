"""``meshctl status``: supervisord's view and the broker's view of the mesh, joined per process.

A process is ready when supervisord has it RUNNING, it is registered with the
broker (for the broker itself: it answers ``mesh.stats`` with its ZAP handler
alive) and its ``<name>.health`` reports the state ``ready``. The mesh's verdict
(healthy, sealed, degraded, unhealthy) and exit code are :mod:`._verdict`'s; what
the broker and the processes answer is gathered by :mod:`._mesh_view`, with or
without an event loop.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Final

from shared import MeshError, MeshHome, certs, mesh_config

from ._mesh_view import MeshView, fetch_once
from ._output import CliError
from ._supervisor import NotRunning, Supervisor, load_credentials
from ._verdict import HEALTHY, describe, judge, readiness

if TYPE_CHECKING:
    from shared import Certificate, MeshConfig

    from ._mesh_view import MeshProbe

_LOG_TAIL_LINES: Final = 12
_LOG_TAIL_BYTES: Final = 8192
_SPAWNED = re.compile(r"spawned: '([^']+)' with pid")


def keyring_backend() -> dict[str, Any]:
    """The keyring backend ``keyring`` picked on this machine (keyvault will keep its key there)."""
    try:
        import keyring
        backend = keyring.get_keyring()
    except Exception as exc:  # noqa: BLE001 - a broken keyring setup must not break status: report it.
        return {"backend": None, "usable": False, "error": type(exc).__name__}
    cls = type(backend)
    priority = getattr(cls, "priority", 0)
    return {"backend": f"{cls.__module__}.{cls.__name__}", "name": str(getattr(backend, "name", cls.__name__)),
            "usable": not cls.__module__.endswith(".fail") and float(priority) > 0}


def keyring_view(keystore: str, vault: dict[str, Any] | None) -> dict[str, Any]:
    """Where keyvault keeps its key at rest, as ``status`` shows it.

    keyvault's own answer when it is up (it chose the keystore; its warning says why when it fell
    back to a file). Otherwise, for ``keystore`` ``auto`` or ``keyring``, the backend ``keyring``
    picks on this machine, which is where keyvault will look. Probing costs about as much as the
    rest of ``status`` (every backend is imported and asked), so it is done only then; with
    ``keystore = "file"`` no keyring is ever used and ``usable`` is None: nothing to warn about.
    """
    if vault is not None and vault.get("reachable") and vault.get("keystore"):
        name = str(vault["keystore"])
        return {"backend": name, "usable": name.startswith("keyring"), "source": "keyvault"}
    if keystore == "file":
        return {"backend": None, "usable": None, "source": "configuration",
                "note": 'keyvault.keystore = "file": the platform keyring is not used'}
    return {**keyring_backend(), "source": "probe"}


def restart_counts(supervisor: Supervisor) -> dict[str, int]:
    """Restarts per process since supervisord started, from its log (spawns minus the first)."""
    try:
        text = supervisor.call("readLog", -(1 << 20), 0)
    except CliError:
        return {}
    marker = text.rfind("supervisord started with pid")
    spawns: dict[str, int] = {}
    for name in _SPAWNED.findall(text[max(marker, 0):]):
        spawns[name] = spawns.get(name, 0) + 1
    return {name: max(0, count - 1) for name, count in spawns.items()}


def log_tail(supervisor: Supervisor, full_name: str) -> list[str]:
    """The last lines a process wrote (stdout, where stderr is redirected; else stderr)."""
    for method in ("tailProcessStdoutLog", "tailProcessStderrLog"):
        try:
            text, _, _ = supervisor.call(method, full_name, 0, _LOG_TAIL_BYTES)
        except CliError:
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-_LOG_TAIL_LINES:]
    return []


def keyvault_view(reply: Any, registered: dict[str, Any], test_profiles: bool) -> dict[str, Any]:
    """``keyvault.status`` (its ``reply``, or the MeshError that ended the call) and the warnings it
    calls for. Sealed is a warning, not a problem: the processes are fine, the data is waiting for
    ``meshctl security unlock``."""
    vault: dict[str, Any] = {"reachable": False, "initialised": None, "sealed": None, "keystore": None,
                             "keystore_warning": None, "protection": None, "test_profiles": test_profiles,
                             "error": None}
    if "keyvault" not in registered:
        vault["error"] = "keyvault is not registered"
    elif isinstance(reply, MeshError):
        vault["error"] = f"keyvault.status: {reply.code}"
    else:
        vault.update({k: reply.get(k) for k in ("initialised", "sealed", "keystore", "keystore_warning",
                                                "protection")},
                     reachable=True, test_profiles=bool(reply.get("test_profiles")) or test_profiles)
    warnings = []
    if vault["keystore_warning"]:
        warnings.append(str(vault["keystore_warning"]))
    if vault["test_profiles"]:
        warnings.append("TEST ARGON2 PROFILES IN USE ([argon2] test_profiles = true): never for real data")
    if vault["initialised"] is False:
        warnings.append("keyvault is not initialised: `meshctl down`, then `meshctl init`")
    elif vault["sealed"]:
        warnings.append("SEALED: run meshctl security unlock")
    vault["warnings"] = warnings
    return vault


def storage_view(reply: Any, registered: dict[str, Any]) -> dict[str, Any] | None:
    """``storage.status`` (key versions, rotation progress, newest backup) and its warnings, from its
    ``reply`` or the MeshError that ended the call."""
    if "storage" not in registered:
        return None
    if isinstance(reply, MeshError):
        return {"error": f"storage.status: {reply.code}", "warnings": []}
    view: dict[str, Any] = reply
    warnings = []
    if view.get("state") == "failed":
        warnings.append(f"storage cannot serve: {view.get('problem')}")
    if view.get("restoring"):
        warnings.append(f"a restore of {view['restoring']} did not finish: run the same restore again")
    for purpose, r in sorted((view.get("rotation") or {}).items()):
        if r["state"] != "done":
            warnings.append(f"storage re-encrypting {purpose} to v{r['to_version']}: {r['state']} "
                            f"{r['done']}/{r['total']}")
    view["warnings"] = warnings
    return view


def audit_view(health: Any) -> dict[str, Any] | None:
    """The audit log's own state from ``audit.health``: ``log`` (ok, sealed, tampered, failed), the
    number of records, the latest checkpoint, and the reason when it is not ok."""
    if not isinstance(health, dict) or "log" not in health:
        return None
    return {"log": health["log"], "size": health.get("size"), "checkpoint_size": health.get("checkpoint_size"),
            "reason": health.get("reason") if health["log"] != "ok" or health.get("state") != "ready" else None}


def _row(name: str, proc: dict[str, Any] | None, stats: dict[str, Any] | None,
         registered: dict[str, Any], health: dict[str, Any]) -> dict[str, Any]:
    state = proc["statename"] if proc else "NOT RUNNING"
    running = state == "RUNNING"
    row: dict[str, Any] = {
        "name": name, "group": proc["group"] if proc else None, "state": state,
        "pid": (proc["pid"] or None) if proc else None,
        "uptime_s": (proc["now"] - proc["start"]) if proc and running else None,
        "description": proc["description"] if proc else None,
        "registered": False, "heartbeat_age_s": None, "msgs_in": None, "msgs_out": None, "errors": None,
        "requests": None, "p50_ms": None, "p99_ms": None, "health": None,
    }
    identities = (stats or {}).get("identities", {})
    supervisor_state = state + (f" ({row['description']})" if row["description"] and not running else "")
    if name == "broker":
        row["registered"] = stats is not None and bool(stats.get("zap_alive"))
        if stats is not None:
            row["msgs_in"] = sum(c["msgs_in"] for c in identities.values())
            row["msgs_out"] = sum(c["msgs_out"] for c in identities.values())
            row["errors"] = sum(c["errors"] for c in identities.values())
        # The broker answers for itself through mesh.stats: ready when its ZAP handler runs. Not
        # answering yet is "down" (it may be starting); a dead ZAP handler is its own failure.
        if stats is None:
            row["ready"] = readiness(name, supervisor_state, False, None) if not running else {
                "state": "down", "reason": "not reachable", "dependency": None}
        else:
            broker_health = {"state": "ready"} if row["registered"] else {"state": "failed",
                                                                          "reason": "ZAP handler is down"}
            row["ready"] = readiness(name, supervisor_state, True, broker_health)
    else:
        reg = registered.get(name)
        counters = identities.get(name, {})
        row.update(registered=reg is not None, msgs_in=counters.get("msgs_in"), msgs_out=counters.get("msgs_out"))
        if reg is not None:
            row.update(heartbeat_age_s=reg["heartbeat_age_s"], errors=reg["errors"], requests=reg["requests"],
                       p50_ms=reg["p50_ms"], p99_ms=reg["p99_ms"])
        row["health"] = health.get(name)
        row["ready"] = readiness(name, supervisor_state, reg is not None, row["health"])
    row["healthy"] = row["ready"]["state"] == "ready"
    row["problem"] = None if row["healthy"] else describe(row["ready"])
    return row


def _local(home: MeshHome, supervisor: Supervisor) -> tuple[MeshConfig, Certificate, dict[str, Any], str | None]:
    """What a status knows without the broker: the configuration, the broker's certificate, and
    supervisord's processes by name (none, with the reason, when supervisord is not running)."""
    try:
        config = mesh_config(home.root)
        broker_cert = certs.load_certificate(home.public_key_path("broker"))
    except MeshError as exc:
        raise CliError(exc.message) from None
    try:
        return config, broker_cert, {p["name"]: p for p in supervisor.processes()}, None
    except NotRunning as exc:
        return config, broker_cert, {}, exc.message


def collect_once(home: MeshHome, supervisor: Supervisor, *, details: bool = True) -> dict[str, Any]:
    """The status of the mesh in ``home`` as one JSON-ready dict (``meshctl status --json``), asked
    over one fresh connection without an event loop. ``details``: see :func:`_report`."""
    local = _local(home, supervisor)
    return _report(home, supervisor, *local, fetch_once(home, details), details)


async def collect(home: MeshHome, supervisor: Supervisor, probe: MeshProbe, *, details: bool = True) -> dict[str, Any]:
    """The same as :func:`collect_once`, over ``probe``'s kept connection: for the loops that poll
    the status (``status --watch``, ``up``, ``restart``)."""
    local = _local(home, supervisor)
    return _report(home, supervisor, *local, await probe.view(details), details)


def _report(home: MeshHome, supervisor: Supervisor, config: MeshConfig, broker_cert: Certificate,
            procs: dict[str, Any], supervisor_problem: str | None, view: MeshView, details: bool) -> dict[str, Any]:
    """The status from what supervisord and the mesh answered. ``details`` adds restart counts, the
    keyring backend, keyvault's state (``keyvault``: sealed or not, its keystore and warnings) and
    the log tails of unhealthy processes; the polling loops of ``up`` and ``restart`` leave them
    out until the end."""
    stats, registered, health, mesh_problem = view.stats, view.registered, view.health, view.problem
    declared = config.processes()  # every declared process, in start order, running or not
    names = [*declared, *sorted(set(procs) - set(declared))]
    rows = [_row(name, procs.get(name), stats, registered, health) for name in names]
    restarts = restart_counts(supervisor) if details and procs else {}
    for row in rows:
        row["restarts"] = restarts.get(row["name"]) if details and procs else None
        if details and not row["healthy"] and row["group"]:
            row["log_tail"] = log_tail(supervisor, f"{row['group']}:{row['name']}")
    if supervisor_problem:
        # Nothing runs under supervision: one reason, not one per process.
        outage, rows_judged = [f"the mesh is down ({supervisor_problem}); `meshctl up` starts it"], []
    elif mesh_problem:
        # Without the broker no one is registered: name that, and what supervisord sees.
        outage, rows_judged = [mesh_problem], [r for r in rows if r["state"] != "RUNNING"]
    else:
        outage, rows_judged = [], rows
    verdict = judge(rows_judged, outage)
    warnings = []
    if stats is not None:
        warnings += [f"certificate store: {p['file']}: {p['problem']}" for p in stats["certificate_problems"]]
        if stats["pending_certificates"]:
            warnings.append(f"{stats['pending_certificates']} unknown key(s) tried to connect: meshctl certs pending")
    vault = keyvault_view(view.vault, registered, config.argon2.test_profiles) if details else None
    storage = storage_view(view.storage, registered) if details else None
    if storage is not None:
        warnings += storage["warnings"]
    if vault is not None:
        warnings += vault["warnings"]
    keyring = keyring_view(config.keyvault.keystore, vault) if details else None
    if keyring is not None and keyring["usable"] is False:
        warnings.append("no usable platform keyring backend on this machine")
    return {
        "healthy": verdict["state"] == HEALTHY, "state": verdict["state"], "exit_code": verdict["exit_code"],
        "verdict": verdict["verdict"], "home": str(home.root), "time": time.time(),
        "supervisor": {"running": supervisor_problem is None, "pid": supervisor.pid() if procs else None,
                       "socket": str(supervisor.socket)},
        "broker": {"endpoints": (stats or {}).get("endpoints") or [home.broker_endpoint, *config.broker.tcp_endpoints],
                   "public_key": broker_cert.public_key.decode(), "fingerprint": broker_cert.fingerprint,
                   "reachable": stats is not None, "uptime_s": (stats or {}).get("uptime_s"),
                   "connections": (stats or {}).get("connections"),
                   "handshake_failures": (stats or {}).get("handshake_failures"),
                   "pending_certificates": (stats or {}).get("pending_certificates")},
        "keyring": keyring, "keyvault": vault, "storage": storage, "audit": audit_view(health.get("audit")),
        "services": rows, "problems": verdict["problems"], "warnings": warnings,
        "devices": (stats or {}).get("devices") or [],
    }


def watch_status(home: MeshHome, interval: float, as_json: bool) -> int:
    """``meshctl status --watch``: the status every ``interval`` seconds over one kept connection
    (libzmq reconnects it across a broker restart); exit 0 on Ctrl-C whatever the verdict."""
    from . import _render
    from ._mesh_view import MeshProbe
    from ._watch import watch

    supervisor = Supervisor(home, load_credentials(home))  # not initialised: refused before watching
    probe = MeshProbe(home)

    async def fetch() -> tuple[dict[str, Any], str]:
        report = await collect(home, supervisor, probe)
        return report, _render.status(report, with_warnings=True)

    return watch(fetch, interval, as_json, f"meshctl status of {home.root}", close=probe.close)

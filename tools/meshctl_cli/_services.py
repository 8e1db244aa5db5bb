"""``meshctl service add / remove / list``: a companion's own service joins the mesh in one command.

``add NAME --entry ENTRY`` checks the declaration against the whole configuration first (nothing is
written for a declaration the mesh would refuse), then creates the service's keypair (0600,
``O_EXCL``) and admits it, writes its declaration as ``<home>/mesh.d/service-NAME.toml``, has the
broker reload its configuration (the ACL the declaration implies is in force at once), records
``service.added`` in the audit log, adds the supervisord program and waits until the service is
ready. A failure before the program starts undoes every step.

``remove NAME`` takes back only what ``add`` made: it stops and drops the program, revokes the key
through the broker (the connection is cut; the revocation stays as the record that this key is never
let in again), deletes the declaration, reloads the broker's configuration, deletes the keypair and
the logs, and records ``service.removed``.

Both change who may do what, so both need the running mesh with a ready audit service: the change
is audited or it does not happen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Final

import tomli_w

from shared import (
    ConfigError,
    Conflict,
    MeshClient,
    MeshConfig,
    MeshError,
    MeshHome,
    NotFound,
    build_config,
    config_layers,
    merge_config,
)
from shared.certs import check_name
from shared.files import write_exclusive
from shared.provision import add_identity, remove_identity

from ._lifecycle import wait_for
from ._mesh import OPERATOR, connected, home_config
from ._output import CliError
from ._programs import apply_programs
from ._supervisor import Supervisor, load_credentials

FRAGMENT_PREFIX: Final = "service-"
_RPC_S: Final = 10.0


def fragment_path(home: MeshHome, name: str) -> Path:
    """Where ``meshctl service add`` keeps the declaration of service ``name``."""
    return home.root / "mesh.d" / f"{FRAGMENT_PREFIX}{name}.toml"


def parse_expose(values: list[str]) -> dict[str, list[str]]:
    """``--expose PATTERN=WHO[,WHO...]`` options as an ``expose`` table (checked again by the config)."""
    table: dict[str, list[str]] = {}
    for value in values:
        pattern, equals, callers = value.partition("=")
        who = [c.strip() for c in callers.split(",") if c.strip()]
        if not equals or not pattern.strip() or not who:
            raise CliError(f"--expose {value!r}: expected METHOD=WHO[,WHO...] (e.g. 'get=service,reminders', "
                           "'*=operator')", status=2)
        table.setdefault(pattern.strip(), []).extend(who)
    return table


def declaration(entry: str, *, expose: dict[str, list[str]], publish: list[str], subscribe: list[str],
                keys: list[str], priority: int | None) -> dict[str, Any]:
    """The ``[services.NAME]`` table for these options. Without ``--expose`` an operator may call
    every method (so ``meshctl call`` reaches it) and nobody else may call any."""
    table: dict[str, Any] = {"entry": entry}
    if priority is not None:
        table["priority"] = priority
    for key, value in (("publish", publish), ("subscribe", subscribe), ("keys", keys)):
        if value:
            table[key] = value
    table["expose"] = expose or {"*": ["operator"]}
    return table


def _check_new(home: MeshHome, name: str, table: dict[str, Any]) -> MeshConfig:
    """The configuration the mesh would run with once ``name`` is declared; refuse a name taken or
    a declaration the configuration refuses (its message names the key)."""
    try:
        check_name(name)
    except MeshError:
        raise CliError(f"{name!r} is not a service name: a-z, 0-9, '-' and '_', starting with a letter",
                       status=2) from None
    source, colon, _ = table["entry"].partition(":")
    if not colon:
        # A bare module runs its own __main__ under whatever name it chooses; through the runner the
        # class must carry the name it is declared as (--as), so an added service cannot borrow a keypair.
        raise CliError(f"--entry {table['entry']!r}: name the class (package.module:Class or "
                       "/absolute/path/file.py:Class), so the runner can check it is declared as "
                       f"{name!r}", status=2)
    try:
        layers = config_layers(home.root)
        data: dict[str, Any] = {}
        for part in layers.tables:
            data = merge_config(data, part)
        if name in data.get("services", {}) or name == OPERATOR:
            raise CliError(f"{name!r} is already an identity of this mesh (meshctl service list); choose another name")
        if home.secret_key_path(name).exists() or home.public_key_path(name).exists():
            raise CliError(f"a keypair for {name!r} already exists in {home.keys} without a declaration; "
                           "choose another name, or delete that keypair if nothing uses it")
        config = build_config(merge_config(data, {"services": {name: table}}), str(fragment_path(home, name)))
    except ConfigError as exc:
        raise CliError(exc.message) from None
    if source.startswith("/") and not Path(source).is_file():
        raise CliError(f"--entry: no file at {source}")
    return config


def _running_supervisor(home: MeshHome) -> Supervisor:
    supervisor = Supervisor(home, load_credentials(home))
    if not supervisor.running():
        raise CliError(f"the mesh in {home.root} is not running: `meshctl up` first (adding or removing a "
                       "service changes who may do what, so it is audited and applied live)")
    return supervisor


async def _require_audit(client: MeshClient) -> None:
    """Refuse to change the mesh while the audit service cannot record it (fail closed)."""
    try:
        health = await client.call("audit.health", timeout=_RPC_S)
    except MeshError as exc:
        raise CliError(f"the audit service cannot record this change ({exc.code}: {exc.message}); "
                       "`meshctl status` says why") from None
    if health.get("state") != "ready":
        raise CliError(f"the audit service is {health.get('state')} ({health.get('reason')}): this change "
                       "must be audited; `meshctl status` says what to do")


async def _audit(client: MeshClient, event: str, name: str, details: dict[str, Any]) -> None:
    await client.call("audit.append", {"records": [{"type": event, "outcome": "ok", "target": name,
                                                    "details": details}]}, timeout=_RPC_S)


async def add(home: MeshHome, name: str, table: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """``meshctl service add``: see the module documentation. Returns the new service's status row."""
    _check_new(home, name, table)
    supervisor = _running_supervisor(home)
    path = fragment_path(home, name)
    async with connected(home) as client:
        await _require_audit(client)
        pair = add_identity(home, name, "service")
        written = False
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            write_exclusive(path, tomli_w.dumps({"services": {name: table}}).encode(), 0o600)
            written = True
            config = home_config(home)  # exactly what every process will read
            await client.call("mesh.certs.reload", timeout=_RPC_S)  # admitted now, not at the next poll
            await client.call("mesh.config.reload", timeout=_RPC_S)
            await _audit(client, "service.added", name, {"entry": table["entry"], "declaration": str(path),
                                                         "fingerprint": pair.certificate.fingerprint})
        except BaseException:
            # Undo in reverse: the declaration, the ACL it brought, the key. Nothing half added stays.
            if written:
                path.unlink(missing_ok=True)
                with contextlib.suppress(MeshError, CliError):
                    await client.call("mesh.config.reload", timeout=_RPC_S)
            remove_identity(home, name)
            raise
    apply_programs(supervisor, home, config)
    status = await wait_for(home, supervisor, lambda s: _row(s, name)["healthy"], timeout, f"starting {name}")
    row = _row(status, name)
    row.update(declaration=str(path), fingerprint=pair.certificate.fingerprint, mesh_state=status["state"])
    return row


def _row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next((r for r in status["services"] if r["name"] == name), {"name": name, "healthy": False})


def removable(home: MeshHome, name: str) -> MeshConfig:
    """The configuration, if ``name`` is a service ``meshctl service add`` added; else why not.
    Reads files only, so meshctl can refuse before it asks the operator or touches the mesh."""
    config = home_config(home)
    if name not in config.services:
        raise CliError(f"no service named {name!r} is declared (meshctl service list)")
    if not fragment_path(home, name).exists():
        raise CliError(f"{name!r} is declared in {declared_in(home, name)}, not added by `meshctl service add`: "
                       f"remove its [services.{name}] table there (then meshctl up)")
    return config


async def remove(home: MeshHome, name: str) -> dict[str, Any]:
    """``meshctl service remove``: see the module documentation. Returns what was removed."""
    path = fragment_path(home, name)
    config = removable(home, name)
    supervisor = _running_supervisor(home)
    async with connected(home) as client:
        await _require_audit(client)
        entry = config.services[name].entry
        # The program goes first, from the configuration without this service: the declaration is
        # deleted only once nothing runs it, so an interrupted removal can simply be run again.
        without = dict(config.services)
        del without[name]
        apply_programs(supervisor, home, dataclasses.replace(config, services=without))
        revoked = True
        try:
            await client.call("mesh.certs.revoke", {"ref": name}, timeout=_RPC_S)
        except (Conflict, NotFound):
            revoked = False  # already revoked (or never admitted): nothing to cut
        os.unlink(path)
        await client.call("mesh.config.reload", timeout=_RPC_S)
        removed = [str(p) for p in remove_identity(home, name)] if home.public_key_path(name).exists() else []
        for log in sorted(home.log.glob(f"{name}.log*")):
            log.unlink()
            removed.append(str(log))
        removed.append(str(path))
        await _audit(client, "service.removed", name, {"entry": entry, "revoked": revoked, "files": len(removed)})
    return {"name": name, "revoked": revoked, "removed": removed,
            "kept": f"data it stored under {name!r} stays in storage; a service added later as {name!r} reads it"}


def declared_in(home: MeshHome, name: str) -> str:
    """The last configuration file that declares ``name``."""
    layers = config_layers(home.root)
    found = [path for path, table in zip(layers.files, layers.tables, strict=True)
             if name in table.get("services", {})]
    return str(found[-1]) if found else "nowhere"


def list_services(home: MeshHome) -> dict[str, Any]:
    """``meshctl service list``: every declaration, where it is written, and its process's state."""
    config = home_config(home)
    procs: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(CliError):
        supervisor = Supervisor(home, load_credentials(home))
        if supervisor.running():
            procs = {p["name"]: p for p in supervisor.processes()}
    rows = []
    for name, decl in config.services.items():
        rows.append({"name": name, "entry": decl.entry, "process": decl.process, "priority": decl.priority,
                     "role": decl.role, "state": procs[name]["statename"] if name in procs else None,
                     "declared_in": declared_in(home, name), "added": fragment_path(home, name).exists(),
                     "expose": {k: list(v) for k, v in decl.expose.items()}, "keys": list(decl.keys)})
    return {"home": str(home.root), "services": rows}

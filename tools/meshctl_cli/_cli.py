"""meshctl's command line: parse, run one command, print a table or JSON, exit with a status.

Exit status: 0 success (for ``status`` and ``up``: the mesh is healthy; for ``policy test``: the
request would be allowed), 1 failure (for ``status`` and ``up``: unhealthy, one line on stderr says
why; for ``policy test``: it would be denied, as its output says), 2 usage error,
3 the mesh is sealed, 4 degraded (``status``, ``up``, ``restart``, ``ping``; see :mod:`._verdict`
and README.md's "Verdicts and exit codes", the table people read), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _completion, _parser
from ._output import CliError, emit, emit_json, report_error, start_run

if TYPE_CHECKING:
    from shared import MeshHome

# Every command imports what it needs when it runs, never here: `meshctl --help` and a
# light command must not pay for zmq, asyncio, the storage engines or the crypto stack
# that other commands need (issue 13: start-up was almost all of a command's time).

_RPC_TIMEOUT_S = 30.0


def _init_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _confirm, _init, _render

    if args.yes and not args.force:
        raise CliError("--yes applies only to init --force (the one thing init asks about)", status=2)
    if args.force:
        _confirm.confirm(args, f"replace every key, certificate and credential in {home.root} and its master "
                               "key (data encrypted under the old keys becomes unreadable)")
    result = _init.init(home, force=args.force, if_needed=args.if_needed, password_file=args.password_file)
    emit(args.json, result, _render.init(result), _render.init_warnings(result))
    return 0


def _down(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _confirm, _lifecycle
    from ._supervisor import home_processes

    _confirm.require(args)
    running = home_processes(home)
    if running:  # nothing to stop is nothing to ask about; `down` then only says so.
        _confirm.confirm(args, f"stop the mesh in {home.root} ({len(running)} processes; every service stops "
                               "answering until `meshctl up`)")
    result = _lifecycle.down(home, timeout=args.timeout, quiet=args.json)
    emit(args.json, result, "the mesh is down" if result["was_running"] or result["leftovers_stopped"]
           else "the mesh was not running")
    return 0


def _up_or_status(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _render, _watch
    from ._status import watch_status

    interval = _watch.check_flags(args, applies=args.command == "status")
    if interval is not None:
        return watch_status(home, interval, args.json)
    if args.command == "up":
        import asyncio

        from . import _lifecycle  # supervisord's programs and start-up: not for a status

        report = asyncio.run(_lifecycle.up(home, timeout=args.timeout, quiet=args.json))
    else:
        report = _status(home)  # no event loop: a status is a few calls (issue 13)
    emit(args.json, report, _render.status(report), _render.status_warnings(report))
    if report["state"] == "sealed":
        raise CliError("the mesh is sealed: run `meshctl security unlock`", status=report["exit_code"])
    if report["state"] == "degraded":
        raise CliError(f"the mesh is {report['verdict']}", status=report["exit_code"])
    if not report["healthy"]:
        raise CliError(f"the mesh is not healthy: {report['verdict'].removeprefix('unhealthy: ')}",
                       status=report["exit_code"])
    return 0


def _restart(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio

    from . import _lifecycle, _render
    from ._verdict import EXIT_CODES
    row = asyncio.run(_lifecycle.restart(home, args.service, timeout=args.timeout))
    emit(args.json, row,
         f"{row['name']}: {row['state']}, pid {_render.dash(row['pid'])}, registered {_render.yes(row['registered'])}")
    if row["ready"]["state"] == "sealed" and row.get("mesh_state") == "sealed":
        raise CliError(f"{args.service} is back and sealed with the mesh: run `meshctl security unlock`",
                       status=EXIT_CODES["sealed"])
    if not row["healthy"]:
        if not args.json:
            print("\n".join(f"    {line}" for line in row.get("log_tail") or []))
        raise CliError(f"{args.service} did not come back ready: {row['problem']}")
    return 0


def _ping(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _peer
    from ._verdict import of_process

    result = _peer.ping(home, args.service, args.timeout)
    emit(args.json, result, _peer.ping_text(result))
    if result["target"] == "mesh.ping":
        return 0  # the broker answered: it has no readiness of its own to report
    # The verdict words and exit codes of `status` (README: "Verdicts and exit codes").
    state, status = of_process(result["reply"])
    if status:
        reply = result["reply"] if isinstance(result["reply"], dict) else {}
        why = "run `meshctl security unlock`" if state == "sealed" else reply.get("reason") or reply.get("state")
        raise CliError(f"{args.service} is {state}: {why}", status=status)
    return 0


def _call(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio
    import json

    from . import _mesh
    try:
        body = None if args.body is None else json.loads(args.body)
    except json.JSONDecodeError as exc:
        raise CliError(f"--body is not valid JSON: {exc.msg} at character {exc.pos}", status=2) from None
    emit_json(asyncio.run(_mesh.call(home, args.target, body, args.timeout)))  # JSON is the readable form
    return 0


def _certs(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio

    from . import _mesh, _render
    if args.action in ("accept", "reject", "revoke", "unrevoke", "show") and not args.ref:
        raise CliError(f"certs {args.action} needs a REF (name, key or fingerprint)", status=2)
    if args.action == "revoke":
        from . import _revoke

        result = _revoke.revoke(args, home)
        emit(args.json, result, _revoke.render(result))
        return 0
    result = asyncio.run(_mesh.certs(home, args.action, args.ref, args.name, args.role, args.state))
    if args.action == "list" and args.role:
        result = [entry for entry in result if entry.get("role") == args.role]  # the broker filters by state only
    emit(args.json, result, _render.certs(args.action, result))
    return 0


def _events(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio

    from . import _mesh, _render
    render = _render.event_json if args.json else _render.event
    if args.follow and args.wait is not None:  # a rule between two options, which the tables do not cover
        raise CliError("--wait does not apply with -f, which listens until interrupted: leave one of them out",
                       status=2)
    wait = 5.0 if args.wait is None else args.wait
    shown = asyncio.run(_mesh.tail_events(home, args.topic, args.follow, wait, args.count,
                                          lambda e: print(render(e), flush=True)))
    if not shown and not args.json:
        print(f"no events within {wait:g} s", file=sys.stderr)
    return 0


def _config_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio

    from . import _config_show, _mesh, _render
    if args.action == "reload":
        result = asyncio.run(_mesh.call(home, "mesh.config.reload", None, _RPC_TIMEOUT_S))
        emit(args.json, result, _render.config_reload(result))
        return 0
    result = _config_show.show(home)
    emit(args.json, result, _config_show.render(result))
    return 0


def _service_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    import asyncio

    from . import _render, _services
    if args.action == "list":
        listing = _services.list_services(home)
        emit(args.json, listing, _render.service_list(listing))
        return 0
    if not args.name:
        raise CliError(f"service {args.action} needs a NAME", status=2)
    if args.action == "remove":
        from . import _confirm

        _services.removable(home, args.name)  # files only: a wrong NAME is named before anything is asked
        _confirm.confirm(args, f"remove service {args.name} from the mesh in {home.root}: stop and drop its program, "
                               "revoke its key for good, delete its declaration, keypair and logs (the data it "
                               "stored stays)")
        result = asyncio.run(_services.remove(home, args.name))
        emit(args.json, result, _render.service_removed(result))
        return 0
    if not args.entry:
        raise CliError("service add needs --entry ENTRY (/absolute/path/file.py:Class or package.module:Class)",
                       status=2)
    table = _services.declaration(args.entry, expose=_services.parse_expose(args.expose), publish=args.publish,
                                  subscribe=args.subscribe, keys=args.keys, priority=args.priority)
    row = asyncio.run(_services.add(home, args.name, table, timeout=args.timeout))
    emit(args.json, row, _render.service_added(row))
    if not row["healthy"]:
        if not args.json:
            print("\n".join(f"    {line}" for line in row.get("log_tail") or []))
        raise CliError(f"{args.name} was added but is not ready: {row.get('problem')}; it stays declared "
                       f"(meshctl logs {args.name}; fix it and `meshctl restart {args.name}`, or "
                       f"`meshctl service remove {args.name}`)")
    return 0


def _logs_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    import contextlib

    from . import _logs
    from ._supervisor import Supervisor, load_credentials
    try:
        supervisor: Supervisor | None = Supervisor(home, load_credentials(home))
    except CliError:
        supervisor = None  # not initialised or unreadable: the default log location still works.
    with contextlib.suppress(KeyboardInterrupt):
        _logs.show_logs(home, supervisor, args.service, args.lines, args.follow, lambda: False, args.json)
    return 0


def _security_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _security
    return _security.run(args, home)


def _audit_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _audit
    return _audit.run_audit(args, home)


def _alerts_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _audit
    return _audit.run_alerts(args, home)


def _storage_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _storage
    return _storage.run_storage(args, home)


def _backup_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _storage
    return _storage.run_backup(args, home)


def _users_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _users
    return _users.run_users(args, home) if args.command == "users" else _users.run_sessions(args, home)


def _authz_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    if args.command == "consent":
        from . import _consent
        return _consent.run_consent(args, home)
    from . import _authz
    return _authz.run_roles(args, home) if args.command == "roles" else _authz.run_policy(args, home)


def _pairing_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _pairing
    return _pairing.run_pair(args, home) if args.command == "pair" else _pairing.run_devices(args, home)


def _plugins_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _plugins
    return _plugins.run_plugins(args, home)


_COMMANDS: dict[str, Callable[[argparse.Namespace, MeshHome], int]] = {
    "init": _init_cmd, "up": _up_or_status, "status": _up_or_status, "down": _down, "restart": _restart,
    "ping": _ping, "call": _call, "certs": _certs, "events": _events, "logs": _logs_cmd,
    "security": _security_cmd, "keys": _security_cmd, "audit": _audit_cmd, "alerts": _alerts_cmd,
    "storage": _storage_cmd, "backup": _backup_cmd, "config": _config_cmd,
    "service": _service_cmd, "users": _users_cmd, "sessions": _users_cmd,
    "roles": _authz_cmd, "policy": _authz_cmd, "consent": _authz_cmd,
    "pair": _pairing_cmd, "devices": _pairing_cmd, "plugins": _plugins_cmd,
}


def _run(args: argparse.Namespace) -> int:
    if args.command == "completion":
        print(_completion.script(args.shell), end="")  # needs no home: the script is the same for all
        return 0
    # Logging is configured when the first event worth showing comes, if one does: structlog costs
    # as much as the interpreter's own start, and most commands never log (issue 13).
    from shared import defer_logging

    from ._home import home_from

    if args.command == "audit" and args.action == "verify" and args.offline:
        from . import _audit

        defer_logging("meshctl", "critical")
        return _audit.verify_offline_cmd(args)  # no home, no mesh: the bundle and the key only
    if args.command == "pair" and args.action == "join":
        from . import _pairing

        defer_logging("meshctl", "critical")
        return _pairing.run_pair(args, None)  # on the device: no mesh home, its device directory
    if args.command == "plugins" and args.action in ("keygen", "sign"):
        from . import _plugins_publish

        defer_logging("meshctl", "critical")
        return _plugins_publish.run_publish(args)  # a publisher's machine: no mesh home, no mesh
    home = home_from(args.home)
    # The shared modules log through structlog; in a CLI they would only repeat what the
    # one-line errors say, except while following events, where a lost broker is news.
    following = args.command == "events" and args.follow
    defer_logging("meshctl", "warning" if following else "critical")
    return _COMMANDS[args.command](args, home)


def _status(home: MeshHome) -> dict[str, Any]:
    from ._status import collect_once
    from ._supervisor import Supervisor, load_credentials

    return collect_once(home, Supervisor(home, load_credentials(home)))


def _wants_json(argv: list[str]) -> bool:
    # Decided from the words, not the parsed namespace: a usage error happens before there is one,
    # and its JSON error object is owed all the same. Words after "--" are operands, not options.
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in words


def main(argv: list[str] | None = None) -> int:
    """Run meshctl; return the exit status (the console script exits with it)."""
    words = sys.argv[1:] if argv is None else list(argv)
    as_json = _wants_json(words)
    start_run()
    try:
        # While a shell asks for completions it needs every command; otherwise the one named will do.
        only = None if "_ARGCOMPLETE" in os.environ else _parser.command_word(words)
        args = _completion.attach(_parser.build(only)).parse_args(words)
        return _run(args)
    except CliError as exc:
        return report_error(exc, as_json)
    except KeyboardInterrupt:
        return report_error(CliError("interrupted", status=130), as_json)
    except BrokenPipeError:
        # The reader went away (`meshctl status | head`): nothing is wrong and nobody is left to tell.
        # stdout is pointed at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if os.environ.get("MESHCTL_DEBUG"):
            raise
        return report_error(CliError(f"unexpected {type(exc).__name__}; please report it", kind="internal"), as_json)

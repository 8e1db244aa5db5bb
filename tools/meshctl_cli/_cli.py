"""meshctl's command line: parse, run one command, print a table or JSON, exit with a status.

Exit status: 0 success (for ``status`` and ``up``: the mesh is healthy), 1 failure
(for ``status`` and ``up``: unhealthy; one line on stderr says why), 2 usage error,
3 the mesh is sealed, 4 degraded (``status``, ``up``, ``restart``, ``ping``; see :mod:`._verdict`
and README.md's "Verdicts and exit codes", the table people read), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from shared import PURPOSES

from . import _completion
from ._output import CliError, emit, emit_json, report_error, start_run

if TYPE_CHECKING:
    from shared import MeshHome

# Every command imports what it needs when it runs, never here: `meshctl --help` and a
# light command must not pay for zmq, asyncio, the storage engines or the crypto stack
# that other commands need (issue 13: start-up was almost all of a command's time).

_RPC_TIMEOUT_S = 30.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not the usage block: the rule for every meshctl failure.
        raise CliError(f"{message} (see {self.prog} --help)", status=2)

    _in_passes = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        from . import _args  # here, not at the top: the imports there are another change's

        if self._in_passes:  # one of parse_known_intermixed_args' own passes, below
            return super().parse_known_args(args, namespace)
        if self._subparsers is None:
            # A command's parser takes options and operands in any order: `certs revoke -y storage`
            # as well as `certs revoke storage -y` (plain argparse binds the optional REF before -y).
            self._in_passes = True
            try:
                parsed, extras = self.parse_known_intermixed_args(args, namespace)
            finally:
                self._in_passes = False
        else:
            parsed, extras = super().parse_known_args(args, namespace)
        # Each command's parser checks its own table of which options apply to which action;
        # unrecognised arguments are left for the top parser to report first.
        problem = None if extras else _args.inapplicable(self, parsed)
        if problem:
            self.error(problem)
        return parsed, extras


def _parser() -> argparse.ArgumentParser:
    from ._args import count, int_range, non_negative, only, seconds  # see _Parser.parse_known_args

    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for machines")
    common.add_argument("--home", default=argparse.SUPPRESS, help="the mesh home (default: $CURVEMESH_HOME)")
    top = _Parser(prog="meshctl", description="Operate a curvemesh mesh: its processes, certificates and events.")
    top.add_argument("--json", action="store_true", default=False, help="print JSON for machines")
    top.add_argument("--home", default=None, help="the mesh home (default: $CURVEMESH_HOME)")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    def yes(p: argparse.ArgumentParser, what: str = "") -> None:
        p.add_argument("-y", "--yes", action="store_true",
                       help=f"{what}go ahead without asking (without a terminal it is required)")

    p = add("init", "create every keypair, the allow-list, the operator certificate, supervisord credentials "
            "and the master key (asks for a master password; without a terminal or --password-file, generates "
            "a recovery passphrase and shows it once)")
    p.add_argument("--force", action="store_true",
                   help="replace an initialised home's keys and master key (mesh must be down; data encrypted "
                        "under the old keys becomes unreadable)")
    p.add_argument("--if-needed", action="store_true", help="leave an initialised home alone (exit 0)")
    p.add_argument("--password-file", metavar="FILE", help="read the master password from FILE's first line (0600)")
    p = add("up", "start the mesh under supervisord and wait until it is healthy")
    p.add_argument("--timeout", type=seconds, default=90.0, help="seconds to wait for health (default 90)")
    p = add("down", "stop the mesh; no process of this home is left behind")
    p.add_argument("--timeout", type=seconds, default=60.0, help="seconds before leftovers are killed (default 60)")
    yes(p)
    p = add("restart", "restart one process and wait until it is healthy again")
    p.add_argument("service")
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait until it is ready (default 30)")
    p = add("status", "supervisor and mesh state of every process; exit 1 unless healthy")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C (exit 0)")
    p.add_argument("--interval", type=seconds, default=None, metavar="S", help="--watch: seconds between refreshes (2)")
    p = add("ping", "round trip to SERVICE.health (or to the broker: ping mesh)")
    p.add_argument("service")
    p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for the answer (default 5)")
    p = add("call", "call SERVICE.METHOD as the operator (subject to its ACL)")
    p.add_argument("target", metavar="SERVICE.METHOD")
    p.add_argument("--body", default=None, help="request body as JSON")
    p.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for the reply (default 10)")
    p = add("certs", "the broker's certificate store")
    p.add_argument("action", choices=["list", "pending", "accept", "reject", "revoke", "unrevoke", "show", "reload"],
                   help="unrevoke: let a revoked key back in under its old name and role")
    p.add_argument("ref", nargs="?", help="name, Z85 public key, or fingerprint (8+ hex digits)")
    p.add_argument("--state", choices=["allowed", "pending", "rejected", "revoked"], help="list: only this state")
    p.add_argument("--name", help="accept: the identity name to give the key")
    p.add_argument("--role", choices=["service", "operator", "device", "plugin"],
                   help="accept: its role; list: only this role")
    yes(p, "revoke: ")
    only(p, {"ref": ["accept", "reject", "revoke", "unrevoke", "show"], "state": ["list"], "name": ["accept"],
             "role": ["accept", "list"], "yes": ["revoke"]})
    p = add("events", "events published in the mesh")
    p.add_argument("action", choices=["tail"])
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until interrupted")
    p.add_argument("--topic", default=None, help="topic prefix (default: every topic)")
    p.add_argument("--wait", type=seconds, default=None, help="without -f: seconds to listen (default 5)")
    p.add_argument("--count", type=count, default=None, help="stop after this many events")
    p = add("security", "seal and unseal the mesh, meshctl's login session, the master password")
    p.add_argument("action", choices=["lock", "unlock", "login", "session", "clear", "passwd"],
                   help="lock: seal (keys wiped); unlock: unseal with the password; login: open a session "
                        "(30 min idle); session: show it; clear: end it; passwd: change the master password")
    p.add_argument("--password-file", metavar="FILE", help="unlock, login: the password from FILE (0600)")
    p.add_argument("--old-password-file", metavar="FILE", help="passwd: the current password from FILE")
    p.add_argument("--new-password-file", metavar="FILE", help="passwd: the new password from FILE")
    yes(p, "lock: ")
    only(p, {"password_file": ["unlock", "login"], "old_password_file": ["passwd"],
             "new_password_file": ["passwd"], "yes": ["lock"]})
    p = add("keys", "the keyvault's data keys: list them (needs `security login`) or rotate one")
    p.add_argument("action", choices=["list", "rotate"])
    p.add_argument("purpose", nargs="?", choices=PURPOSES, metavar="PURPOSE",
                   help=f"rotate: one of {', '.join(PURPOSES)}")
    p.add_argument("--password-file", metavar="FILE", help="rotate: the master password from FILE (0600)")
    yes(p, "rotate: ")
    only(p, {"purpose": ["rotate"], "password_file": ["rotate"], "yes": ["rotate"]})
    p = add("audit", "the tamper-evident audit log: tail it, verify it (online, or an export offline), export it")
    p.add_argument("action", choices=["tail", "verify", "export"])
    p.add_argument("file", nargs="?", metavar="FILE", help="export: where to write the bundle")
    p.add_argument("-f", "--follow", action="store_true", help="tail: keep printing new records until interrupted")
    p.add_argument("-n", "--lines", type=int_range(1, 1000), default=50,
                   help="tail: how many of the latest records, 1 to 1000 (default 50)")
    p.add_argument("--type", default=None, help="tail: only records of this type (e.g. mesh.deny)")
    p.add_argument("--actor", default=None, help="tail: only records of this actor")
    p.add_argument("--offline", metavar="FILE", default=None,
                   help="verify: check an exported bundle without the mesh (needs --public-key)")
    p.add_argument("--public-key", metavar="KEY", default=None,
                   help="verify --offline: the audit public key, Z85 or hex (as `audit export` printed it)")
    only(p, {"file": ["export"], "follow": ["tail"], "lines": ["tail"], "type": ["tail"], "actor": ["tail"],
             "offline": ["verify"], "public_key": ["verify"]})
    p = add("alerts", "open anomaly alerts of the audit service; `alerts ack ID` acknowledges one")
    p.add_argument("action", nargs="?", choices=["list", "ack"], default="list")
    p.add_argument("id", nargs="?", type=non_negative, metavar="ID", help="ack: the alert's id")
    p.add_argument("--watch", action="store_true", help="list: refresh every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=seconds, default=None, metavar="S", help="--watch: seconds between refreshes (2)")
    only(p, {"id": ["ack"], "watch": ["list"], "interval": ["list"]})
    p = add("storage", "the encrypted stores: status (key versions, rotation progress) or verify every store")
    p.add_argument("action", choices=["status", "verify"])
    p = add("backup", "encrypted backups of every store: create one, verify an archive, restore one into a fresh home")
    p.add_argument("action", choices=["list", "create", "verify", "restore"])
    p.add_argument("file", nargs="?", metavar="FILE", help="verify, restore: the archive")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help="create: also wrap the archive key with this passphrase (for a restore on another "
                        "machine); verify, restore: open the archive with it")
    p.add_argument("--output", metavar="FILE", help="create: also copy the archive to FILE")
    p.add_argument("--force", action="store_true", help="restore: accept an archive older than the newest backup")
    yes(p, "restore: ")
    only(p, {"file": ["verify", "restore"], "output": ["create"], "force": ["restore"], "yes": ["restore"]})
    p = add("config", "show: the merged configuration (mesh.toml, then <home>/mesh.d/*.toml), each value with "
            "the file that set it; reload: have the running broker apply it (ACL, rate limits) without a restart")
    p.add_argument("action", choices=["show", "reload"])
    p = add("service", "the mesh's declared services: list them, add a companion's own service (keypair, "
            "declaration in <home>/mesh.d/, supervisord program; waits until it is ready), remove one added so")
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("name", nargs="?", metavar="NAME", help="add, remove: the service's name (its identity)")
    p.add_argument("--entry", metavar="ENTRY",
                   help="add: what runs it: /absolute/path/file.py:Class or package.module:Class")
    p.add_argument("--expose", action="append", default=[], metavar="METHOD=WHO[,WHO]",
                   help="add: who may call which methods ('*=operator', 'get=service,reminders', 'drafts.*=x'); "
                        "repeatable; default: '*=operator' only")
    p.add_argument("--publish", action="append", default=[], metavar="PREFIX", help="add: topics it may publish")
    p.add_argument("--subscribe", action="append", default=[], metavar="PREFIX",
                   help="add: topics it may subscribe to")
    p.add_argument("--keys", action="append", default=[], choices=PURPOSES, metavar="PURPOSE",
                   help=f"add: a data key keyvault releases to it ({', '.join(PURPOSES)}); repeatable")
    p.add_argument("--priority", type=non_negative, default=None,
                   help="add: start order under supervisord (default 100)")
    p.add_argument("--timeout", type=seconds, default=60.0, help="add: seconds to wait until it is ready")
    yes(p, "remove: ")
    only(p, {"name": ("add", "remove"), **dict.fromkeys(["entry", "expose", "publish", "subscribe", "keys",
                                                          "priority", "timeout"], ("add",)), "yes": ("remove",)})
    p = add("logs", "a process's log (JSON lines)")
    p.add_argument("service")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--lines", type=non_negative, default=50, help="how many of the last lines (default 50)")
    return top



def _init_cmd(args: argparse.Namespace, home: MeshHome) -> int:
    from . import _init, _render
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
    import asyncio

    from . import _lifecycle, _render, _watch
    from ._status import watch_status

    interval = _watch.check_flags(args, applies=args.command == "status")
    if interval is not None:
        return watch_status(home, interval, args.json)
    if args.command == "up":
        report = asyncio.run(_lifecycle.up(home, timeout=args.timeout, quiet=args.json))
    else:
        report = asyncio.run(_status(home))
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
    import asyncio

    from . import _mesh, _render
    from ._verdict import of_process

    result = asyncio.run(_mesh.ping(home, args.service, args.timeout))
    emit(args.json, result, _render.ping(result))
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


_COMMANDS: dict[str, Callable[[argparse.Namespace, MeshHome], int]] = {
    "init": _init_cmd, "up": _up_or_status, "status": _up_or_status, "down": _down, "restart": _restart,
    "ping": _ping, "call": _call, "certs": _certs, "events": _events, "logs": _logs_cmd,
    "security": _security_cmd, "keys": _security_cmd, "audit": _audit_cmd, "alerts": _alerts_cmd,
    "storage": _storage_cmd, "backup": _backup_cmd, "config": _config_cmd,
    "service": _service_cmd,
}


def _run(args: argparse.Namespace) -> int:
    if args.command == "completion":
        print(_completion.script(args.shell), end="")  # needs no home: the script is the same for all
        return 0
    from shared import configure_logging  # structlog, and with it asyncio: not for the script above

    from ._home import home_from

    if args.command == "audit" and args.action == "verify" and args.offline:
        from . import _audit

        configure_logging("meshctl", "critical")
        return _audit.verify_offline_cmd(args)  # no home, no mesh: the bundle and the key only
    home = home_from(args.home)
    # The shared modules log through structlog; in a CLI they would only repeat what the
    # one-line errors say, except while following events, where a lost broker is news.
    following = args.command == "events" and args.follow
    configure_logging("meshctl", "warning" if following else "critical")
    return _COMMANDS[args.command](args, home)


async def _status(home: MeshHome) -> dict[str, Any]:
    from ._status import MeshProbe, collect
    from ._supervisor import Supervisor, load_credentials

    supervisor = Supervisor(home, load_credentials(home))
    probe = MeshProbe(home)
    try:
        return await collect(home, supervisor, probe)
    finally:
        await probe.close()


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
    socket.setdefaulttimeout(_RPC_TIMEOUT_S)  # XML-RPC to supervisord must never hang forever.
    try:
        args = _completion.attach(_parser()).parse_args(words)
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

"""meshctl's command line as argparse sees it: every command, action and option, and their help.

Only argparse and :mod:`._args` (the option tables and number types) are imported here, so building
the parser for ``--help`` or a completion costs no more than that.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Final, NoReturn

from shared import PURPOSES

from . import _args
from ._args import count, int_range, non_negative, only, seconds
from ._output import CliError

_columns: int | None = None


def _terminal_columns() -> int:
    """What ``shutil.get_terminal_size().columns`` answers ($COLUMNS, else the terminal on stdout,
    else 80), without importing shutil: argparse imports it for every formatter it makes, and with
    it zlib, bz2 and lzma, some 4 ms of every command's start (issue 13)."""
    global _columns
    if _columns is None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        _columns = columns or 80
    return _columns


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, as wide as the terminal as before (two columns less), measured once."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """meshctl's parser: one-line usage errors, options and operands in any order, and each
    command's table of which options apply to which action (:mod:`._args`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, not the usage block: the rule for every meshctl failure.
        raise CliError(f"{message} (see {self.prog} --help)", status=2)

    _in_passes = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
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


#: Every command, in the order ``--help`` lists them (``completion`` is added by _completion.attach).
COMMANDS: Final = ("init", "up", "down", "restart", "status", "ping", "call", "certs", "events", "security",
                   "keys", "audit", "alerts", "storage", "backup", "config", "service", "users", "sessions", "roles",
                   "policy", "consent", "pair", "devices", "plugins", "logs")


def command_word(words: list[str]) -> str | None:
    """The command ``words`` name when only its parser is needed to parse them, else None (for
    ``--help``, ``--version``, an unknown option or command: the whole parser answers those)."""
    value_next = False
    for word in words:
        if value_next:
            value_next = False
        elif word == "--home":
            value_next = True
        elif word == "--json" or word.startswith("--home="):
            continue
        else:
            return word if word in COMMANDS else None
    return None


def build(command: str | None = None) -> argparse.ArgumentParser:
    """The command line: every command, its actions and options, and their help; with ``command``
    (one of :data:`COMMANDS`), that command alone. Building the other thirty parsers is most of
    the parsing time of a command that runs in a tenth of a second (issue 13)."""
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for machines")
    common.add_argument("--home", default=argparse.SUPPRESS, help="the mesh home (default: $CURVEMESH_HOME)")
    top = _Parser(prog="meshctl", description="Operate a curvemesh mesh: its processes, certificates and events.")
    top.add_argument("--json", action="store_true", default=False, help="print JSON for machines")
    top.add_argument("--home", default=None, help="the mesh home (default: $CURVEMESH_HOME)")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    def want(name: str) -> bool:
        return command is None or name == command

    def yes(p: argparse.ArgumentParser, what: str = "") -> None:
        p.add_argument("-y", "--yes", action="store_true",
                       help=f"{what}go ahead without asking (without a terminal it is required)")

    if want("init"):
        p = add("init", "create every keypair, the allow-list, the operator certificate, supervisord credentials "
                "and the master key (asks for a master password; without a terminal or --password-file, generates "
                "a recovery passphrase and shows it once)")
        p.add_argument("--force", action="store_true",
                       help="replace an initialised home's keys and master key (mesh must be down; data encrypted "
                            "under the old keys becomes unreadable)")
        p.add_argument("--if-needed", action="store_true", help="leave an initialised home alone (exit 0)")
        p.add_argument("--password-file", metavar="FILE", help="read the master password from FILE's first line (0600)")
        yes(p, "--force: ")
    if want("up"):
        p = add("up", "start the mesh under supervisord and wait until it is healthy")
        p.add_argument("--timeout", type=seconds, default=90.0, help="seconds to wait for health (default 90)")
    if want("down"):
        p = add("down", "stop the mesh; no process of this home is left behind")
        p.add_argument("--timeout", type=seconds, default=60.0, help="seconds before leftovers are killed (default 60)")
        yes(p)
    if want("restart"):
        p = add("restart", "restart one process and wait until it is healthy again")
        p.add_argument("service")
        p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait until it is ready (default 30)")
    if want("status"):
        p = add("status", "supervisor and mesh state of every process; exit 1 unless healthy")
        p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C (exit 0)")
        p.add_argument("--interval", type=seconds, default=None, metavar="S",
                       help="--watch: seconds between refreshes (2)")
    if want("ping"):
        p = add("ping", "round trip to SERVICE.health (or to the broker: ping mesh)")
        p.add_argument("service")
        p.add_argument("--timeout", type=seconds, default=5.0, help="seconds to wait for the answer (default 5)")
    if want("call"):
        p = add("call", "call SERVICE.METHOD as the operator (subject to its ACL)")
        p.add_argument("target", metavar="SERVICE.METHOD")
        p.add_argument("--body", default=None, help="request body as JSON")
        p.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for the reply (default 10)")
    if want("certs"):
        p = add("certs", "the broker's certificate store")
        p.add_argument("action",
                       choices=["list", "pending", "accept", "reject", "revoke", "unrevoke", "show", "reload"],
                       help="unrevoke: let a revoked key back in under its old name and role")
        p.add_argument("ref", nargs="?", help="name, Z85 public key, or fingerprint (8+ hex digits)")
        p.add_argument("--state", choices=["allowed", "pending", "rejected", "revoked"], help="list: only this state")
        p.add_argument("--name", help="accept: the identity name to give the key")
        p.add_argument("--role", choices=["service", "operator", "device", "plugin"],
                       help="accept: its role; list: only this role")
        yes(p, "revoke: ")
        only(p, {"ref": ["accept", "reject", "revoke", "unrevoke", "show"], "state": ["list"], "name": ["accept"],
                 "role": ["accept", "list"], "yes": ["revoke"]})
    if want("events"):
        p = add("events", "events published in the mesh")
        p.add_argument("action", choices=["tail"])
        p.add_argument("-f", "--follow", action="store_true", help="keep printing until interrupted")
        p.add_argument("--topic", default=None, help="topic prefix (default: every topic)")
        p.add_argument("--wait", type=seconds, default=None, help="without -f: seconds to listen (default 5)")
        p.add_argument("--count", type=count, default=None, help="stop after this many events")
    if want("security"):
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
    if want("keys"):
        p = add("keys", "the keyvault's data keys: list them (needs `security login`) or rotate one")
        p.add_argument("action", choices=["list", "rotate"])
        p.add_argument("purpose", nargs="?", choices=PURPOSES, metavar="PURPOSE",
                       help=f"rotate: one of {', '.join(PURPOSES)}")
        p.add_argument("--password-file", metavar="FILE", help="rotate: the master password from FILE (0600)")
        yes(p, "rotate: ")
        only(p, {"purpose": ["rotate"], "password_file": ["rotate"], "yes": ["rotate"]})
    if want("audit"):
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
    if want("alerts"):
        p = add("alerts", "open anomaly alerts of the audit service; `alerts ack ID` acknowledges one")
        p.add_argument("action", nargs="?", choices=["list", "ack"], default="list")
        p.add_argument("id", nargs="?", type=non_negative, metavar="ID", help="ack: the alert's id")
        p.add_argument("--watch", action="store_true", help="list: refresh every --interval seconds until Ctrl-C")
        p.add_argument("--interval", type=seconds, default=None, metavar="S",
                       help="--watch: seconds between refreshes (2)")
        only(p, {"id": ["ack"], "watch": ["list"], "interval": ["list"]})
    if want("storage"):
        p = add("storage", "the encrypted stores: status (key versions, rotation progress) or verify every store")
        p.add_argument("action", choices=["status", "verify"])
    if want("backup"):
        p = add("backup", "encrypted backups of every store: create one, verify an archive, restore one into a "
                "fresh home")
        p.add_argument("action", choices=["list", "create", "verify", "restore"])
        p.add_argument("file", nargs="?", metavar="FILE", help="verify, restore: the archive")
        p.add_argument("--passphrase-file", metavar="FILE",
                       help="create: also wrap the archive key with this passphrase (for a restore on another "
                            "machine); verify, restore: open the archive with it")
        p.add_argument("--output", metavar="FILE", help="create: also copy the archive to FILE")
        p.add_argument("--force", action="store_true", help="restore: accept an archive older than the newest backup")
        yes(p, "restore: ")
        only(p, {"file": ["verify", "restore"], "output": ["create"], "force": ["restore"], "yes": ["restore"]})
    if want("config"):
        p = add("config", "show: the merged configuration (mesh.toml, then <home>/mesh.d/*.toml), each value with "
                "the file that set it; reload: have the running broker apply it (ACL, rate limits) without a restart")
        p.add_argument("action", choices=["show", "reload"])
    if want("service"):
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
    if want("users"):
        p = add("users", "people's accounts (authn): add, list, show, disable, enable, delete, passwd, totp")
        p.add_argument("action", choices=["list", "add", "show", "disable", "enable", "delete", "passwd", "totp",
                                          "totp-confirm", "totp-off", "passkeys"],
                       help="disable: no login, every session ended; delete: the account and its sessions, for good; "
                            "passwd: a new password, every session ended; totp: enrol an authenticator app (QR code, "
                            "first code, recovery codes); totp-off: password only again; passkeys: list them, or "
                            "--remove one")
        p.add_argument("name", nargs="?", metavar="NAME", help="the username (every action but list)")
        p.add_argument("--password-file", metavar="FILE",
                       help="add, passwd: the password from FILE's first line (0600)")
        p.add_argument("--code", metavar="CODE", help="totp, totp-confirm: the code the authenticator app shows")
        p.add_argument("--remove", metavar="CREDENTIAL", help="passkeys: remove this passkey (its id, as listed)")
        yes(p, "delete, totp-off, passkeys --remove: ")
        only(p, {"name": ["add", "show", "disable", "enable", "delete", "passwd", "totp", "totp-confirm", "totp-off",
                          "passkeys"],
                 "password_file": ["add", "passwd"], "code": ["totp", "totp-confirm"], "remove": ["passkeys"],
                 "yes": ["delete", "totp-off", "passkeys"]})
    if want("sessions"):
        p = add("sessions", "signed-in devices (authn): list them, or revoke one session, a user's or a device's")
        p.add_argument("action", choices=["list", "revoke"])
        p.add_argument("--user", metavar="NAME", help="list: only this user's; revoke: every session of this user")
        p.add_argument("--session", metavar="ID", help="revoke: this session")
        p.add_argument("--device", metavar="FP", help="revoke: every session of this device key (its fingerprint)")
        yes(p, "revoke: ")
        only(p, {"user": ["list", "revoke"], "session": ["revoke"], "device": ["revoke"], "yes": ["revoke"]})
    if want("roles"):
        p = add("roles", "authz roles: list them (declared in mesh.toml, assigned here), assign one, revoke one")
        p.add_argument("action", choices=["list", "assign", "revoke"])
        p.add_argument("principal", nargs="?", metavar="PRINCIPAL", help="kind:name (service:notes, user:<id>, ...)")
        p.add_argument("role", nargs="?", metavar="ROLE", help="assign, revoke: the role (e.g. user-data)")
        yes(p, "revoke: ")
        only(p, {"role": ["assign", "revoke"], "yes": ["revoke"]})
    if want("policy"):
        p = add("policy", "authz policies: show, validate a DIR, test a decision (exit 0: allow, 1: deny), reload")
        p.add_argument("action", choices=["show", "validate", "test", "reload"])
        p.add_argument("subject", nargs="?", metavar="DIR|PRINCIPAL", help="validate: a DIR; test: a kind:name")
        p.add_argument("verb", nargs="?", choices=["read", "write", "delete"], metavar="ACTION", help="test: an action")
        p.add_argument("category", nargs="?", metavar="CATEGORY", help="test: the data category")
        p.add_argument("--owner", metavar="USER", help="test: whose data (user id or username)")
        p.add_argument("--user", metavar="USER", help="test: the user the principal acts for (id or username)")
        p.add_argument("--purpose", metavar="P", help="test: what the access is for")
        only(p, {"subject": ("validate", "test"),
                 **dict.fromkeys(["verb", "category", "owner", "user", "purpose"], ("test",))})
    if want("consent"):
        p = add("consent", "owners' consent grants (authz): list, show, revoke, and grant for a person (signed in)")
        p.add_argument("action", choices=["list", "show", "grant", "revoke"])
        p.add_argument("target", nargs="?", metavar="GRANT_ID|GRANTEE",
                       help="show, revoke: the grant's id; grant: who gets it (kind:name, e.g. plugin:weather)")
        p.add_argument("--user", metavar="NAME", help="list: only this person's grants; grant: the person granting")
        p.add_argument("--all", action="store_true", help="list: expired and revoked grants too")
        p.add_argument("--category", dest="categories", action="append", default=[], metavar="C",
                       help="grant: a category it covers; repeatable")
        p.add_argument("--action", dest="actions", action="append", default=[], choices=["read", "write", "delete"],
                       help="grant: an action it covers; repeatable")
        p.add_argument("--purpose", metavar="P", help="grant: what it is for (a-z, 0-9, _ and -)")
        p.add_argument("--days", type=count, default=None, metavar="N", help="grant: how long (default 30 days)")
        p.add_argument("--duration-s", type=count, default=None, metavar="S", help="grant: how long, in seconds")
        p.add_argument("--password-file", metavar="FILE", help="grant: the person's password from FILE (0600)")
        p.add_argument("--code", metavar="CODE", help="grant: the person's one-time code, when TOTP is on")
        yes(p, "revoke: ")
        only(p, {"target": ["show", "grant", "revoke"], "user": ["list", "grant"], "all": ["list"],
                 **dict.fromkeys(["categories", "actions", "purpose", "days", "duration_s", "password_file", "code"],
                                 ("grant",)), "yes": ["revoke"]})
    if want("pair"):
        p = add("pair", "pair a device: start a window (shows a one-time code and QR code), join from the device, "
                        "status, cancel")
        p.add_argument("action", choices=["start", "join", "status", "cancel"])
        p.add_argument("code", nargs="?", metavar="CODE", help="join: the one-time code the mesh showed")
        p.add_argument("--name", metavar="N", help="start: what the device will be called; join: a name to suggest")
        p.add_argument("--ttl", type=count, default=None, metavar="S",
                       help="start: seconds the window stays open (default [pairing] window_default_s, 120)")
        p.add_argument("--host", metavar="H", help="start: the address devices reach this machine at")
        p.add_argument("--no-wait", action="store_true", help="start: print the window and return")
        p.add_argument("--endpoint", metavar="tcp://HOST:PORT", help="join: the pairing endpoint the mesh showed")
        p.add_argument("--offer", metavar="TEXT", help="join: the QR code's text instead of CODE and --endpoint")
        p.add_argument("--device-dir", metavar="DIR",
                       help="join: where the device keeps its keys (default ~/.config/curvemesh-device)")
        only(p, {"code": ["join"], "name": ["start", "join"], **dict.fromkeys(["ttl", "host", "no_wait"], ("start",)),
                 **dict.fromkeys(["endpoint", "offer", "device_dir"], ("join",))})
    if want("devices"):
        p = add("devices", "paired devices: list, show, rename, revoke (cuts its connection, sign-ins and grants)")
        p.add_argument("action", choices=["list", "show", "rename", "revoke"])
        p.add_argument("ref", nargs="?", metavar="DEVICE", help="its name, identity or fingerprint (8+ hex digits)")
        p.add_argument("new_name", nargs="?", metavar="NEW_NAME", help="rename: what it will be called")
        p.add_argument("--all", action="store_true", help="list: revoked devices too")
        yes(p, "revoke: ")
        only(p, {"ref": ["show", "rename", "revoke"], "new_name": ["rename"], "all": ["list"], "yes": ["revoke"]})
    if want("plugins"):
        p = add("plugins", "signed plugins run by plugin-host: install (shows what a package requests, then asks), "
                           "list, show, enable, disable, remove, logs, call; keygen and sign for publishers")
        p.add_argument("action", choices=["install", "list", "show", "enable", "disable", "remove", "logs", "call",
                                          "keygen", "sign"],
                       help="keygen: a publisher's signing key; sign: a package DIR with it (no mesh needed)")
        p.add_argument("target", nargs="?", metavar="TARGET",
                       help="install: the package (a directory or archive); show, enable, disable, remove, logs, "
                            "call: the plugin's NAME; keygen: the KEYFILE to write; sign: the package DIR")
        p.add_argument("function", nargs="?", metavar="FUNCTION", help="call: the plugin's function")
        p.add_argument("body", nargs="?", metavar="JSON", help="call: its arguments, as JSON")
        p.add_argument("--approve", action="store_true",
                       help="install: install what is shown without asking (without a terminal it is required)")
        p.add_argument("--enable", action="store_true", help="install: start it once installed")
        p.add_argument("-n", "--lines", type=int_range(1, 1000), default=50,
                       help="logs: how many of the last lines, 1 to 1000 (default 50)")
        p.add_argument("--key", metavar="KEYFILE", help="sign: the publisher key `plugins keygen` wrote")
        p.add_argument("--id", dest="key_id", metavar="KEY_ID",
                       help="keygen, sign: the publisher's key id, as mesh.toml's [plugins.publishers] names it")
        yes(p, "remove: ")
        only(p, {"target": ["install", "show", "enable", "disable", "remove", "logs", "call", "keygen", "sign"],
                 "function": ["call"], "body": ["call"], "approve": ["install"], "enable": ["install"],
                 "lines": ["logs"], "key": ["sign"], "key_id": ["keygen", "sign"], "yes": ["remove"]})
    if want("logs"):
        p = add("logs", "a process's log (JSON lines)")
        p.add_argument("service")
        p.add_argument("-f", "--follow", action="store_true")
        p.add_argument("-n", "--lines", type=non_negative, default=50, help="how many of the last lines (default 50)")
    return top

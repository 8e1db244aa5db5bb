"""``meshctl plugins``: signed plugins run by the plugin-host service (issue 17).

``install PATH`` is two steps, so that what is installed is what the operator saw:
``plugin-host.plugins.inspect`` verifies the package and says what it is (publisher, content hash,
the grants it requests in plain words, quotas, sandbox layers, and the problems that would make
install refuse it); then, once approved, ``plugin-host.plugins.install`` is sent that very content
hash and those very grants, and plugin-host refuses anything else. A person approves on a terminal
(``y`` or ``yes``); ``--approve`` approves what is shown without asking, and without a terminal it
is required: without it the command refuses before the mesh is asked anything.

``show NAME`` adds the consent people gave ``plugin:NAME`` (authz) to plugin-host's view, and for
each personal-data grant the plugin requests that no one has consented to, the ``meshctl consent
grant`` command a person runs to consent. ``remove`` asks first (``--yes``).

What is printed comes from :mod:`._plugins_render` (pure functions of the replies' documented
shapes); ``keygen`` and ``sign`` are in :mod:`._plugins_publish`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from shared import MeshClient, MeshError, MeshHome

from . import _confirm
from ._authz import call, with_mesh
from ._output import CliError, emit, emit_json
from ._plugins_render import (
    call_error,
    consent_of,
    installed_text,
    listing,
    log_lines,
    preview,
    question,
    shown,
    state_text,
)

#: How long ``show`` waits for authz's grants before it shows the plugin without them.
_CONSENT_TIMEOUT_S: Final = 10.0


def _install(args: argparse.Namespace, home: MeshHome) -> int:
    if not args.target:
        raise CliError("plugins install needs a PATH: the plugin's package (a directory or archive)", status=2)
    if not args.approve and not _confirm.on_terminal():
        # Before anything is read or asked of the mesh: a script must say what it approves.
        raise CliError("plugins install shows the capabilities a plugin requests and needs --approve to install "
                       "it without a terminal to ask: review it on a terminal, or add --approve", status=2)
    path = Path(args.target).expanduser().resolve()  # plugin-host runs in another working directory
    if not path.exists():
        raise CliError(f"{args.target}: no such plugin package (a directory or archive)", status=2)
    inspected = with_mesh(home, lambda c: call(c, "plugin-host.plugins.inspect", {"path": str(path)}))
    problems = inspected.get("problems") or []
    if args.json:
        if problems:
            emit_json(inspected)
        elif not args.approve:
            print(preview(inspected), file=sys.stderr)  # stdout is the install reply's
    else:
        print(preview(inspected), flush=True)
    if problems:
        raise CliError(f"{inspected['name']} {inspected['version']} cannot be installed: {problems[0]}"
                       + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""))
    if not args.approve:
        # Asked with no connection open: a person's answer may take longer than the mesh waits.
        _confirm.confirm(argparse.Namespace(command="plugins", action="install", yes=False), question(inspected))
    body = {"path": str(path), "approve_hash": inspected["content_hash"],
            "approve_capabilities": [c["grant"] for c in inspected.get("capabilities") or []],
            "enable": bool(args.enable)}
    view = with_mesh(home, lambda c: call(c, "plugin-host.plugins.install", body))
    emit(args.json, view, installed_text(view))
    return 0


async def _usernames(client: MeshClient) -> dict[str, str]:
    try:
        return {u["id"]: u["username"] for u in await call(client, "authn.users.list")}
    except MeshError:
        return {}  # the ids alone are shown


def _show(args: argparse.Namespace, home: MeshHome, name: str) -> int:
    async def steps(client: MeshClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        view = await call(client, "plugin-host.plugins.show", {"name": name})
        try:
            grants = await client.call("authz.consent.list", {"all": False}, timeout=_CONSENT_TIMEOUT_S)
        except MeshError as exc:
            return view, {"grants": None, "needs_consent": None, "error": exc.message}, {}
        consent = consent_of(view, grants)
        return view, consent, ({} if args.json or not consent["grants"] else await _usernames(client))

    view, consent, names = with_mesh(home, steps)
    emit(args.json, {**view, "consent": consent}, shown(view, consent, names))
    return 0


def _remove(args: argparse.Namespace, home: MeshHome, name: str) -> int:
    _confirm.require(args)  # before the mesh is asked anything
    view = with_mesh(home, lambda c: call(c, "plugin-host.plugins.show", {"name": name}))
    _confirm.confirm(args, f"remove plugin {view['name']} {view['version']}: it stops, its package and logs are "
                           "deleted; its data in storage stays, and an older version can never be installed again")
    removed = with_mesh(home, lambda c: call(c, "plugin-host.plugins.remove", {"name": name}))
    emit(args.json, removed, f"removed {removed['name']} {removed['version']}: its data in storage stays")
    return 0


def _call(args: argparse.Namespace, home: MeshHome, name: str) -> int:
    if not args.function:
        raise CliError("plugins call needs NAME FUNCTION [JSON]", status=2)
    try:
        arguments = None if args.body is None else json.loads(args.body)
    except json.JSONDecodeError as exc:
        raise CliError(f"JSON (the call's arguments) is not valid JSON: {exc.msg} at character {exc.pos}",
                       status=2) from None
    reply = with_mesh(home, lambda c: call(c, "plugin-host.call", {"plugin": name, "function": args.function,
                                                                   "args": arguments}))
    if args.json:
        emit_json(reply)
    if not reply.get("ok"):
        raise CliError(f"{name}.{args.function} failed: {call_error(reply.get('error'))}")
    if not args.json:
        emit_json(reply.get("value"))  # JSON is the readable form, as for `meshctl call`
    return 0


_BY_NAME: Final = {"show": "plugin-host.plugins.show", "enable": "plugin-host.plugins.enable",
                   "disable": "plugin-host.plugins.disable"}


def run_plugins(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl plugins install PATH [--approve] [--enable]``, ``list``, ``show NAME``, ``enable NAME``,
    ``disable NAME``, ``remove NAME [-y]``, ``logs NAME [-n N]``, ``call NAME FUNCTION [JSON]``."""
    if args.action == "install":
        return _install(args, home)
    if args.action == "list":
        reply = with_mesh(home, lambda c: call(c, "plugin-host.plugins.list"))
        emit(args.json, reply, listing(reply))
        return 0
    if not args.target:
        raise CliError(f"plugins {args.action} needs the plugin's NAME (meshctl plugins list shows them)", status=2)
    name = args.target
    if args.action == "call":
        return _call(args, home, name)
    if args.action == "remove":
        return _remove(args, home, name)
    if args.action == "logs":
        reply = with_mesh(home, lambda c: call(c, "plugin-host.plugins.logs", {"name": name, "limit": args.lines}))
        emit(args.json, reply, log_lines(reply))
        return 0
    if args.action == "show":
        return _show(args, home, name)
    view = with_mesh(home, lambda c: call(c, _BY_NAME[args.action], {"name": name}))
    emit(args.json, view, state_text(args.action, view))
    return 0


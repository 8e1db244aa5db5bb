"""``meshctl users`` and ``meshctl sessions``: people's accounts and their signed-in devices (authn).

``users totp NAME`` enrols TOTP: the secret is shown once as a QR code (segno) and the first code
from the app confirms it; the ten recovery codes are printed once.

Passwords are read from ``--password-file`` (0600) or asked twice on the terminal, and travel only
inside the operator's CURVE connection to authn, which checks them against its policy (length,
common passwords, the username) and answers with the reason when it refuses one. ``users delete``
and ``sessions revoke`` ask before acting (``--yes`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from shared import MeshHome

from . import _confirm, _intake
from ._audit import when
from ._mesh import connected
from ._output import CliError, emit, table
from ._render import qr_code

_TIMEOUT_S = 30.0


async def _call(home: MeshHome, method: str, body: dict[str, Any] | None = None) -> Any:
    async with connected(home) as client:
        return await client.call(method, body, timeout=_TIMEOUT_S)


def _users_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no users (meshctl users add NAME creates one)"
    return table(["USERNAME", "STATE", "SESSIONS", "CREATED", "ID"],
                 [[r["username"], "disabled" if r["disabled"] else "active", r.get("sessions"), when(r["created"]),
                   r["id"]] for r in rows])


def _sessions_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no open sessions"
    return table(["USER", "PEER", "DEVICE KEY", "SINCE", "LAST USED", "METHODS", "SESSION"],
                 [[r.get("username") or r.get("user"), r["peer"], r["device"][:16], when(r["since"]),
                   when(r["last_used"]), ",".join(r["amr"]), r["session"]] for r in rows])


def _show(user: dict[str, Any]) -> str:
    lines = [f"user {user['username']} ({'disabled' if user['disabled'] else 'active'})", f"  id: {user['id']}",
             f"  created: {when(user['created'])}, updated: {when(user['updated'])}"]
    sessions = [{**s, "username": user["username"]} for s in user.get("open_sessions", [])]
    return "\n".join(lines) + "\n" + _sessions_table(sessions)


def _password(args: argparse.Namespace, what: str) -> bytearray:
    # authn applies the policy and names what is wrong; here only usable text is required.
    return _intake.ask_new(args.password_file, what, checked=False)


def _totp(args: argparse.Namespace, home: MeshHome) -> int:
    """``users totp NAME``: begin, show the QR code, and on a terminal ask for the first code;
    ``users totp-confirm NAME --code CODE`` finishes an enrolment begun without a terminal."""
    if args.action == "totp":
        begun = asyncio.run(_call(home, "authn.mfa.totp.begin", {"username": args.name}))
        if args.json:
            emit(True, begun, "")
        else:
            print(qr_code(begun["uri"]), end="")
            print(f"scan this with an authenticator app, or enter the secret {begun['secret']} by hand")
        code = args.code
        if code is None:
            if not _intake.on_terminal():
                print(f"then: meshctl users totp-confirm {args.name} --code CODE", file=sys.stderr)
                return 0
            code = input("the code the app shows now: ").strip()
    else:
        code = args.code
        if not code:
            raise CliError("users totp-confirm needs --code CODE (the code the app shows now)", status=2)
    done = asyncio.run(_call(home, "authn.mfa.totp.confirm", {"username": args.name, "code": code}))
    lines = [f"TOTP is on for {done['username']}. Recovery codes (each works once; store them now, they are "
             "not shown again):", *(f"  {c}" for c in done["recovery_codes"])]
    emit(args.json, done, "\n".join(lines))
    return 0


def _passkeys(args: argparse.Namespace, home: MeshHome) -> int:
    """``users passkeys NAME [--remove CREDENTIAL]``."""
    if args.remove:
        _confirm.confirm(args, f"remove passkey {args.remove[:16]}... of {args.name}: it signs in no more")
        result = asyncio.run(_call(home, "authn.users.passkeys.remove", {"username": args.name,
                                                                         "credential": args.remove}))
        emit(args.json, result, f"passkey removed from {result['username']}")
        return 0
    rows = asyncio.run(_call(home, "authn.users.passkeys", {"username": args.name}))
    text = table(["CREDENTIAL", "CREATED", "LAST USED", "COUNTER", "AAGUID"],
                 [[r["credential"], when(r["created"]), when(r["last_used"]), r["sign_count"], r["aaguid"]]
                  for r in rows]) if rows else f"{args.name} has no passkeys (one is added from a signed-in device)"
    emit(args.json, rows, text)
    return 0


def run_users(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl users add|list|show|disable|enable|delete|passwd [NAME]``."""
    if args.action == "list":
        rows = asyncio.run(_call(home, "authn.users.list"))
        emit(args.json, rows, _users_table(rows))
        return 0
    if not args.name:
        raise CliError(f"users {args.action} needs a NAME", status=2)
    if args.action in ("totp", "totp-confirm"):
        return _totp(args, home)
    if args.action == "totp-off":
        _confirm.confirm(args, f"turn TOTP off for {args.name}: the password alone signs in again, and the "
                               "recovery codes are gone")
        result = asyncio.run(_call(home, "authn.mfa.totp.off", {"username": args.name}))
        emit(args.json, result, f"TOTP is off for {result['username']}" if result["removed"] else
             f"{result['username']} had no TOTP")
        return 0
    if args.action == "passkeys":
        return _passkeys(args, home)
    if args.action == "show":
        user = asyncio.run(_call(home, "authn.users.show", {"username": args.name}))
        emit(args.json, user, _show(user))
        return 0
    if args.action in ("add", "passwd"):
        password = _password(args, f"password for {args.name}")
        try:
            result = asyncio.run(_call(home, f"authn.users.{args.action}",
                                       {"username": args.name, "password": _intake.wire(password)}))
        finally:
            _intake.wipe(password)
        text = (f"user {result['username']} added (id {result['id']})" if args.action == "add" else
                f"password of {result['username']} changed; {result['sessions_ended']} session(s) ended")
        emit(args.json, result, text)
        return 0
    if args.action == "delete":
        _confirm.confirm(args, f"delete user {args.name}: the account, its sessions and known devices are gone for "
                               "good, and every token of it is refused from the next request")
        result = asyncio.run(_call(home, "authn.users.delete", {"username": args.name}))
        emit(args.json, result, f"user {result['username']} deleted; {result['sessions_ended']} session(s) ended")
        return 0
    result = asyncio.run(_call(home, f"authn.users.{args.action}", {"username": args.name}))
    state = "disabled" if result["disabled"] else "enabled"
    emit(args.json, result, f"user {result['username']} {state}" + (
        f"; {result['sessions_ended']} session(s) ended" if result.get("sessions_ended") else ""))
    return 0


def run_sessions(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl sessions list [--user NAME]`` and ``meshctl sessions revoke (--session ID | --user NAME |
    --device FP)``."""
    if args.action == "list":
        rows = asyncio.run(_call(home, "authn.sessions.list", {"username": args.user} if args.user else {}))
        emit(args.json, rows, _sessions_table(rows))
        return 0
    chosen = {k: v for k, v in (("session", args.session), ("username", args.user), ("device", args.device)) if v}
    if len(chosen) != 1:
        raise CliError("sessions revoke needs exactly one of --session ID, --user NAME or --device FP", status=2)
    (what, value), = chosen.items()
    scope = {"session": f"session {value}", "username": f"every session of user {value}",
             "device": f"every session of the device key {value[:16]}"}[what]
    _confirm.confirm(args, f"end {scope}: its tokens are refused from the next request")
    result = asyncio.run(_call(home, "authn.sessions.revoke", chosen))
    emit(args.json, result, f"{len(result['ended'])} session(s) ended")
    return 0

"""``meshctl security lock|unlock|login|session|clear|passwd`` and ``meshctl keys list|rotate``.

Each is one call to ``keyvault.<method>`` as the operator identity, through the
broker and its ACL like any peer's. Passwords are asked afresh for every
operation that takes one (unlock, login, passwd, rotate), whatever the session:
a session only lets ``keys list`` through.

The session token ``meshctl security login`` receives is kept in
``<home>/run/meshctl.session``: created 0600 with ``O_EXCL`` (a new login
unlinks the old file first), refused if anyone else may read it, and deleted by
``security clear`` or as soon as keyvault says the session is gone. keyvault
binds it to the operator certificate; the master key is never written to disk
for a session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any, Final

from shared import PURPOSES, MeshHome, Unauthenticated
from shared.files import write_exclusive

from . import _confirm, _intake, _render
from ._mesh import connected
from ._output import CliError, emit_json

SESSION_FILE: Final = "meshctl.session"
# keyvault derives the master key with Argon2id (seconds with the default 1 GiB profile;
# twice for passwd) and serves one request at a time: password operations get room.
_SLOW_S: Final = 120.0
_FAST_S: Final = 10.0
_MAX_TOKEN: Final = 1024


def session_path(home: MeshHome) -> Path:
    return home.run / SESSION_FILE


def save_session(home: MeshHome, token: str) -> Path:
    """Keep ``token`` in the session file: any old file is unlinked, the new one created 0600, O_EXCL."""
    path = session_path(home)
    home.run.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    write_exclusive(path, token.encode("ascii"), 0o600)
    return path


def load_session(home: MeshHome) -> str | None:
    """The stored token, or None when there is none; refuse a file others may read."""
    path = session_path(home)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CliError(f"cannot read the session file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
            raise CliError(f"{path} is not a private (0600) file of this user: delete it and log in again")
        data = os.read(fd, _MAX_TOKEN + 1)
    finally:
        os.close(fd)
    token = data.decode("ascii", "replace").strip()
    if not token or len(token) > _MAX_TOKEN:
        raise CliError(f"{path} does not hold a session token: delete it and log in again")
    return token


def drop_session(home: MeshHome) -> bool:
    try:
        session_path(home).unlink()
    except FileNotFoundError:
        return False
    return True


def _slow(what: str) -> None:
    # Only for a person watching: on a pipe, stderr stays the one-line error channel.
    if sys.stderr.isatty():
        print(f"{what} (Argon2id: this takes a few seconds)...", file=sys.stderr, flush=True)


async def _call(home: MeshHome, method: str, body: Any = None, timeout: float = _FAST_S) -> Any:
    async with connected(home) as client:
        return await client.call(f"keyvault.{method}", body, timeout=timeout)


async def _with_password(home: MeshHome, method: str, password: bytearray, **fields: Any) -> Any:
    """Call ``keyvault.<method>`` with ``password`` in its body; the buffer is wiped after."""
    try:
        body = {"password": _intake.wire(password), **fields}
    finally:
        _intake.wipe(password)
    _slow("checking the password")
    return await _call(home, method, body, _SLOW_S)


async def _session_call(home: MeshHome, method: str) -> Any:
    """A call that needs the login session; a stale session file is deleted."""
    token = load_session(home)
    if token is None:
        raise CliError("no meshctl session: run `meshctl security login` first")
    async with connected(home) as client:
        try:
            return await client.call(f"keyvault.{method}", {"token": token}, timeout=_FAST_S)
        except Unauthenticated:
            drop_session(home)
            raise CliError("the meshctl session expired or was ended: run `meshctl security login`") from None


async def security(args: argparse.Namespace, home: MeshHome) -> dict[str, Any]:
    """Run ``meshctl security ACTION``; return its JSON-ready result."""
    action = args.action
    if action == "lock":
        # Asked before connecting: the prompt must not hold a connection open while a person reads it.
        _confirm.confirm(args, f"seal the mesh in {home.root}: every key is wiped from memory and from the keyring "
                               "and every session ends; services wait until `meshctl security unlock` (the master "
                               "password)")
        reply = await _call(home, "lock")
        drop_session(home)  # keyvault ended every session when it sealed
        return {"sealed": bool(reply["sealed"])}
    if action == "unlock":
        reply = await _with_password(home, "unlock", _intake.ask_password(args.password_file))
        return {"sealed": bool(reply["sealed"])}
    if action == "login":
        reply = await _with_password(home, "login", _intake.ask_password(args.password_file))
        path = save_session(home, str(reply["token"]))
        return {"active": True, "idle_s": reply["idle_s"], "session_file": str(path)}  # never the token
    if action == "session":
        token = load_session(home)
        if token is None:
            return {"active": False, "remaining_s": None, "reason": "no session file"}
        reply = await _call(home, "session", {"token": token})
        if not reply["active"]:
            drop_session(home)
            return {"active": False, "remaining_s": None, "reason": "expired or ended"}
        return {"active": True, "remaining_s": reply["remaining_s"]}
    if action == "clear":
        return await _clear(home)
    # passwd: the current password first, then the new one (checked for strength here too).
    old = _intake.ask_password(args.old_password_file, "current master password", "--old-password-file")
    try:
        new = _intake.ask_new(args.new_password_file, "new master password", "--new-password-file")
    except BaseException:
        _intake.wipe(old)
        raise
    try:
        body = {"old_password": _intake.wire(old), "new_password": _intake.wire(new)}
    finally:
        _intake.wipe(old)
        _intake.wipe(new)
    _slow("checking the current password and deriving the new master key")
    reply = await _call(home, "passwd", body, _SLOW_S)
    return {"changed": bool(reply["changed"])}


async def _clear(home: MeshHome) -> dict[str, Any]:
    token = load_session(home)
    if token is None:
        return {"cleared": False, "reason": "no session file"}
    try:
        reply = await _call(home, "logout", {"token": token})
    except CliError as exc:
        # The token is useless without the file; still, say that keyvault did not hear of it.
        drop_session(home)
        raise CliError(f"session file deleted, but keyvault was not told ({exc.message}); the session "
                       "expires by itself after its idle time") from None
    drop_session(home)
    return {"cleared": True, "was_active": bool(reply["cleared"])}


async def keys(args: argparse.Namespace, home: MeshHome) -> Any:
    """Run ``meshctl keys ACTION``; return its JSON-ready result."""
    if args.action == "list":
        return await _session_call(home, "keys.list")
    if not args.purpose:
        # audit-signing is left out: keyvault refuses to rotate it (exported checkpoints rest on it).
        rotatable = [p for p in PURPOSES if p != "audit-signing"]
        raise CliError(f"keys rotate needs a PURPOSE: one of {', '.join(rotatable)}", status=2)
    # Worded for every purpose: what follows a rotation (storage re-encrypting, audit re-keying)
    # depends on the purpose, and README's keys rotate row says which.
    _confirm.confirm(args, f"rotate the {args.purpose} data key: new writes use a new version, older versions "
                           "stay readable")
    password = _intake.ask_password(args.password_file)
    reply = await _with_password(home, "keys.rotate", password, purpose=args.purpose)
    return {"purpose": reply["purpose"], "version": reply["version"]}


def run(args: argparse.Namespace, home: MeshHome) -> int:
    """The ``security`` and ``keys`` commands: print the result (text or ``--json``), exit 0."""
    if args.command == "security":
        result = asyncio.run(security(args, home))
        text = _render.security(args.action, result)
    else:
        result = asyncio.run(keys(args, home))
        text = _render.keys(args.action, result)
    if args.json:
        emit_json(result)
    else:
        print(text)
    return 0

"""``meshctl roles`` and ``meshctl policy``: the authz service's role assignments and policies.

Principals are written as the wire takes them, ``kind:name`` (``service:notes``, ``device:phone``,
``plugin:weather``, ``user:<user id>``); a malformed one is a usage error here, before the mesh is
asked. ``policy test --owner``/``--user`` take a user id, or a username that authn resolves to its
id. ``policy test`` exits 0 when the request would be allowed and 1 when it would be denied, so a
script can ask the question as it would ask ``test``. ``roles revoke`` asks first (``--yes``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from shared import MeshClient, MeshHome

from . import _confirm
from ._audit import when
from ._mesh import connected
from ._output import CliError, emit, table

_TIMEOUT_S: Final = 30.0
#: The wire's principal form (services/authz/schema.py PRINCIPAL_RE), checked here so that a typo is
#: a usage error naming the form instead of a round trip to authz.
_PRINCIPAL_RE: Final = re.compile(r"(user|service|device|plugin|operator):[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A user id as authn makes them (16 random bytes in hex); anything else is taken as a username.
_USER_ID_RE: Final = re.compile(r"[0-9a-fA-F]{32}")
_FORM: Final = "kind:name, e.g. service:notes, device:phone, plugin:weather or user:<user id>"

T = TypeVar("T")


def with_mesh(home: MeshHome, steps: Callable[[MeshClient], Awaitable[T]]) -> T:
    """Run ``steps`` over one operator connection; mesh refusals become one-line errors."""
    async def run() -> T:
        async with connected(home) as client:
            return await steps(client)
    return asyncio.run(run())


async def call(client: MeshClient, method: str, body: dict[str, Any] | None = None) -> Any:
    return await client.call(method, body, timeout=_TIMEOUT_S)


def principal(text: str | None, what: str = "PRINCIPAL", kinds: tuple[str, ...] = ()) -> str:
    """``text`` if it is a principal in the wire's form (and of one of ``kinds``, when given); else
    a usage error naming the form."""
    if not text:
        raise CliError(f"{what} is missing: give it as {_FORM}", status=2)
    kind = text.partition(":")[0]
    if not _PRINCIPAL_RE.fullmatch(text) or (kinds and kind not in kinds):
        allowed = f" (kind one of {', '.join(kinds)})" if kinds else ""
        raise CliError(f"{what} {text!r} is not {_FORM}{allowed}", status=2)
    return text


async def user_id(client: MeshClient, value: str) -> str:
    """A user id as given, or the id authn holds for the username ``value``."""
    if _USER_ID_RE.fullmatch(value):
        return value.lower()
    user = await call(client, "authn.users.show", {"username": value})
    return str(user["id"])


def _roles_table(listed: list[dict[str, Any]], who: str | None) -> str:
    rows = [[entry["principal"], r["role"], r["source"], r.get("assigned_by"), when(r.get("assigned_at"))
             if r.get("assigned_at") is not None else None] for entry in listed for r in entry["roles"]]
    if not rows:
        return f"no roles assigned to {who}" if who else "no roles assigned"
    return table(["PRINCIPAL", "ROLE", "SOURCE", "BY", "SINCE"], rows)


def run_roles(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl roles list [PRINCIPAL]``, ``roles assign PRINCIPAL ROLE``, ``roles revoke PRINCIPAL ROLE``."""
    if args.action == "list":
        body = {"principal": principal(args.principal)} if args.principal else {}
        listed = with_mesh(home, lambda c: call(c, "authz.roles.list", body))
        # A principal asked about by name is listed even with no roles; an empty entry says nothing.
        held = [entry for entry in listed if entry["roles"]]
        emit(args.json, held, _roles_table(held, args.principal))
        return 0
    who = principal(args.principal)
    if not args.role:
        raise CliError(f"roles {args.action} needs a ROLE after the PRINCIPAL", status=2)
    change = {"principal": who, "role": args.role}
    if args.action == "assign":
        result = with_mesh(home, lambda c: call(c, "authz.roles.assign", change))
        emit(args.json, result, f"assigned: {who} holds {args.role} from the next decision "
                                f"(its roles: {', '.join(result['roles'])})")
        return 0
    _confirm.require(args)  # before the mesh is asked anything: a refusal depends on nothing else
    listed = with_mesh(home, lambda c: call(c, "authz.roles.list", {"principal": who}))
    if args.role in {r["role"] for entry in listed for r in entry["roles"] if r["source"] == "assigned"}:
        # Asked between two connections: a person's answer may take longer than the mesh waits for a
        # silent peer. Only a revocation that would happen is asked about; authz names what is wrong
        # with any other (a declared role, one not held).
        _confirm.confirm(args, f"revoke the role {args.role} of {who}: decisions no longer see it from the "
                               "next request")
    result = with_mesh(home, lambda c: call(c, "authz.roles.revoke", change))
    emit(args.json, result, f"revoked: {who} no longer holds {args.role} from the next decision "
                            f"(its roles: {', '.join(result['roles']) or 'none'})")
    return 0


def _where(file: str, line: int) -> str:
    return f"{Path(file).name}:{line}"


def _policy_text(shown: dict[str, Any]) -> str:
    categories = ", ".join(f"{name} ({level})" for name, level in shown["categories"].items())
    rows = [[p["id"], p["effect"], _where(p["file"], p["line"]), p["reason"] or None] for p in shown["policies"]]
    return "\n".join([f"directory: {shown['directory']}",
                      f"digest: {shown['digest']}, loaded {when(shown['loaded_at'])}",
                      f"categories: {categories}", table(["ID", "EFFECT", "FILE:LINE", "REASON"], rows)])


def _decision_text(result: dict[str, Any]) -> str:
    lines = [f"{result['decision']}: {result['reason']}"]
    lines += [f"  decided by {d['id']} ({d['effect']}, {d['file']}:{d['line']})" for d in result.get("deciding", [])]
    return "\n".join(lines)


def _test(args: argparse.Namespace, home: MeshHome) -> int:
    who = principal(args.subject)
    if not args.verb or not args.category:
        raise CliError("policy test needs PRINCIPAL ACTION CATEGORY (e.g. service:notes read memories)", status=2)
    if not args.owner:
        raise CliError("policy test needs --owner USER (the user id or username whose data it is)", status=2)

    async def ask(client: MeshClient) -> Any:
        owner = await user_id(client, args.owner)
        acting = await user_id(client, args.user) if args.user else ""
        return await call(client, "authz.policy.test", {"principal": who, "action": args.verb,
                                                        "category": args.category, "owner": owner,
                                                        "user": acting, "purpose": args.purpose or ""})

    result = with_mesh(home, ask)
    emit(args.json, result, _decision_text(result))
    return 0 if result["allow"] else 1  # the verdict is the exit status, as `test` has it


def run_policy(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl policy show|validate [DIR]|test PRINCIPAL ACTION CATEGORY --owner U|reload``."""
    if args.action == "test":
        return _test(args, home)
    if args.action == "show":
        shown = with_mesh(home, lambda c: call(c, "authz.policy.show"))
        emit(args.json, shown, _policy_text(shown))
        return 0
    if args.action == "validate":
        # authz may run in another working directory: a relative DIR means this shell's.
        body = {"directory": os.path.abspath(args.subject)} if args.subject else {}
        result = with_mesh(home, lambda c: call(c, "authz.policy.validate", body))
        if not result["valid"]:
            if args.json:
                emit(True, result, "")
            raise CliError(f"invalid: {result['error']}")
        emit(args.json, result, f"valid: {result['policies']} policies ({result['directory']}, "
                                f"digest {result['digest']})")
        return 0
    result = with_mesh(home, lambda c: call(c, "authz.policy.reload"))
    emit(args.json, result, f"reloaded: digest {result['digest']} (was {result['previous']}), "
                            f"{result['policies']} policies")
    return 0

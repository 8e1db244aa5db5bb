"""``meshctl consent``: owners' consent grants (authz), listed, shown, revoked, and granted for a person.

A grant is the owner's own act, and authz takes it only with the owner's fresh access token. So
``consent grant --user NAME`` signs the person in itself: their password is asked on the terminal
(or read from ``--password-file``, 0600), ``authn.login.password`` issues a token bound to meshctl's
own key, and when the account has TOTP on, the code is asked next (or taken from ``--code``). The
token is used for the one ``authz.consent.grant`` call and the session is ended with
``authn.logout`` whatever happened. Neither the password nor the token is ever printed or logged;
the password is held in a ``bytearray`` and wiped once sent.

``consent revoke`` asks first (``--yes`` to skip); the very next request the grant covered is denied.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any, Final

from shared import MeshClient, MeshError, MeshHome

from . import _confirm, _intake
from ._audit import when
from ._authz import call, principal, user_id, with_mesh
from ._output import CliError, emit, warn

#: What authn says when the password was right and a one-time code is still needed
#: (services/authn/logins.py OTP_REQUIRED; tests/test_meshctl_authz.py keeps the two together).
OTP_MARKER: Final = "a one-time code is required"
_DAY_S: Final = 86400


def _words(items: list[str]) -> str:
    """``read``, ``read and write``, ``read, write and delete``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _named(who: str, names: dict[str, str]) -> str:
    """A person as people know them: an owner's user id as their username, a ``user:<id>`` grantee
    with its username beside it; an id authn did not name stays as it is."""
    if who.startswith("user:"):
        bare = who.removeprefix("user:")
        return f"{names[bare]} ({who})" if bare in names else who
    return names.get(who, who)


def summary(grant: dict[str, Any], names: dict[str, str]) -> str:
    """One sentence a person reads: who can do what with whose data, for what, until when."""
    verb = "could" if grant["state"] != "active" else "can"
    return (f"{_named(grant['grantee'], names)} {verb} {_words(grant['actions'])} "
            f"{_words(grant['categories'])} of {_named(grant['owner'], names)} for {grant['purpose']} "
            f"until {when(grant['expires_at'])}")


def _listing(grants: list[dict[str, Any]], names: dict[str, str]) -> str:
    if not grants:
        return "no consent grants"
    return "\n".join(f"{g['id']}  {g['state']}: {summary(g, names)}" for g in grants)


def _show(grant: dict[str, Any], names: dict[str, str]) -> str:
    revoked = f", revoked {when(grant['revoked_at'])}" if grant.get("revoked_at") is not None else ""
    return "\n".join([f"grant {grant['id']} ({grant['state']})", f"  {summary(grant, names)}",
                      f"  granted {when(grant['granted_at'])} in session {grant['granted_by']}{revoked}"])


async def _usernames(client: MeshClient) -> dict[str, str]:
    """User id -> username, for the text only: without authn the ids alone are shown."""
    try:
        return {u["id"]: u["username"] for u in await call(client, "authn.users.list")}
    except MeshError:
        return {}


def _list(args: argparse.Namespace, home: MeshHome) -> int:
    async def steps(client: MeshClient) -> tuple[list[dict[str, Any]], dict[str, str]]:
        body: dict[str, Any] = {"all": bool(args.all)}
        if args.user:
            body["owner"] = await user_id(client, args.user)
        grants = await call(client, "authz.consent.list", body)
        return grants, ({} if args.json else await _usernames(client))

    grants, names = with_mesh(home, steps)
    emit(args.json, grants, _listing(grants, names))
    return 0


def _shown(home: MeshHome, grant_id: str, names_too: bool) -> tuple[dict[str, Any], dict[str, str]]:
    async def steps(client: MeshClient) -> tuple[dict[str, Any], dict[str, str]]:
        grant = await call(client, "authz.consent.show", {"grant_id": grant_id})
        return grant, (await _usernames(client) if names_too else {})
    return with_mesh(home, steps)


def _revoke(args: argparse.Namespace, home: MeshHome, grant_id: str) -> int:
    _confirm.require(args)  # before the mesh is asked anything
    grant, names = _shown(home, grant_id, True)
    if grant["state"] == "revoked":
        emit(args.json, grant, f"already revoked {when(grant['revoked_at'])}: nothing changed")
        return 0
    what = f"{_words(grant['actions'])} {_words(grant['categories'])} of {_named(grant['owner'], names)}"
    # Asked with no connection open: a person's answer may take longer than the mesh waits for a peer.
    _confirm.confirm(args, f"revoke consent grant {grant_id}: {grant['grantee']} can no longer {what} for "
                           f"{grant['purpose']}, from the next request")
    revoked = with_mesh(home, lambda c: call(c, "authz.consent.revoke", {"grant_id": grant_id}))
    emit(args.json, revoked, f"revoked: {grant['grantee']} can no longer {what} from the next request")
    return 0


def _login(home: MeshHome, username: str, password: bytearray, code: str | None) -> dict[str, Any]:
    body = {"username": username, "password": _intake.wire(password)}
    if code is not None:
        body["otp"] = code
    tokens: dict[str, Any] = with_mesh(home, lambda c: call(c, "authn.login.password", body))
    return tokens


def _signed_in(args: argparse.Namespace, home: MeshHome) -> dict[str, Any]:
    """The person's tokens, bound to meshctl's key: password, then a one-time code if authn wants one."""
    password = _intake.ask_password(args.password_file, f"password of {args.user}")
    try:
        try:
            return _login(home, args.user, password, args.code)
        except CliError as exc:
            if OTP_MARKER not in exc.message or args.code is not None:
                raise
        if not _intake.on_terminal():
            raise CliError(f"{args.user} has TOTP on: give the code the app shows with --code CODE", status=2)
        # Asked with no connection open, like every question meshctl asks a person; without echo,
        # since a recovery code is a secret until it is used, and off stdout, which --json owns.
        code = getpass.getpass(f"one-time code of {args.user} (or a recovery code): ").strip()
        return _login(home, args.user, password, code)
    finally:
        _intake.wipe(password)


def _grant(args: argparse.Namespace, home: MeshHome, grantee: str) -> int:
    missing = [flag for flag, value in (("--user NAME", args.user), ("--category C", args.categories),
                                        ("--action A", args.actions), ("--purpose P", args.purpose)) if not value]
    if missing:
        raise CliError(f"consent grant needs {', '.join(missing)}", status=2)
    if args.days is not None and args.duration_s is not None:
        raise CliError("--days and --duration-s say the same thing: give one of them", status=2)
    duration = args.duration_s if args.days is None else args.days * _DAY_S
    tokens = _signed_in(args, home)
    terms: dict[str, Any] = {"access_token": tokens["access_token"], "grantee": grantee,
                             "categories": args.categories, "actions": args.actions, "purpose": args.purpose}
    if duration is not None:
        terms["duration_s"] = duration  # otherwise authz's default ([authz] consent_default_s, 30 days)

    async def steps(client: MeshClient) -> dict[str, Any]:
        try:
            granted: dict[str, Any] = await call(client, "authz.consent.grant", terms)
            return granted
        finally:
            # The sign-in existed for this one grant: it ends now, granted or not.
            try:
                await call(client, "authn.logout", {"access_token": tokens["access_token"]})
            except MeshError as exc:
                warn([f"the sign-in of {args.user} for this grant was not ended ({exc.code}); end it with "
                      f"`meshctl sessions revoke --session {tokens['session']}`"])

    try:
        grant = with_mesh(home, steps)
    finally:
        terms.clear()
        tokens.clear()
    emit(args.json, grant, f"granted {grant['id']}: {summary(grant, {grant['owner']: args.user})}")
    return 0


def run_consent(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl consent list [--user NAME] [--all]``, ``show GRANT_ID``, ``revoke GRANT_ID [-y]``,
    ``grant GRANTEE --user NAME --category C --action A --purpose P [--days N | --duration-s S]``."""
    if args.action == "list":
        return _list(args, home)
    if args.action == "grant":
        return _grant(args, home, principal(args.target, "GRANTEE", ("user", "service", "device", "plugin")))
    if not args.target:
        raise CliError(f"consent {args.action} needs a GRANT_ID (meshctl consent list shows them)", status=2)
    if args.action == "revoke":
        return _revoke(args, home, args.target)
    grant, names = _shown(home, args.target, not args.json)
    emit(args.json, grant, _show(grant, names))
    return 0

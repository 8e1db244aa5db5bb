"""``meshctl certs revoke REF``: look first, warn, ask, then revoke exactly the key that was shown.

A revocation is immediate (the broker refuses the key from its next message, on open connections
too), so meshctl resolves REF with ``mesh.certs.show`` before it asks, and the question names the
key's name, role and fingerprint. When the key belongs to a service the mesh declares
(``shared.mesh_config(home.root).services``), the warning says that service will stop; when it is
meshctl's own certificate, that meshctl will be locked out. The revocation then names the key by
its Z85 public key, not by REF, so a name re-bound between the question and the answer cannot make
meshctl revoke a key the operator was not shown.

Revoking a key that is already revoked changes nothing and exits 0, saying so: the state the
operator asked for holds, and a script that revokes "to be sure" must not fail for it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from shared import MeshError, MeshHome, mesh_config

from . import _confirm, _mesh, _render
from ._output import CliError


async def _show(home: MeshHome, ref: str) -> dict[str, Any]:
    async with _mesh.connected(home) as client:
        entry: dict[str, Any] = await client.call("mesh.certs.show", {"ref": ref}, timeout=10.0)
    return entry


def warnings(home: MeshHome, entry: dict[str, Any]) -> list[str]:
    """What else stops when ``entry``'s key is revoked, one line each."""
    name = entry.get("name")
    if name == _mesh.OPERATOR:
        return [f"this is meshctl's own certificate: every later meshctl command that talks to the mesh is "
                f"refused, `meshctl certs unrevoke {name}` included"]
    try:
        declared = mesh_config(home.root).services
    except MeshError as exc:
        return [f"cannot tell whether {name} is a mesh service ({exc.message})"]
    if name in declared:
        return [f"{name} will stop: it is a service this mesh declares, and the broker refuses its key from the "
                f"next message (`meshctl certs unrevoke {name}` lets it back in)"]
    return []


def _already(entry: dict[str, Any]) -> dict[str, Any]:
    return {"name": entry.get("name"), "fingerprint": entry["fingerprint"], "revoked": True,
            "already_revoked": True}


def revoke(args: argparse.Namespace, home: MeshHome) -> dict[str, Any]:
    """Run ``meshctl certs revoke``; the result says whether the key was revoked now or before."""
    _confirm.require(args)
    entry = asyncio.run(_show(home, args.ref))
    if entry["state"] == "revoked":
        return _already(entry)
    if entry["state"] != "allowed":
        raise CliError(f"{args.ref} is a {entry['state']} key, not an allowed one: there is nothing to revoke "
                       f"(`meshctl certs reject {args.ref}` refuses a pending key for good)")
    who = f"{entry['name']} (role {entry['role']}, fingerprint {entry['fingerprint'][:16]})"
    _confirm.confirm(args, f"revoke the certificate of {who}: the broker refuses it from its next message, "
                           "on open connections too", warnings(home, entry))
    try:
        result = asyncio.run(_mesh.certs(home, "revoke", entry["public_key"], None, None, None))
    except CliError as exc:
        if "is revoked, not allowed" in exc.message:  # revoked by someone else since it was shown
            return _already(entry)
        raise
    return {**result, "revoked": True, "already_revoked": False}


def render(result: dict[str, Any]) -> str:
    if result["already_revoked"]:
        who = f"{result['name']} " if result.get("name") else ""
        return f"{who}(fingerprint {result['fingerprint'][:16]}) is already revoked: nothing changed"
    return _render.certs("revoke", result)

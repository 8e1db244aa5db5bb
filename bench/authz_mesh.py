"""The authz bench's mesh: its mesh.toml (the repository's rules and settings, and the bench's
declared additions); the start of authn, authz and storage with a deadline on each; the person's
account, added by the operator and signed in through the caller (bench/authz.py). Built from
bench/authn_mesh.py's pieces: the same keystore, home and waits."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared import MeshClient, MeshConfig

from .authn_mesh import (
    CALLER,
    OPERATOR,
    caller_rule,
    check_authn,
    granted,
    home_toml,
    settings,
    start_service,
    toml_list,
    wait_vault,
)
from .harness import BenchError, Children
from .meshcalls import call, connect

USERNAME: Final = "benchreader"
SERVICES: Final = ("keyvault", "audit", "authn", "authz", "storage")
IDENTITIES: Final = {**dict.fromkeys(SERVICES, "service"), CALLER: "service", OPERATOR: "operator"}
#: What the repository's [acl.role.service] must grant: the caller's sign-in, decision and data
#: calls, and the two questions storage's access gate asks of every call with a person's token.
CALLER_NEEDS: Final = ("authn.login.*", "authz.check", "storage.kv.*")
GATE_NEEDS: Final = ("authn.verify", "authz.check")
#: The authz role the caller's declaration gives it (the shipped policies let it act for the owner).
CALLER_ROLES: Final = ("user-data",)
#: The bench's additions to the caller's identity rule: the two bare round trips it compares with.
HEALTH_CALLS: Final = ("authz.health", "storage.health")
#: authz's own needs, from its declaration: topics and its data key.
AUTHZ_PUBLISHES: Final = "authz."
AUTHZ_SUBSCRIBES: Final = "security."
AUTHZ_KEY: Final = "authz"


def _check_authz(repo: MeshConfig) -> None:
    own = repo.acl.identity.get("authz")
    if own is None or AUTHZ_PUBLISHES not in own.publish or AUTHZ_SUBSCRIBES not in own.subscribe:
        raise BenchError(f'mesh.toml: authz may not publish "{AUTHZ_PUBLISHES}" and subscribe to '
                         f'"{AUTHZ_SUBSCRIBES}" ([services.authz] publish, subscribe)')
    if AUTHZ_KEY not in repo.keyvault.entitlements.get("authz", ()):
        raise BenchError(f'mesh.toml: authz is not entitled to "{AUTHZ_KEY}" ([services.authz] keys)')
    if repo.authz.policy_dir and not Path(repo.authz.policy_dir).is_absolute():
        raise BenchError("mesh.toml: [authz] policy_dir is relative to the mesh home; the bench runs in a "
                         "home of its own and needs an absolute one (or the shipped directory)")


def mesh_toml(repo: MeshConfig, anchors: Path) -> str:
    """The bench home's mesh.toml: the repository's roles, the identity rules of the processes the
    bench runs, its entitlements, ``[authn]``, ``[authz]`` and ``[argon2.authentication]``; then the
    bench's additions: the caller declared with the ``user-data`` role (no process), and its
    ``authz.health`` and ``storage.health`` round trips; limits that never refuse the bench; the file
    keystore with its anchors in ``anchors``; a tiny setup-only master profile."""
    granted(repo, tuple(dict.fromkeys((*CALLER_NEEDS, *GATE_NEEDS))))
    check_authn(repo)
    _check_authz(repo)
    bench_only = f"""\
# The bench only: the caller, declared as a frontend would be (a service whose process the bench
# is), holding the role that lets it act for the person whose token it presents.
[services.{CALLER}]
process = "none"
roles = {toml_list(CALLER_ROLES)}

# The bench only: the authz.health and storage.health round trips, for comparison.
{caller_rule(repo, CALLER, HEALTH_CALLS)}"""
    return home_toml(repo, anchors, SERVICES, bench_only,
                     f"[authn]\n{settings(repo.authn)}\n\n[authz]\n{settings(repo.authz)}")


async def start_mesh(kids: Children, operator: MeshClient) -> dict[str, int]:
    """With broker, keyvault and audit started: wait until keyvault is unsealed and audit healthy,
    then start authn, authz and storage in turn, each waited for until ready; their pids."""
    await wait_vault(kids, operator)
    return {name: await start_service(kids, operator, name) for name in ("authn", "authz", "storage")}


@dataclass
class Reader:
    """The person signed in through the caller: their id and their latest access token."""

    password: str
    user: str = ""
    token: str = ""


async def login(client: MeshClient, reader: Reader) -> None:
    reply = await call(client, "authn.login.password", {"username": USERNAME, "password": reader.password})
    if not isinstance(reply, dict) or reply.get("user") != reader.user:
        raise BenchError("authn.login.password: the tokens name another user")
    reader.token = reply["access_token"]


async def setup(kids: Children) -> tuple[dict[str, int], Reader]:
    """Start the mesh (broker, keyvault and audit, then :func:`start_mesh`), add the account; the
    measured processes' pids and the account."""
    broker = kids.spawn("broker", "services.broker", guard=True)
    for name in ("keyvault", "audit"):
        kids.spawn(name, f"services.{name}", guard=True)
    operator = await connect(kids.home, OPERATOR)
    try:
        pids = {"broker": broker.proc.pid, **await start_mesh(kids, operator)}
        reader = Reader(secrets.token_urlsafe(24))
        added = await call(operator, "authn.users.add", {"username": USERNAME, "password": reader.password})
        reader.user = added["id"]
    finally:
        await operator.close()
    return pids, reader

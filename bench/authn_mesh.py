"""The authn bench's mesh: its mesh.toml (the repository's rules, and the bench's two additions),
its home, and the start of keyvault, audit and authn with a deadline on each (bench/authn.py).

The pieces (the repository's rules as TOML, a settings section, the file keystore with a setup-only
master profile, a home, a service started and waited for) serve the authz bench too
(bench/authz_mesh.py), which runs the same processes and more."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from shared import Argon2Profile, MeshClient, MeshConfig, MeshHome

from .harness import BenchError, Children, initialised_home, remove_home
from .meshcalls import until

CALLER: Final = "frontend"
OPERATOR: Final = "meshctl"
IDENTITIES: Final = {"keyvault": "service", "audit": "service", "authn": "service", CALLER: "service",
                     OPERATOR: "operator"}
#: What the caller must be granted by the repository's ACL (the bench adds authn.health only).
CALLER_NEEDS: Final = ("authn.login.*", "authn.verify", "authn.keys", "authn.revocations")
#: authn's own needs, from its declaration: topics and data keys.
AUTHN_PUBLISHES: Final = "authn."
AUTHN_SUBSCRIBES: Final = "security."
AUTHN_KEYS: Final = ("token-signing", "accounts")
#: The setup-only master profile (unlock is not measured here).
SETUP_PROFILE: Final = Argon2Profile(memory_kib=8192, iterations=1, parallelism=1)


def toml_list(items: Any) -> str:
    return json.dumps(list(items))  # a TOML array of plain strings reads the same as JSON


def rule(kind: str, name: str, call: Any, publish: Any, subscribe: Any) -> str:
    """``[acl.<kind>.<name>]`` with its three lists."""
    return (f"[acl.{kind}.{name}]\ncall = {toml_list(call)}\npublish = {toml_list(publish)}\n"
            f"subscribe = {toml_list(subscribe)}")


def settings(section: Any) -> str:
    """Every field of a configuration section (``repo.authn``, ``repo.authz``) as ``key = value`` lines."""
    return "\n".join(f"{f.name} = {json.dumps(getattr(section, f.name))}" for f in dataclasses.fields(section))


def caller_rule(repo: MeshConfig, name: str, calls: Iterable[str], subscribes: Iterable[str] = ()) -> str:
    """``name``'s identity rule as in the repository, with ``calls`` and ``subscribes`` added."""
    mine = repo.acl.identity.get(name)
    return rule("identity", name, sorted({*(mine.call if mine else ()), *calls}), mine.publish if mine else (),
                sorted({*(mine.subscribe if mine else ()), *subscribes}))


def home_toml(repo: MeshConfig, anchors: Path, identities: Iterable[str], bench_only: str, sections: str) -> str:
    """A bench home's mesh.toml: the repository's roles and the identity rules of ``identities``, then
    ``bench_only`` (the bench's additions, each commented), the file keystore with its anchors in
    ``anchors``, the repository's entitlements, ``sections`` (the repository's settings the services
    read), a tiny setup-only master profile and the repository's ``[argon2.authentication]``."""
    rules = [rule("role", name, r.call, r.publish, r.subscribe) for name, r in sorted(repo.acl.role.items())]
    for name in identities:
        own = repo.acl.identity.get(name)
        if own is not None:
            rules.append(rule("identity", name, own.call, own.publish, own.subscribe))
    entitlements = "\n".join(f"{name} = {toml_list(purposes)}"
                             for name, purposes in repo.keyvault.entitlements.items())
    auth = repo.argon2.authentication
    return f"""\
version = 1

[limits.default]                 # never refuse the bench's own pipelined calls
rate = 10000000.0
burst = 10000000

# As in the repository's mesh.toml (what its [services.*] declarations and [acl] give):
{chr(10).join(rules)}

{bench_only}

[keyvault]
keystore = "file"                # the master key in a 0600 file: keyvault unseals on start
anchor_dir = {json.dumps(str(anchors))}

[keyvault.entitlements]
{entitlements}

# As in the repository's mesh.toml:
{sections}

[argon2]
test_profiles = true             # for the setup-only master profile below

[argon2.master]
memory_kib = {SETUP_PROFILE.memory_kib}
iterations = {SETUP_PROFILE.iterations}
parallelism = {SETUP_PROFILE.parallelism}

# The repository's: every password hash and login check costs this.
[argon2.authentication]
memory_kib = {auth.memory_kib}
iterations = {auth.iterations}
parallelism = {auth.parallelism}
"""


def check_authn(repo: MeshConfig) -> None:
    """Refuse a repository whose authn declaration lacks the topics and keys authn needs to run."""
    own = repo.acl.identity.get("authn")
    if own is None or AUTHN_PUBLISHES not in own.publish or AUTHN_SUBSCRIBES not in own.subscribe:
        raise BenchError(f'mesh.toml: authn may not publish "{AUTHN_PUBLISHES}" and subscribe to '
                         f'"{AUTHN_SUBSCRIBES}" ([services.authn] publish, subscribe)')
    if not set(AUTHN_KEYS) <= set(repo.keyvault.entitlements.get("authn", ())):
        raise BenchError(f"mesh.toml: authn is not entitled to {', '.join(AUTHN_KEYS)} ([services.authn] keys)")


def granted(repo: MeshConfig, needs: Iterable[str]) -> None:
    """Refuse a repository whose ``[acl.role.service]`` does not grant every call in ``needs``."""
    service = repo.acl.role.get("service")
    if service is None or not set(needs) <= set(service.call):
        raise BenchError(f"mesh.toml: [acl.role.service] does not grant {', '.join(needs)}")


def mesh_toml(repo: MeshConfig, anchors: Path) -> str:
    """The bench home's mesh.toml: the repository's roles, the identity rules of the processes the
    bench runs, its entitlements, ``[authn]`` and ``[argon2.authentication]``; ``authn.health`` for
    the caller; limits that never refuse the bench; the file keystore with its anchors in
    ``anchors``; a tiny setup-only master profile."""
    granted(repo, CALLER_NEEDS)
    check_authn(repo)
    caller = caller_rule(repo, CALLER, ("authn.health",), ("authn.revoked.",))
    bench_only = f"# The bench only: the authn.health round trip, for comparison.\n{caller}"
    return home_toml(repo, anchors, ("keyvault", "audit", "authn"), bench_only,
                     f"[authn]\n{settings(repo.authn)}")


def make_home(text: str, identities: Mapping[str, str] = IDENTITIES) -> tuple[MeshHome, str]:
    """A fresh provisioned home, keyvault initialised (:func:`bench.harness.initialised_home`); also
    the caller's key fingerprint (what its tokens are bound to)."""
    home, pairs = initialised_home(text, identities, "cmau")
    return home, pairs[CALLER].certificate.fingerprint


def run_in_home(text: Callable[[Path], str], identities: Mapping[str, str],
                measure: Callable[[Children, str], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """``measure(kids, presenter)`` in a fresh home whose mesh.toml is ``text(anchors)`` (anchors in a
    temporary directory of their own, outside the home), on an event loop of its own. Every child
    is stopped and the home and anchor directory removed on the way out; a reply that never came is
    explained by a child that died, when one did."""
    anchors = Path(tempfile.mkdtemp(prefix="cmaa"))  # 0700, outside the home
    try:
        home, presenter = make_home(text(anchors), identities)
        try:
            with Children(home) as kids:
                try:
                    with asyncio.Runner() as loop:
                        return loop.run(measure(kids, presenter))
                except BenchError:
                    kids.check_alive()  # a child that died explains a missing reply better
                    raise
        finally:
            remove_home(home)
    finally:
        shutil.rmtree(anchors, ignore_errors=True)


async def wait_vault(kids: Children, operator: MeshClient) -> None:
    """With broker, keyvault and audit started: wait until keyvault is unsealed and audit healthy."""
    async def vault() -> str | None:
        status = await operator.call("keyvault.status", timeout=2.0)
        if not status.get("initialised") or status.get("sealed"):
            return f"keyvault {status}"
        audit = await operator.call("audit.health", timeout=2.0)
        return None if audit.get("state") == "ready" else f"audit {audit.get('state')}: {audit.get('reason')}"
    await until(kids, "keyvault unsealed and audit ok", vault)


async def start_service(kids: Children, operator: MeshClient, name: str) -> int:
    """Start ``services.<name>`` and wait until its health says ready; its pid."""
    child = kids.spawn(name, f"services.{name}", guard=True)

    async def health() -> str | None:
        reply = await operator.call(f"{name}.health", timeout=2.0)
        if reply.get("state") == "failed" and not reply.get("dependency"):
            raise BenchError(f"{name}.health: failed: {reply.get('reason')}")
        return None if reply.get("state") == "ready" else f"state {reply.get('state')}: {reply.get('reason')}"
    await until(kids, f"{name}.health ready", health)
    return child.proc.pid


async def start_mesh(kids: Children, operator: MeshClient) -> int:
    """With broker, keyvault and audit started: wait until keyvault is unsealed and audit healthy,
    then start authn and wait until ``authn.health`` says ready; authn's pid."""
    await wait_vault(kids, operator)
    return await start_service(kids, operator, "authn")

"""The authn bench's mesh: its mesh.toml (the repository's rules, and the bench's two additions),
its home, and the start of keyvault, audit and authn with a deadline on each (bench/authn.py)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import tempfile
from pathlib import Path
from typing import Any, Final

from shared import Argon2Profile, MeshClient, MeshConfig, MeshHome, load_config
from shared.provision import provision

from .harness import BenchError, Children, remove_home
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


def _toml_list(items: Any) -> str:
    return json.dumps(list(items))  # a TOML array of plain strings reads the same as JSON


def _rule(kind: str, name: str, call: Any, publish: Any, subscribe: Any) -> str:
    return (f"[acl.{kind}.{name}]\ncall = {_toml_list(call)}\npublish = {_toml_list(publish)}\n"
            f"subscribe = {_toml_list(subscribe)}")


def mesh_toml(repo: MeshConfig, anchors: Path) -> str:
    """The bench home's mesh.toml: the repository's roles, the identity rules of the processes the
    bench runs, its entitlements, ``[authn]`` and ``[argon2.authentication]``; ``authn.health`` for
    the caller; limits that never refuse the bench; the file keystore with its anchors in
    ``anchors``; a tiny setup-only master profile."""
    service = repo.acl.role.get("service")
    if service is None or not set(CALLER_NEEDS) <= set(service.call):
        raise BenchError(f"mesh.toml: [acl.role.service] does not grant {', '.join(CALLER_NEEDS)}")
    own = repo.acl.identity.get("authn")
    if own is None or AUTHN_PUBLISHES not in own.publish or AUTHN_SUBSCRIBES not in own.subscribe:
        raise BenchError(f'mesh.toml: authn may not publish "{AUTHN_PUBLISHES}" and subscribe to '
                         f'"{AUTHN_SUBSCRIBES}" ([services.authn] publish, subscribe)')
    if not set(AUTHN_KEYS) <= set(repo.keyvault.entitlements.get("authn", ())):
        raise BenchError(f"mesh.toml: authn is not entitled to {', '.join(AUTHN_KEYS)} ([services.authn] keys)")
    rules = [_rule("role", name, r.call, r.publish, r.subscribe) for name, r in sorted(repo.acl.role.items())]
    for name in ("keyvault", "audit", "authn"):
        rule = repo.acl.identity.get(name)
        if rule is not None:
            rules.append(_rule("identity", name, rule.call, rule.publish, rule.subscribe))
    mine = repo.acl.identity.get(CALLER)
    caller = _rule("identity", CALLER, sorted({*(mine.call if mine else ()), "authn.health"}),
                   mine.publish if mine else (), sorted({*(mine.subscribe if mine else ()), "authn.revoked."}))
    entitlements = "\n".join(f"{name} = {_toml_list(purposes)}"
                             for name, purposes in repo.keyvault.entitlements.items())
    settings = "\n".join(f"{f.name} = {json.dumps(getattr(repo.authn, f.name))}"
                         for f in dataclasses.fields(repo.authn))
    auth = repo.argon2.authentication
    return f"""\
version = 1

[limits.default]                 # never refuse the bench's own pipelined calls
rate = 10000000.0
burst = 10000000

# As in the repository's mesh.toml (what its [services.*] declarations and [acl] give):
{chr(10).join(rules)}

# The bench only: the authn.health round trip, for comparison.
{caller}

[keyvault]
keystore = "file"                # the master key in a 0600 file: keyvault unseals on start
anchor_dir = {json.dumps(str(anchors))}

[keyvault.entitlements]
{entitlements}

# As in the repository's mesh.toml:
[authn]
{settings}

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


def make_home(text: str) -> tuple[MeshHome, str]:
    """A fresh provisioned home (short path: the broker's ipc socket lives in it), keyvault
    initialised; also the caller's key fingerprint (what its tokens are bound to)."""
    from services.keyvault.setup import initialise  # keyring and the keystore load only here

    home = MeshHome(Path(tempfile.mkdtemp(prefix="cmau")))
    try:
        pairs = provision(home, IDENTITIES)
        (home.root / "mesh.toml").write_text(text, "utf-8")
        keystore, _warning = initialise(home, load_config(home.root / "mesh.toml"),
                                        bytearray(secrets.token_urlsafe(24).encode()))
        if keystore != "file":
            raise BenchError(f"keyvault setup chose keystore {keystore!r}, expected the file keystore")
    except BaseException:
        remove_home(home)
        raise
    return home, pairs[CALLER].certificate.fingerprint


async def start_mesh(kids: Children, operator: MeshClient) -> int:
    """With broker, keyvault and audit started: wait until keyvault is unsealed and audit healthy,
    then start authn and wait until ``authn.health`` says ready; authn's pid."""
    async def vault() -> str | None:
        status = await operator.call("keyvault.status", timeout=2.0)
        if not status.get("initialised") or status.get("sealed"):
            return f"keyvault {status}"
        audit = await operator.call("audit.health", timeout=2.0)
        return None if audit.get("state") == "ready" else f"audit {audit.get('state')}: {audit.get('reason')}"
    await until(kids, "keyvault unsealed and audit ok", vault)
    authn = kids.spawn("authn", "services.authn", guard=True)

    async def health() -> str | None:
        reply = await operator.call("authn.health", timeout=2.0)
        if reply.get("state") == "failed" and not reply.get("dependency"):
            raise BenchError(f"authn.health: failed: {reply.get('reason')}")
        return None if reply.get("state") == "ready" else f"state {reply.get('state')}: {reply.get('reason')}"
    await until(kids, "authn.health ready", health)
    return authn.proc.pid

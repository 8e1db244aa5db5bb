"""The authn figures (issue 14): password login, token verification over the mesh and in process.

A temporary home runs the real processes (``python -m services.broker``, ``services.keyvault``,
``services.audit``, ``services.authn``, each through :mod:`bench.guard`) with the repository's ACL
(its roles and identity rules, as its ``[services.*]`` declarations derive them), keyvault
entitlements, ``[authn]`` settings and ``[argon2.authentication]`` profile; the master key in the
file keystore (keyvault unseals at start) with a tiny test master profile (setup only), and the
anchors in a temporary directory of their own (removed with the home). The bench waits for keyvault
to be unsealed and audit healthy, starts authn and polls ``authn.health`` until it says ``ready``,
each wait with a deadline. ``meshctl`` (role operator) adds one account; every measured call is
made by ``frontend`` (role service), whose grants to call ``authn.health`` and to follow
``authn.revoked.`` (as a service verifying locally declares it) are the bench's only additions to
the repository's rules.

* Password login: ``authn.login.password`` p50/p99 (ms), sequential, beside one Argon2id verify
  alone in the bench process with the same profile (argon2-cffi ``PasswordHasher``), the blocks
  alternating within each round. Informational: it shows how much of a login is Argon2. Every
  login succeeds; authn's throttle regulates failed logins only.
* ``authn.verify`` over the mesh (the caller presenting its own token), sequential p50/p99 and
  pipelined calls/s (``window`` calls in flight from one client), against the same client's
  ``authn.health`` measured the same way in the same rounds, the order alternating. Target:
  verify p50 <= 1.2x health p50 (the p50s of every sample of the run).
* Local verification: :class:`shared.tokens.LocalVerifier` (``authn.keys``, ``authn.revocations``
  and the ``authn.revoked.`` events) verifying a token presented again, as a service does all day:
  the revocation view, issuer, audience, times and presenter checked on every call, the signature
  and parsing done at the token's first check. Target: p50 <= 100 us. Beside it, informational: the
  first check of a token (``verify_access`` without a cache) and its Ed25519 signature check alone
  (what no implementation can skip); blocks rotate within each round.
* Passkey login: ``authn.login.passkey.begin`` then ``.finish`` with a software platform
  authenticator (:mod:`bench.webauthn_soft`, P-256) registered once from the caller's session,
  p50/p99 ms of the pair beside the password login. Informational: no Argon2, one ECDSA signature
  made here and checked by authn.

The token verified in a round is the last one of that round's logins, so none is near its expiry.
Every process is stopped and the home and anchor directory removed on the way out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import argon2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import MeshClient, load_config
from shared.tokens import LocalVerifier, PublicKeys, b64url_decode, verify_access

from .authn_figures import GROUP, LOCAL_TARGET_US, VERIFY_TARGET, figures, table
from .authn_mesh import (
    AUTHN_KEYS,
    CALLER,
    CALLER_NEEDS,
    IDENTITIES,
    OPERATOR,
    SETUP_PROFILE,
    mesh_toml,
    run_in_home,
    start_mesh,
)
from .harness import REPO, BenchError, Children
from .measure import cpu_seconds, percentile
from .meshcalls import call, connect
from .webauthn_soft import SoftAuthenticator

USERNAME: Final = "benchuser"
AUDIENCE: Final = "curvemesh"
#: Local verifications between two returns to the event loop (outside the clock): the mesh
#: client's heartbeats keep flowing while the bench verifies in its own process.
LOCAL_SLICE: Final = 256
#: What bench/__main__.py, bench/report.py and the tests use of this section.
__all__ = ["AUTHN_KEYS", "CALLER", "CALLER_NEEDS", "GROUP", "IDENTITIES", "LOCAL_TARGET_US", "SETUP_PROFILE",
           "VERIFY_TARGET", "AuthnOptions", "figures", "measure", "mesh_toml", "table"]


@dataclass(frozen=True)
class AuthnOptions:
    """The sizes of the authn section (``--authn-*``)."""

    rounds: int = 5
    logins: int = 20       # sequential logins per round, and as many in-process Argon2id verifies
    calls: int = 1000      # sequential authn.verify and authn.health calls each per round
    messages: int = 5000   # pipelined calls of each per round
    window: int = 64       # calls in flight for the pipelined runs
    local: int = 5000      # local verify_access calls per round
    warmup: int = 100      # calls of each mesh method (and 10x local verifications) before the rounds

    @classmethod
    def quick(cls) -> AuthnOptions:
        return cls(rounds=2, logins=5, calls=200, messages=1000, window=64, local=1000, warmup=20)

    def params(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# -- the calls ---------------------------------------------------------------------------------


@dataclass
class Login:
    """The account and the caller's latest login: what verify and the local check expect."""

    password: str
    user: str = ""
    session: str = ""
    token: str = ""


def _check_login(reply: Any, state: Login) -> None:
    if not (isinstance(reply, dict) and isinstance(reply.get("access_token"), str)
            and isinstance(reply.get("refresh_token"), str) and isinstance(reply.get("session"), str)
            and reply.get("user") == state.user):
        raise BenchError(f"authn.login.password: unexpected reply with keys {sorted(reply)[:12]}")
    state.session, state.token = reply["session"], reply["access_token"]


async def _logins(client: MeshClient, state: Login, count: int) -> list[float]:
    """``count`` sequential password logins; each round trip in seconds. The last token is kept."""
    clock = time.perf_counter
    samples = [0.0] * count
    body = {"username": USERNAME, "password": state.password}
    for i in range(count):
        start = clock()
        reply = await call(client, "authn.login.password", body)
        samples[i] = clock() - start
        _check_login(reply, state)
    return samples


async def _argon2(hasher: argon2.PasswordHasher, encoded: str, password: str, count: int) -> list[float]:
    """``count`` Argon2id verifies in this process; seconds each (the event loop runs between them)."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        hasher.verify(encoded, password)
        samples[i] = clock() - start
        await asyncio.sleep(0)
    return samples


def _request(method: str, state: Login) -> tuple[str, Any]:
    if method == "verify":
        return "authn.verify", {"access_token": state.token, "audience": AUDIENCE}
    return "authn.health", None


def _check(method: str, reply: Any, state: Login) -> None:
    if method == "verify":
        ok = isinstance(reply, dict) and reply.get("sub") == state.user and reply.get("sid") == state.session
    else:
        ok = isinstance(reply, dict) and reply.get("state") == "ready"
    if not ok:
        raise BenchError(f"authn.{method}: unexpected reply {str(reply)[:200]}")


async def _sequential(client: MeshClient, state: Login, method: str, count: int) -> list[float]:
    """``count`` sequential calls; each round trip in seconds (the reply checked after the clock)."""
    clock = time.perf_counter
    samples = [0.0] * count
    target, body = _request(method, state)
    for i in range(count):
        start = clock()
        reply = await call(client, target, body)
        samples[i] = clock() - start
        _check(method, reply, state)
    return samples


async def _pipelined(client: MeshClient, state: Login, method: str, count: int, window: int) -> float:
    """``count`` calls from ``window`` concurrent tasks on one client; calls per second."""
    requests: Iterator[int] = iter(range(count))
    target, body = _request(method, state)

    async def worker() -> None:
        for _ in requests:  # one shared iterator: every call is made once
            _check(method, await call(client, target, body), state)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    return count / (time.perf_counter() - start)


def _signature_parts(token: str, keys: PublicKeys) -> tuple[Ed25519PublicKey, bytes, bytes]:
    """The public key, signature and signed bytes of ``token``: what the Ed25519 check alone takes."""
    head, payload, signature = token.split(".")
    kid = json.loads(b64url_decode(head) or b"{}").get("kid", "")
    public = keys.public_key(int(kid.removeprefix("token-signing-v")), time.time())
    raw = b64url_decode(signature)
    if public is None or raw is None:
        raise BenchError("authn.keys does not hold the key of the token authn issued")
    return public, raw, f"{head}.{payload}".encode("ascii")


async def _ed25519(parts: tuple[Ed25519PublicKey, bytes, bytes], count: int) -> list[float]:
    """``count`` Ed25519 verifications of the token's signature alone; seconds each."""
    public, signature, signed = parts
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        public.verify(signature, signed)
        samples[i] = clock() - start
        if i % LOCAL_SLICE == LOCAL_SLICE - 1:
            await asyncio.sleep(0)
    return samples


async def _local(verifier: LocalVerifier, presenter: str, state: Login, count: int) -> list[float]:
    """``count`` local verifications of the current token through :class:`LocalVerifier`, as a
    service makes them: revocation view checked, the token found among those verified before, every
    per-call check made; seconds each."""
    clock = time.perf_counter
    samples = [0.0] * count
    token = state.token
    for i in range(count):
        start = clock()
        claims = await verifier.verify(token, audience=AUDIENCE, presenter=presenter)
        samples[i] = clock() - start
        if claims.subject != state.user:
            raise BenchError("LocalVerifier.verify: the claims name another user")
        if i % LOCAL_SLICE == LOCAL_SLICE - 1:
            await asyncio.sleep(0)
    return samples


async def _cold(keys: PublicKeys, issuer: str, presenter: str, state: Login, count: int) -> list[float]:
    """``count`` first checks of the current token (``verify_access`` without a cache: signature,
    parsing and every claim), the wall clock read included; seconds each."""
    clock, wall = time.perf_counter, time.time
    samples = [0.0] * count
    token = state.token
    for i in range(count):
        start = clock()
        claims = verify_access(token, keys, issuer=issuer, audience=AUDIENCE, presenter=presenter, now=wall())
        samples[i] = clock() - start
        if claims.subject != state.user:
            raise BenchError("verify_access: the claims name another user")
        if i % LOCAL_SLICE == LOCAL_SLICE - 1:
            await asyncio.sleep(0)
    return samples


class CpuMeter:
    """CPU seconds one process spends, summed over the blocks timed by name (None where /proc
    cannot tell)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.used: dict[str, float | None] = {}

    async def time(self, name: str, work: Awaitable[Any]) -> Any:
        before = cpu_seconds(self.pid)
        result = await work
        after = cpu_seconds(self.pid)
        so_far = self.used.get(name, 0.0)
        self.used[name] = None if before is None or after is None or so_far is None else so_far + after - before
        return result

    def per_call(self, name: str, calls: int, scale: float) -> float | None:
        used = self.used.get(name)
        return None if used is None else round(used / calls * scale, 2)


async def _measure(kids: Children, opts: AuthnOptions, presenter: str) -> dict[str, Any]:
    """Start the mesh, add the account, warm up, run the rounds."""
    for name in ("broker", "keyvault", "audit"):
        kids.spawn(name, f"services.{name}", guard=True)
    operator = await connect(kids.home, OPERATOR)
    try:
        pid = await start_mesh(kids, operator)
        state = Login(secrets.token_urlsafe(24))
        added = await call(operator, "authn.users.add", {"username": USERNAME, "password": state.password})
        state.user = added["id"]
    finally:
        await operator.close()
    client = await connect(kids.home, CALLER)
    try:
        return await _rounds(client, kids, opts, state, presenter, pid)
    finally:
        await client.close()


async def _rounds(client: MeshClient, kids: Children, opts: AuthnOptions, state: Login, presenter: str,
                  pid: int) -> dict[str, Any]:
    """Warm up, then ``opts.rounds`` rounds of logins, mesh calls and local checks (orders alternating)."""
    profile = load_config(kids.home.root / "mesh.toml").argon2.authentication
    hasher = argon2.PasswordHasher(time_cost=profile.iterations, memory_cost=profile.memory_kib,
                                   parallelism=profile.parallelism, type=argon2.Type.ID)
    start = time.perf_counter()
    encoded = hasher.hash(state.password)
    hash_s = time.perf_counter() - start
    published = await call(client, "authn.keys")
    keys, issuer = PublicKeys(published["keys"]), published["issuer"]
    # Warm-up: the first logins fault in authn's Argon2 memory, the first calls fill caches.
    await _logins(client, state, 2)
    await _argon2(hasher, encoded, state.password, 2)
    for method in ("verify", "health"):
        await _sequential(client, state, method, opts.warmup)
        await _pipelined(client, state, method, opts.warmup, opts.window)
    device = await _passkey_device(client, state)
    await _passkey_logins(client, device, state, 2)
    verifier = LocalVerifier(client, "authn")
    await verifier.start()
    await _local(verifier, presenter, state, 10 * opts.warmup)
    await _cold(keys, issuer, presenter, state, 10 * opts.warmup)
    await _ed25519(_signature_parts(state.token, keys), 10 * opts.warmup)
    logins: dict[str, list[float]] = {"login": [], "argon2": []}
    login_p50: dict[str, list[float]] = {"login": [], "argon2": []}
    passkeys: list[float] = []
    samples: dict[str, list[float]] = {"verify": [], "health": []}
    p50s: dict[str, list[float]] = {"verify": [], "health": []}
    throughput: dict[str, list[float]] = {"verify": [], "health": []}
    cpu = CpuMeter(pid)
    local: dict[str, list[float]] = {"local": [], "verify_access": [], "ed25519": []}
    local_p50: dict[str, list[float]] = {"local": [], "verify_access": [], "ed25519": []}
    for r in range(opts.rounds):
        for part in (("login", "argon2") if r % 2 == 0 else ("argon2", "login")):
            if part == "login":
                got = await cpu.time("login", _logins(client, state, opts.logins))
            else:
                got = await _argon2(hasher, encoded, state.password, opts.logins)
            logins[part] += got
            login_p50[part].append(round(percentile(got, 0.5) * 1e3, 2))
        passkeys += await _passkey_logins(client, device, state, opts.logins)
        order = ("verify", "health") if r % 2 == 0 else ("health", "verify")
        for method in order:
            got = await cpu.time(method, _sequential(client, state, method, opts.calls))
            samples[method] += got
            p50s[method].append(round(percentile(got, 0.5) * 1e6, 1))
        for method in order:
            throughput[method].append(await _pipelined(client, state, method, opts.messages, opts.window))
        parts = ("local", "verify_access", "ed25519")
        for part in parts[r % 3:] + parts[:r % 3]:
            if part == "local":
                got = await _local(verifier, presenter, state, opts.local)
            elif part == "verify_access":
                got = await _cold(keys, issuer, presenter, state, opts.local)
            else:
                got = await _ed25519(_signature_parts(state.token, keys), opts.local)
            local[part] += got
            local_p50[part].append(round(percentile(got, 0.5) * 1e6, 2))
        kids.check_alive()
        print(f"authn: round {r + 1}/{opts.rounds}: login p50 {login_p50['login'][-1]:,.1f} ms (Argon2id alone "
              f"{login_p50['argon2'][-1]:,.1f} ms) | p50 us verify={p50s['verify'][-1]:,.0f} "
              f"health={p50s['health'][-1]:,.0f} | calls/s verify={throughput['verify'][-1]:,.0f} "
              f"health={throughput['health'][-1]:,.0f} | local p50 {local_p50['local'][-1]:,.1f} us, first check "
              f"{local_p50['verify_access'][-1]:,.1f} us (Ed25519 alone {local_p50['ed25519'][-1]:,.1f} us)",
              flush=True)
    await verifier.stop()
    return {
        "login": {"samples": logins, "round_p50_ms": login_p50, "logins": opts.logins * opts.rounds,
                  "argon2_hash_s": hash_s, "profile": dataclasses.asdict(profile),
                  "authn_cpu_ms_per_login": cpu.per_call("login", opts.logins * opts.rounds, 1e3)},
        "mesh": {"samples": samples, "round_p50_us": p50s, "throughput": throughput,
                 "calls": opts.calls * opts.rounds, "messages": opts.messages, "window": opts.window,
                 "authn_cpu_us_per_call": {m: cpu.per_call(m, opts.calls * opts.rounds, 1e6)
                                           for m in ("verify", "health")}},
        "local": {"samples": local, "round_p50_us": local_p50, "calls": opts.local * opts.rounds,
                  "keys": len(published["keys"]), "token_bytes": len(state.token)},
        "passkey": {"samples": passkeys},
    }


async def _passkey_device(client: MeshClient, state: Login) -> SoftAuthenticator:
    """A software authenticator registered to the account from the caller's session."""
    settings = load_config(REPO / "mesh.toml").authn
    device = SoftAuthenticator(settings.rp_id, settings.origins[0])
    begun = await call(client, "authn.passkey.register.begin", {"access_token": state.token})
    await call(client, "authn.passkey.register.finish",
                {"ceremony": begun["ceremony"], "response": device.register(begun["options"])})
    return device


async def _passkey_logins(client: MeshClient, device: SoftAuthenticator, state: Login,
                          count: int) -> list[float]:
    """``count`` passkey logins (begin, the authenticator's signature, finish); seconds each."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        begun = await call(client, "authn.login.passkey.begin", {"username": USERNAME})
        reply = await call(client, "authn.login.passkey.finish",
                            {"ceremony": begun["ceremony"], "response": device.login(begun["options"])})
        samples[i] = clock() - start
        if not isinstance(reply, dict) or reply.get("user") != state.user:
            raise BenchError("authn.login.passkey.finish: the tokens name another user")
    return samples


def measure(opts: AuthnOptions) -> dict[str, Any]:
    """Run the mesh in a fresh home and measure; the raw results :func:`figures` turns into figures."""
    repo = load_config(REPO / "mesh.toml")
    raw = run_in_home(lambda anchors: mesh_toml(repo, anchors), IDENTITIES,
                      lambda kids, presenter: _measure(kids, opts, presenter))
    return {**raw, "caller": CALLER, "operator": OPERATOR, "options": opts.params()}

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
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import argon2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared import Argon2Profile, MeshClient, MeshConfig, MeshError, MeshHome, load_config
from shared.provision import provision
from shared.tokens import LocalVerifier, PublicKeys, b64url_decode, verify_access

from .harness import REPO, BenchError, Children, remove_home
from .measure import cpu_seconds, percentile
from .webauthn_soft import SoftAuthenticator

GROUP: Final = "authn"
CALLER: Final = "frontend"
OPERATOR: Final = "meshctl"
IDENTITIES: Final = {"keyvault": "service", "audit": "service", "authn": "service", CALLER: "service",
                     OPERATOR: "operator"}
USERNAME: Final = "benchuser"
AUDIENCE: Final = "curvemesh"
#: What the caller must be granted by the repository's ACL (the bench adds authn.health only).
CALLER_NEEDS: Final = ("authn.login.*", "authn.verify", "authn.keys", "authn.revocations")
#: authn's own needs, from its declaration: topics and data keys.
AUTHN_PUBLISHES: Final = "authn."
AUTHN_SUBSCRIBES: Final = "security."
AUTHN_KEYS: Final = ("token-signing", "accounts")
#: The setup-only master profile (unlock is not measured here).
SETUP_PROFILE: Final = Argon2Profile(memory_kib=8192, iterations=1, parallelism=1)
#: Targets (issue 14).
VERIFY_TARGET: Final = 1.2        # authn.verify p50 <= this x authn.health p50
LOCAL_TARGET_US: Final = 100.0    # local verify_access p50 <= this
READY_TIMEOUT: Final = 90.0
CALL_TIMEOUT: Final = 60.0
#: Local verifications between two returns to the event loop (outside the clock): the mesh
#: client's heartbeats keep flowing while the bench verifies in its own process.
LOCAL_SLICE: Final = 256


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


def _make_home(text: str) -> tuple[MeshHome, str]:
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


async def _call(client: MeshClient, target: str, body: Any = None, timeout: float = CALL_TIMEOUT) -> Any:
    try:
        return await client.call(target, body, timeout=timeout)
    except MeshError as exc:
        raise BenchError(f"{target} as {client.name}: {exc.code}: {exc.message}") from None


async def _connect(home: MeshHome, name: str) -> MeshClient:
    try:
        return await MeshClient.connect(home, name, timeout=READY_TIMEOUT)
    except MeshError as exc:
        raise BenchError(f"{name} cannot connect to the broker: {exc.code}: {exc.message}") from None


async def _until(kids: Children, what: str, probe: Callable[[], Awaitable[str | None]]) -> None:
    """Poll ``probe`` (None when ready, else what it saw) until ready, with a deadline."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        kids.check_alive()
        try:
            seen = await probe()
        except MeshError as exc:
            if exc.code in ("FORBIDDEN", "UNAUTHENTICATED"):
                raise BenchError(f"{what}: refused: {exc.code}: {exc.message}") from None
            seen = f"{exc.code}: {exc.message}"
        if seen is None:
            return
        last = seen
        await asyncio.sleep(0.1)  # poll interval
    raise BenchError(f"{what} not reached within {READY_TIMEOUT:.0f} s (last: {last})")


async def start_mesh(kids: Children, operator: MeshClient) -> int:
    """With broker, keyvault and audit started: wait until keyvault is unsealed and audit healthy,
    then start authn and wait until ``authn.health`` says ready; authn's pid."""
    async def vault() -> str | None:
        status = await operator.call("keyvault.status", timeout=2.0)
        if not status.get("initialised") or status.get("sealed"):
            return f"keyvault {status}"
        audit = await operator.call("audit.health", timeout=2.0)
        return None if audit.get("state") == "ready" else f"audit {audit.get('state')}: {audit.get('reason')}"
    await _until(kids, "keyvault unsealed and audit ok", vault)
    authn = kids.spawn("authn", "services.authn", guard=True)

    async def health() -> str | None:
        reply = await operator.call("authn.health", timeout=2.0)
        if reply.get("state") == "failed" and not reply.get("dependency"):
            raise BenchError(f"authn.health: failed: {reply.get('reason')}")
        return None if reply.get("state") == "ready" else f"state {reply.get('state')}: {reply.get('reason')}"
    await _until(kids, "authn.health ready", health)
    return authn.proc.pid


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
        reply = await _call(client, "authn.login.password", body)
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
        reply = await _call(client, target, body)
        samples[i] = clock() - start
        _check(method, reply, state)
    return samples


async def _pipelined(client: MeshClient, state: Login, method: str, count: int, window: int) -> float:
    """``count`` calls from ``window`` concurrent tasks on one client; calls per second."""
    requests: Iterator[int] = iter(range(count))
    target, body = _request(method, state)

    async def worker() -> None:
        for _ in requests:  # one shared iterator: every call is made once
            _check(method, await _call(client, target, body), state)
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
    operator = await _connect(kids.home, OPERATOR)
    try:
        pid = await start_mesh(kids, operator)
        state = Login(secrets.token_urlsafe(24))
        added = await _call(operator, "authn.users.add", {"username": USERNAME, "password": state.password})
        state.user = added["id"]
    finally:
        await operator.close()
    client = await _connect(kids.home, CALLER)
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
    published = await _call(client, "authn.keys")
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
    begun = await _call(client, "authn.passkey.register.begin", {"access_token": state.token})
    await _call(client, "authn.passkey.register.finish",
                {"ceremony": begun["ceremony"], "response": device.register(begun["options"])})
    return device


async def _passkey_logins(client: MeshClient, device: SoftAuthenticator, state: Login,
                          count: int) -> list[float]:
    """``count`` passkey logins (begin, the authenticator's signature, finish); seconds each."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        begun = await _call(client, "authn.login.passkey.begin", {"username": USERNAME})
        reply = await _call(client, "authn.login.passkey.finish",
                            {"ceremony": begun["ceremony"], "response": device.login(begun["options"])})
        samples[i] = clock() - start
        if not isinstance(reply, dict) or reply.get("user") != state.user:
            raise BenchError("authn.login.passkey.finish: the tokens name another user")
    return samples


def measure(opts: AuthnOptions) -> dict[str, Any]:
    """Run the mesh in a fresh home and measure; the raw results :func:`figures` turns into figures."""
    anchors = Path(tempfile.mkdtemp(prefix="cmaa"))  # 0700, outside the home
    try:
        home, presenter = _make_home(mesh_toml(load_config(REPO / "mesh.toml"), anchors))
        try:
            with Children(home) as kids:
                try:
                    with asyncio.Runner() as loop:
                        raw = loop.run(_measure(kids, opts, presenter))
                except BenchError:
                    kids.check_alive()  # a child that died explains a missing reply better
                    raise
        finally:
            remove_home(home)
    finally:
        shutil.rmtree(anchors, ignore_errors=True)
    return {**raw, "caller": CALLER, "operator": OPERATOR, "options": opts.params()}


# -- figures and table --------------------------------------------------------------------------


def _ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else float("nan")


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Figures of the authn section: value, baseline, ratio, target and met (None: informational)."""
    info = {"group": GROUP, "target": None, "met": None, "informational": True}
    out: dict[str, dict[str, Any]] = {}
    login = raw["login"]
    prof = login["profile"]
    profile = f"Argon2id {prof['memory_kib']} KiB, t={prof['iterations']}, p={prof['parallelism']}"
    argon = {q: percentile(login["samples"]["argon2"], v) * 1e3 for q, v in (("p50", 0.5), ("p99", 0.99))}
    paired = round(statistics.median(a / b for a, b in zip(login["round_p50_ms"]["login"],
                                                            login["round_p50_ms"]["argon2"], strict=True)), 3)
    cpu = login["authn_cpu_ms_per_login"]
    cpu_text = "n/a" if cpu is None else f"{cpu:,.1f} ms/login"
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(login["samples"]["login"], v) * 1e3
        out[f"authn_login_{q}_ms"] = {
            "label": f"authn.login.password {q}", "unit": "ms", "value": round(value, 2), **info,
            "baseline": {"name": "Argon2id verify", "value": round(argon[q], 2)}, "ratio": _ratio(value, argon[q]),
            "detail": (f"{login['logins']} sequential logins as {raw['caller']}; Argon2id alone is "
                       f"{argon[q] / value:.0%} of it; authn CPU {cpu_text}" if q == "p50"
                       else f"Argon2id alone is {argon[q] / value:.0%} of it"),
            **({"paired_ratio": paired, "round_p50_ms": login["round_p50_ms"]["login"],
                "authn_cpu_ms_per_login": cpu} if q == "p50" else {}),
            "note": f"MeshClient -> broker -> authn, every login successful; {profile} ([argon2.authentication], "
                    "mesh.toml); not a target"}
    out["authn_argon2_verify_ms"] = {
        "label": "Argon2id verify alone, in process p50", "unit": "ms", "value": round(argon["p50"], 2), **info,
        "baseline": None, "ratio": None, "p99_ms": round(argon["p99"], 2),
        "hash_ms": round(login["argon2_hash_s"] * 1e3, 2), "round_p50_ms": login["round_p50_ms"]["argon2"],
        "detail": f"{profile}, argon2-cffi PasswordHasher; p99 {argon['p99']:,.1f} ms; one hash "
                  f"{login['argon2_hash_s'] * 1e3:,.1f} ms",
        "note": "the same number of verifies as logins, in the bench process, blocks alternating; not a target"}
    mesh = raw["mesh"]
    samples, tput, cpus = mesh["samples"], mesh["throughput"], mesh["authn_cpu_us_per_call"]
    health = {"p50": percentile(samples["health"], 0.5) * 1e6, "p99": percentile(samples["health"], 0.99) * 1e6,
              "calls_s": statistics.median(tput["health"])}
    rounds = mesh["round_p50_us"]
    note = (f"MeshClient -> broker -> authn as {raw['caller']}, presenting its own token; baseline: the same "
            "client's authn.health in the same rounds, order alternating")
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(samples["verify"], v) * 1e6
        ratio = _ratio(value, health[q])
        fig: dict[str, Any] = {"label": f"authn.verify {q}", "unit": "us", "value": round(value, 1),
                               "group": GROUP, "baseline": {"name": "authn.health", "value": round(health[q], 1)},
                               "ratio": ratio, "note": note}
        if q == "p50":
            paired = round(statistics.median(a / b for a, b in zip(rounds["verify"], rounds["health"], strict=True)),
                           3)
            cpu_text = ("n/a" if cpus["verify"] is None
                        else f"{cpus['verify']:,.0f} vs {cpus['health']:,.0f} us/call")
            fig.update(target={"baseline": "authn.health", "bound": "max", "ratio": VERIFY_TARGET,
                               "on": "p50 of every sample of the run"},
                       met=ratio <= VERIFY_TARGET, informational=False, paired_ratio=paired,
                       round_p50_us=rounds, authn_cpu_us_per_call=cpus,
                       detail=f"{mesh['calls']:,} sequential calls each; paired {paired:.2f}x; authn CPU {cpu_text}")
        else:
            fig.update(target=None, met=None, informational=True, detail="")
        out[f"authn_verify_{q}_us"] = fig
    value = statistics.median(tput["verify"])
    out["authn_verify_calls_s"] = {
        "label": "authn.verify pipelined", "unit": "call/s", "value": round(value, 1), **info,
        "baseline": {"name": "authn.health", "value": round(health["calls_s"], 1)},
        "ratio": _ratio(value, health["calls_s"]), "rounds": {m: [round(x, 1) for x in tput[m]] for m in tput},
        "detail": f"{mesh['messages']:,} calls per round, {mesh['window']} in flight on one client", "note": note}
    local = raw["local"]
    alone = {q: percentile(local["samples"]["ed25519"], v) * 1e6 for q, v in (("p50", 0.5), ("p99", 0.99))}
    first_p50 = percentile(local["samples"]["verify_access"], 0.5) * 1e6
    local_p50 = percentile(local["samples"]["local"], 0.5) * 1e6
    out["authn_local_verify_p50_us"] = {
        "label": "local verification p50", "unit": "us", "value": round(local_p50, 2), "group": GROUP,
        "baseline": {"name": "first check (verify_access)", "value": round(first_p50, 2)},
        "ratio": _ratio(local_p50, first_p50), "target": {"bound": "max_abs", "value": LOCAL_TARGET_US},
        "met": local_p50 <= LOCAL_TARGET_US, "informational": False, "round_p50_us": local["round_p50_us"],
        "detail": f"{local['calls']:,} calls of LocalVerifier.verify on a token presented again, PublicKeys from "
                  f"authn.keys ({local['keys']} key), {local['token_bytes']}-byte token",
        "note": "shared.tokens.LocalVerifier(client, 'authn').verify(token, audience, presenter) in the bench "
                "process: revocation view checked, issuer, audience, times and presenter checked every call; "
                "the signature and parsing are the first check's"}
    out["authn_local_verify_p99_us"] = {
        "label": "local verification p99", "unit": "us",
        "value": round(percentile(local["samples"]["local"], 0.99) * 1e6, 2), **info, "baseline": None,
        "ratio": None, "detail": ""}
    out["authn_first_verify_p50_us"] = {
        "label": "first check of a token p50", "unit": "us", "value": round(first_p50, 2), **info,
        "baseline": {"name": "Ed25519 verify", "value": round(alone["p50"], 2)},
        "ratio": _ratio(first_p50, alone["p50"]),
        "detail": f"verify_access without a cache; the signature check alone is {alone['p50'] / first_p50:.0%}"}
    passkey = raw["passkey"]["samples"]
    password_p50 = percentile(raw["login"]["samples"]["login"], 0.5) * 1e3
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(passkey, v) * 1e3
        out[f"authn_passkey_login_{q}_ms"] = {
            "label": f"passkey login {q}", "unit": "ms", "value": round(value, 2), **info,
            "baseline": {"name": "password login p50", "value": round(password_p50, 2)} if q == "p50" else None,
            "ratio": _ratio(value, password_p50) if q == "p50" else None,
            "detail": f"{len(passkey):,} logins: login.passkey.begin + a P-256 assertion + login.passkey.finish"}
    return out


def _target_text(fig: dict[str, Any]) -> str:
    target = fig["target"]
    if not target:
        return "info only"
    if target["bound"] == "max_abs":
        return f"<={target['value']:g} {fig['unit']}"
    return f"<={target['ratio']:g}x"


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The authn section of the bench's table."""
    head = (f"{'authn figure':<40}{'value':>10}  {'unit':<7}{'baseline':>10}  {'(of)':<16}{'ratio':>7}  "
            f"{'target':<10}{'met':<4} detail")
    lines = ["authn: password login beside one Argon2id verify in process (informational); authn.verify over the",
             "mesh beside authn.health (same client, same rounds); verify_access in the bench process.",
             head, "-" * 140]
    for fig in figs.values():
        if fig["value"] is None:
            value = "-"
        else:
            value = f"{fig['value']:,.0f}" if fig["unit"] in ("call/s",) or fig["value"] >= 1000 \
                else f"{fig['value']:,.1f}"
        base = fig.get("baseline")
        base_text = f"{base['value']:>10,.1f}  {base['name']:<16}" if base else f"{'':>10}  {'':<16}"
        ratio = f"{fig['ratio']:>6.2f}x" if fig.get("ratio") is not None else f"{'':>7}"
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        lines.append(f"{fig['label']:<40}{value:>10}  {fig['unit']:<7}{base_text}{ratio}  "
                     f"{_target_text(fig):<10}{met:<4} {fig['detail']}")
    return "\n".join(lines)

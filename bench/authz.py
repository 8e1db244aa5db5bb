"""The authz figures (issue 15): a decision in process, cached and not, ``authz.check`` over the
mesh, and a person's data read end to end (token verified, access decided, value got).

A temporary home runs the real processes (``python -m services.broker``, ``services.keyvault``,
``services.audit``, ``services.authn``, ``services.authz``, ``services.storage``, each through
:mod:`bench.guard`) with the repository's ACL (roles and identity rules), keyvault entitlements
(authz's own ``authz`` key among them), ``[authn]``, ``[authz]`` (the shipped policy directory) and
``[argon2.authentication]`` profile, the master key in the file keystore with a tiny setup-only
master profile, anchors in a temporary directory of their own (bench/authz_mesh.py). The caller is
``frontend`` (role service), declared in the home's mesh.toml with the ``user-data`` role and no
process, and granted ``authz.health`` and ``storage.health``: those are the bench's only additions.
``meshctl`` (role operator) adds one account; the caller signs its person in (the repository's
Argon2id profile: one login at setup and one a round, outside every clock, so no token is near
its expiry) and puts one value with the token.

* In process (no mesh): :class:`services.authz.authority.Authority` over
  ``policies.load(DEFAULT_DIR)``, the caller's declared role and two consent grants of the same
  owner (to other grantees, so the grant lookup has entries to reject), deciding the request the
  storage gate asks for a read: ``service:frontend`` reads the owner's ``memories`` for the owner.
  *Uncached*: ``authority.cache.clear()`` before each call, outside the clock. The same request,
  rather than varied ones, so that uncached and cached decide exactly the same thing and differ only
  by the cache (a varied request would also vary the grant lookup and the Cedar evaluation).
  *Cached*: the same request again. Target: cached p50 <= 20 us. Beside them, informational: one
  ``cedarpy.is_authorized`` call with the arguments ``decide`` passed it (recorded once; the
  pre-parsed PolicySet and Entities), what an uncached decision costs at least. Blocks rotate
  within each round; the wall clock ``now`` is read just before each call's clock starts.
* ``authz.check`` over the mesh (that same request, answered from authz's cache after the first),
  and the same request on the ``health`` category, which the shipped categories.toml calls
  sensitive: every allow there is recorded, made durable by authz's audit thread before it answers
  (AuditRecorder.record_durably). Sequential p50/p99, beside the same client's ``authz.health`` in
  the same rounds, order rotating; and pipelined (``pipelined`` calls from 32 concurrent tasks, one
  client), recorded against from cache, calls/s: decisions recorded together share their fsyncs.
  Informational.
* End-to-end user read: ``storage.kv.get {category, token, key}``, where storage's gate
  (services/storage/core/access.py) asks ``authn.verify`` on every call and ``authz.check`` until
  it holds a reusable allow (then again after each ``authz.changed``, at the turn of the hour, or
  after 60 s: services/storage/core/decisions.py), sequential p50/p99, against the bare mesh round
  trip: the same client's ``storage.health`` (a handler of the same service through the same
  broker, no gate, no store). Target: p50 <= 3.5x (the p50s of every sample of the run). Beside
  them, informational: ``storage.kv.get`` of the caller's own value (no token: no gate), so the
  gate's share shows. The three blocks rotate within each round; the CPU each process (broker,
  storage, authn, authz) spends per call is measured over each block. Every reply is checked
  outside the clock (found, and the value put).

Every process is stopped and the home and anchor directory removed on the way out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from unittest import mock

import cedarpy

from services.authz.authority import Authority
from services.authz.deciding import Request
from services.authz.grants import Grant
from services.authz.policies import DEFAULT_DIR, load
from shared import MeshClient, load_config

from .authn import LOCAL_SLICE, CpuMeter
from .authn_mesh import CALLER, OPERATOR, SETUP_PROFILE, run_in_home
from .authz_figures import CACHED_TARGET_US, GROUP, READ_TARGET, figures, table
from .authz_mesh import CALLER_ROLES, IDENTITIES, Reader, login, mesh_toml, setup
from .harness import REPO, BenchError, Children
from .measure import percentile
from .meshcalls import call, connect, pipelined, timed

CATEGORY: Final = "memories"
KEY: Final = b"bench/authz"
VALUE: Final = secrets.token_bytes(150)
#: In process: the three kinds of decision timed; over the mesh: the two blocks of each comparison.
LOCAL: Final = ("uncached", "cached", "cedar")
CHECKS: Final = ("check", "check_audited", "authz_health")
#: A category the shipped categories.toml calls "sensitive": every allow on it is recorded.
SENSITIVE: Final = "health"
READS: Final = ("read", "read_own", "storage_health")
#: Pipelined authz.check: an allow from authz's cache (no record) and one recorded each time.
PIPELINED: Final = ("check", "check_audited")
WINDOW: Final = 32
#: What bench/__main__.py, bench/report.py and the tests use of this section.
__all__ = ["CACHED_TARGET_US", "CALLER", "CALLER_ROLES", "GROUP", "IDENTITIES", "READ_TARGET", "SETUP_PROFILE",
           "AuthzOptions", "figures", "measure", "mesh_toml", "table"]


@dataclass(frozen=True)
class AuthzOptions:
    """The sizes of the authz section (``--authz-*``)."""

    rounds: int = 5
    local: int = 5000      # in-process decisions of each kind (uncached, cached, cedarpy alone) per round
    calls: int = 1000      # sequential calls of each mesh method per round
    warmup: int = 100      # calls of each mesh method (and 10x in-process decisions) before the rounds
    pipelined: int = 3000  # authz.check calls per round from WINDOW concurrent tasks, recorded and not

    @classmethod
    def quick(cls) -> AuthzOptions:
        return cls(rounds=2, local=1000, calls=200, warmup=20, pipelined=600)

    def params(self) -> dict[str, int]:
        return dataclasses.asdict(self)


# -- in process ----------------------------------------------------------------------------------


def _authority(owner: str, now: float) -> tuple[Authority, Request]:
    """The decision state as authz builds it (shipped policies, declared roles, live grants) and the
    request storage's gate asks for the caller reading the owner's data for the owner."""
    entries = load_config(REPO / "mesh.toml").authz.cache_entries
    authority = Authority(load(DEFAULT_DIR), {f"service:{CALLER}": CALLER_ROLES}, entries)
    day = 86400.0
    authority.use_grants([
        Grant("bench-g1", owner, "plugin:weather", (CATEGORY,), ("read",), "forecast", now, now + day, "bench"),
        Grant("bench-g2", owner, "device:phone", ("notes", CATEGORY), ("read", "write"), "sync", now, now + day,
              "bench")])
    return authority, Request("service", CALLER, "read", CATEGORY, owner, owner, "")


def _cedar_call(authority: Authority, request: Request) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments an uncached decision passes ``cedarpy.is_authorized`` (recorded once)."""
    with mock.patch.object(cedarpy, "is_authorized", wraps=cedarpy.is_authorized) as spy:
        authority.cache.clear()
        authority.check(request, time.time())
    if spy.call_count != 1:
        raise BenchError(f"an uncached decision called cedarpy.is_authorized {spy.call_count} times, not once")
    return tuple(spy.call_args.args), dict(spy.call_args.kwargs)


async def _decisions(kind: str, authority: Authority, request: Request,
                     cedar: tuple[tuple[Any, ...], dict[str, Any]], count: int) -> list[float]:
    """``count`` in-process decisions of ``kind`` (see the module docstring); seconds each."""
    clock, wall = time.perf_counter, time.time
    samples = [0.0] * count
    args, kwargs = cedar
    for i in range(count):
        if kind == "cedar":
            start = clock()
            result = cedarpy.is_authorized(*args, **kwargs)
            samples[i] = clock() - start
            ok = result.allowed
        else:
            if kind == "uncached":
                authority.cache.clear()
            now = wall()
            start = clock()
            decision, cached = authority.check(request, now)
            samples[i] = clock() - start
            ok = decision.allowed and cached == (kind == "cached")
        if not ok:
            raise BenchError(f"{kind} decision: not the allow expected (or not {kind})")
        if i % LOCAL_SLICE == LOCAL_SLICE - 1:
            await asyncio.sleep(0)  # the mesh client's heartbeats keep flowing
    return samples


# -- over the mesh ---------------------------------------------------------------------------------


def _ready(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("state") == "ready"


def _found(reply: Any) -> bool:
    return isinstance(reply, dict) and reply.get("found") is True and reply.get("value") == VALUE


def _request(method: str, reader: Reader) -> tuple[str, Any, Callable[[Any], bool]]:
    """Target, body and reply check of one measured method."""
    if method in ("check", "check_audited"):
        body = {"principal": f"service:{CALLER}", "action": "read", "owner": reader.user, "user": reader.user,
                "purpose": "", "category": CATEGORY if method == "check" else SENSITIVE}
        return "authz.check", body, lambda reply: isinstance(reply, dict) and reply.get("allow") is True
    if method == "read":
        return "storage.kv.get", {"category": CATEGORY, "token": reader.token, "key": KEY}, _found
    if method == "read_own":
        return "storage.kv.get", {"category": CATEGORY, "key": KEY}, _found
    return f"{method.removesuffix('_health')}.health", None, _ready


async def _sequential(client: MeshClient, reader: Reader, method: str, count: int) -> list[float]:
    """``count`` sequential calls; each round trip in seconds (the reply checked after the clock)."""
    target, body, check = _request(method, reader)
    return await timed(client, target, body, count, check, method)


async def _measure(kids: Children, opts: AuthzOptions) -> dict[str, Any]:
    pids, reader = await setup(kids)
    client = await connect(kids.home, CALLER)
    try:
        await login(client, reader)
        for token in (reader.token, None):  # the person's value, and the caller's own
            body = {"category": CATEGORY, "key": KEY, "value": VALUE, **({"token": token} if token else {})}
            await call(client, "storage.kv.put", body)
        return await _rounds(client, kids, opts, reader, pids)
    finally:
        await client.close()


async def _timed(meters: dict[str, CpuMeter], name: str, work: Awaitable[Any]) -> Any:
    """``work``, with the CPU of every metered process counted under ``name``."""
    for meter in meters.values():
        work = meter.time(name, work)
    return await work


async def _rounds(client: MeshClient, kids: Children, opts: AuthzOptions, reader: Reader,
                  pids: dict[str, int]) -> dict[str, Any]:
    """Warm up, then ``opts.rounds`` rounds of in-process decisions and mesh calls (orders rotating)."""
    authority, request = _authority(reader.user, time.time())
    cedar = _cedar_call(authority, request)
    for kind in LOCAL:
        await _decisions(kind, authority, request, cedar, 10 * opts.warmup)
    for method in (*CHECKS, *READS):
        await _sequential(client, reader, method, opts.warmup)
    samples: dict[str, list[float]] = {m: [] for m in (*LOCAL, *CHECKS, *READS)}
    p50s: dict[str, list[float]] = {m: [] for m in samples}
    rates: dict[str, list[float]] = {m: [] for m in PIPELINED}
    meters = {name: CpuMeter(pid) for name, pid in pids.items()}
    for r in range(opts.rounds):
        await login(client, reader)  # outside every clock: this round's token is fresh
        for block in LOCAL[r % 3:] + LOCAL[:r % 3] + CHECKS[r % 3:] + CHECKS[:r % 3] + READS[r % 3:] + READS[:r % 3]:
            got = await (_decisions(block, authority, request, cedar, opts.local) if block in LOCAL
                         else _timed(meters, block, _sequential(client, reader, block, opts.calls)))
            samples[block] += got
            p50s[block].append(round(percentile(got, 0.5) * 1e6, 2))
        for method in PIPELINED[r % 2:] + PIPELINED[:r % 2]:
            target, body, check = _request(method, reader)
            rates[method].append(round(await pipelined(client, target, body, opts.pipelined, WINDOW, check, method), 1))
        kids.check_alive()
        print(f"authz: round {r + 1}/{opts.rounds}: in process p50 us uncached={p50s['uncached'][-1]:,.1f} "
              f"cached={p50s['cached'][-1]:,.2f} cedarpy={p50s['cedar'][-1]:,.1f} | p50 us "
              f"check={p50s['check'][-1]:,.0f} recorded={p50s['check_audited'][-1]:,.0f} "
              f"authz.health={p50s['authz_health'][-1]:,.0f} | read={p50s['read'][-1]:,.0f} "
              f"own={p50s['read_own'][-1]:,.0f} storage.health={p50s['storage_health'][-1]:,.0f} | calls/s "
              f"check={rates['check'][-1]:,.0f} recorded={rates['check_audited'][-1]:,.0f}", flush=True)
    calls = opts.calls * opts.rounds
    return {
        "local": {"samples": {k: samples[k] for k in LOCAL}, "round_p50_us": {k: p50s[k] for k in LOCAL},
                  "calls": opts.local * opts.rounds, "policies": len(authority.bundle.policies),
                  "grants": 2, "uncached_by": "authority.cache.clear() before each call, outside the clock"},
        "mesh": {"samples": {m: samples[m] for m in (*CHECKS, *READS)},
                 "round_p50_us": {m: p50s[m] for m in (*CHECKS, *READS)}, "calls": calls,
                 "cpu_us_per_call": {m: {name: meter.per_call(m, calls, 1e6) for name, meter in meters.items()}
                                     for m in (*CHECKS, *READS)},
                 "value_bytes": len(VALUE),
                 "pipelined": {"calls_s": rates, "calls": opts.pipelined, "window": WINDOW}},
    }


def measure(opts: AuthzOptions) -> dict[str, Any]:
    """Run the mesh in a fresh home and measure; the raw results :func:`figures` turns into figures."""
    repo = load_config(REPO / "mesh.toml")
    raw = run_in_home(lambda anchors: mesh_toml(repo, anchors), IDENTITIES, lambda kids, _: _measure(kids, opts))
    return {**raw, "caller": CALLER, "operator": OPERATOR, "options": opts.params(),
            "authentication_profile": dataclasses.asdict(repo.argon2.authentication)}

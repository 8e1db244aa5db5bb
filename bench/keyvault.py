"""The keyvault figures: unlock cost with the master profile, and a key fetch over the mesh.

Informational only: the keyvault issue asks for the figures and sets no targets.

* Unlock. A temporary home gets the repository's ``[argon2.master]`` profile
  (mesh.toml) and ``[keyvault] keystore = "file"`` (the bench never needs a
  desktop keyring or Secret Service). ``services.keyvault.setup.initialise``
  creates the state there (it derives once itself; timed and reported apart).
  Then each run is a fresh child process that loads the state and times
  ``store.derive_master`` (Argon2id) plus ``store.open_keys``, the work an
  unlock with the password does, and reports its RSS before and its peak after
  (``VmRSS`` then ``VmHWM``, the high-water mark restarted just before: see
  :func:`bench.measure.reset_peak_rss`), so the bench's memory does not hide the increase.

* Key fetch. Another temporary home runs the real broker and the real keyvault
  (``python -m services.broker``, ``python -m services.keyvault``) with a small
  test Argon2 profile (setup only: unlock is measured above) and the master key
  in the file keystore, so keyvault unseals on start. As ``storage`` the bench
  calls ``keyvault.keys.get {"purpose": "sqlcipher"}`` and, for comparison, the
  same client's ``keyvault.health`` round trip, sequentially, in alternating
  blocks after a warm-up. Each key release spools an audit record and fsyncs the
  spool before answering; the spool's append + fsync is timed on its own in the
  same home to show what that costs.

``python -m bench.keyvault init|unlock`` is the child side (``CURVEMESH_HOME``
set, the password on stdin, one JSON line on stdout).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from shared import Argon2Profile, MeshClient, MeshConfig, MeshError, MeshHome, Spool, load_config
from shared.provision import provision

from .harness import REPO, BenchError, Children, child_env, remove_home, run_json_child
from .measure import cpu_seconds, percentile, proc_status_kib, reset_peak_rss

#: The identities of the key-fetch home (the broker's keypair is always made).
IDENTITIES: Final = {"keyvault": "service", "storage": "service", "audit": "service"}
CALLER: Final = "storage"
PURPOSE: Final = "sqlcipher"
#: The fetch home's master profile: setup only, so as small as Argon2 allows.
FETCH_PROFILE: Final = Argon2Profile(memory_kib=8192, iterations=1, parallelism=1)
#: The bench home's [keyvault] audit_spool_max_records: nothing drains that spool until the
#: audit service exists, and a full spool refuses every release (fail closed).
SPOOL_BOUND: Final = 1_000_000
CHILD_TIMEOUT: Final = 600.0     # one init or unlock child (a derivation takes seconds)
READY_TIMEOUT: Final = 60.0      # broker up, keyvault registered and unsealed
CALL_TIMEOUT: Final = 10.0

#: The audit record keyvault spools per release (services/keyvault/recording.py, _audit).
_RELEASE_RECORD: Final = {"type": "keyvault.key_release", "actor": CALLER, "role": "service",
                          "purpose": PURPOSE, "version": 1}


def master_profile() -> Argon2Profile:
    """``[argon2.master]`` of the repository's mesh.toml (the profile a real mesh uses)."""
    profile: Argon2Profile = load_config(REPO / "mesh.toml").argon2.master
    return profile


def _profile_text(profile: Argon2Profile) -> str:
    return f"Argon2id {profile.memory_kib} KiB, {profile.iterations} iterations, {profile.parallelism} lanes"


def _toml_list(items: Any) -> str:
    return json.dumps(list(items))  # a TOML array of plain strings reads the same as JSON


def unlock_toml(profile: Argon2Profile) -> str:
    return f"""\
version = 1

# bench: the repository's master profile; the master key in a 0600 file (no keyring).
[keyvault]
keystore = "file"

[argon2.master]
memory_kib = {profile.memory_kib}
iterations = {profile.iterations}
parallelism = {profile.parallelism}
"""


def fetch_toml(repo: MeshConfig) -> str:
    """The key-fetch home's mesh.toml: the repository's service role and entitlements, health
    for ``storage`` (the comparison), a tiny test master profile and the file keystore."""
    role = repo.acl.role.get("service")
    if role is None or "keyvault.keys.get" not in role.call:
        raise BenchError("mesh.toml: [acl.role.service] does not grant keyvault.keys.get")
    if PURPOSE not in repo.keyvault.entitlements.get(CALLER, ()):
        raise BenchError(f"mesh.toml: {CALLER} is not entitled to {PURPOSE} keys")
    entitlements = "\n".join(f"{name} = {_toml_list(purposes)}"
                             for name, purposes in repo.keyvault.entitlements.items())
    return f"""\
version = 1

[limits.default]                 # never refuse the bench's own sequential calls
rate = 10000000.0
burst = 10000000

# As in the repository's mesh.toml:
[acl.role.service]
call = {_toml_list(role.call)}

# The bench only: the health round trip, for comparison.
[acl.identity.{CALLER}]
call = ["keyvault.health", "audit.health"]

[keyvault]
keystore = "file"                # the master key in a 0600 file: keyvault unseals on start
key_fetches_per_minute = 10000000  # the bench fetches in a loop, which a real service must not
audit_spool_max_records = 1000000

[keyvault.entitlements]
{entitlements}

# Setup only (unlock is measured with the real profile in another home).
[argon2]
test_profiles = true

[argon2.master]
memory_kib = {FETCH_PROFILE.memory_kib}
iterations = {FETCH_PROFILE.iterations}
parallelism = {FETCH_PROFILE.parallelism}
"""


def _make_home(mesh_toml: str, identities: dict[str, str] | None = None) -> MeshHome:
    """A fresh temporary home (short path: the broker's ipc socket lives in it)."""
    home = MeshHome(Path(tempfile.mkdtemp(prefix="cmk")))
    if identities is None:
        home.ensure()
    else:
        provision(home, identities)
    (home.root / "mesh.toml").write_text(mesh_toml, "utf-8")
    return home


def _run_child(home: MeshHome, mode: str, password: str) -> dict[str, Any]:
    """Run ``python -m bench.keyvault <mode>`` in ``home`` with the password on stdin; its JSON line."""
    return run_json_child(["bench.keyvault", mode], child_env(home), f"keyvault {mode}", CHILD_TIMEOUT,
                          stdin=password.encode())


def measure_unlock(runs: int) -> dict[str, Any]:
    """Initialise a home with the master profile, then time ``runs`` unlocks, each in its own child."""
    profile = master_profile()
    home = _make_home(unlock_toml(profile))
    password = secrets.token_urlsafe(24)
    try:
        print(f"keyvault: initialise with the master profile ({_profile_text(profile)}), keystore = file",
              flush=True)
        init = _run_child(home, "init", password)
        if init["keystore"] != "file":
            raise BenchError(f"keyvault init: keystore {init['keystore']!r}, expected the file keystore")
        results = []
        for run in range(runs):
            result = _run_child(home, "unlock", password)
            results.append(result)
            print(f"keyvault: unlock {run + 1}/{runs}: {result['unlock_s']:.2f} s (derive "
                  f"{result['derive_s']:.2f} s, open_keys {result['open_keys_s'] * 1e3:.2f} ms, CPU "
                  f"{result['cpu_s']:.2f} s), peak RSS +{result['rss_increase_kib'] / 1024:.0f} MiB", flush=True)
    finally:
        remove_home(home)
    return {"profile": {"memory_kib": profile.memory_kib, "iterations": profile.iterations,
                        "parallelism": profile.parallelism},
            "keystore": init["keystore"], "keystore_warning": init["warning"],
            "initialise_s": init["initialise_s"], "initialise_rss_increase_kib": init["rss_increase_kib"],
            "runs": results}


async def _call(client: MeshClient, target: str, body: Any) -> Any:
    try:
        return await client.call(target, body, timeout=CALL_TIMEOUT)
    except MeshError as exc:
        raise BenchError(f"{target}: {exc.code}: {exc.message}") from None


def _check_key(reply: Any) -> None:
    if not (isinstance(reply, dict) and reply.get("purpose") == PURPOSE and reply.get("version") == 1
            and isinstance(reply.get("key"), bytes) and len(reply["key"]) == 32):
        raise BenchError("keyvault.keys.get: the reply is not version 1 of a 32-byte sqlcipher key")


def _check_health(reply: Any) -> None:
    if not (isinstance(reply, dict) and reply.get("state") == "ready"):
        raise BenchError(f"keyvault.health: unexpected reply {reply!r}")


#: name -> (target, body, reply check)
_CALLS: Final[dict[str, tuple[str, Any, Callable[[Any], None]]]] = {
    "keys_get": ("keyvault.keys.get", {"purpose": PURPOSE}, _check_key),
    "health": ("keyvault.health", None, _check_health),
}


async def _timed(client: MeshClient, name: str, count: int) -> list[float]:
    """``count`` sequential calls; each round trip in seconds (the reply checked after the clock)."""
    target, body, check = _CALLS[name]
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        reply = await _call(client, target, body)
        samples[i] = clock() - start
        check(reply)
    return samples


async def _wait_unsealed(client: MeshClient, kids: Children) -> dict[str, Any]:
    """Poll ``keyvault.status`` until keyvault is registered and unsealed (with a deadline)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        kids.check_alive()
        try:
            status: dict[str, Any] = await client.call("keyvault.status", timeout=2.0)
        except MeshError as exc:
            if exc.code in ("FORBIDDEN", "UNAUTHENTICATED"):
                raise BenchError(f"keyvault.status refused: {exc.code}: {exc.message}") from None
            last = f"{exc.code}: {exc.message}"
        else:
            if status.get("initialised") and not status.get("sealed"):
                try:
                    audit = await client.call("audit.health", timeout=2.0)
                except MeshError as exc:
                    audit = {"state": exc.code}
                if audit.get("state") == "ready":
                    return status
                last = f"audit {audit.get('state')}: {audit.get('reason')}"
                await asyncio.sleep(0.1)  # poll interval
                continue
            last = f"status {status}"
        await asyncio.sleep(0.1)
    raise BenchError(f"keyvault not registered and unsealed within {READY_TIMEOUT:.0f} s ({last})")


async def _fetch(home: MeshHome, config: MeshConfig, kids: Children, keyvault_pid: int,
                 calls: int, blocks: int, warmup: int) -> dict[str, Any]:
    try:
        client = await MeshClient.connect(home, CALLER, config=config, timeout=READY_TIMEOUT)
    except MeshError as exc:
        raise BenchError(f"{CALLER} cannot connect to the broker: {exc.code}: {exc.message}") from None
    try:
        status = await _wait_unsealed(client, kids)
        if status.get("keystore") != "file":
            raise BenchError(f"keyvault runs with keystore {status.get('keystore')!r}, not the file keystore")
        # Warm-up: the first release of a version to an identity also rewrites the state file
        # (who fetched what); every later one waits for audit to record it durably (fail closed).
        for name in _CALLS:
            await _timed(client, name, warmup)
        samples: dict[str, list[float]] = {name: [] for name in _CALLS}
        cpu: dict[str, float] = dict.fromkeys(_CALLS, 0.0)
        per_block = calls // blocks
        for block in range(blocks):
            names = list(_CALLS) if block % 2 == 0 else list(reversed(_CALLS))
            for name in names:
                before = cpu_seconds(keyvault_pid)
                samples[name] += await _timed(client, name, per_block)
                after = cpu_seconds(keyvault_pid)
                if before is not None and after is not None:
                    cpu[name] += after - before
            kids.check_alive()
    finally:
        await client.close()
    count = per_block * blocks
    return {"status": status, "samples": samples,
            "keyvault_cpu_us_per_call": {n: round(c / count * 1e6, 1) for n, c in cpu.items()}}


def _spool_fsync(home: MeshHome, count: int) -> dict[str, list[float]]:
    """Time keyvault's per-release audit step (Spool.append + Spool.sync) on its own, in the
    same file system, and the append alone."""
    spool = Spool(home.spool / "bench-fsync.spool", count + 1)
    clock = time.perf_counter
    append, both = [0.0] * count, [0.0] * count
    try:
        for i in range(count):
            record = {**_RELEASE_RECORD, "time": time.time()}
            start = clock()
            spool.append(record)
            middle = clock()
            spool.sync()
            end = clock()
            append[i], both[i] = middle - start, end - start
    finally:
        spool.close()
    return {"append": append, "append_fsync": both}


def measure_fetch(calls: int, blocks: int, warmup: int) -> dict[str, Any]:
    """Start the real broker and keyvault in a fresh home; time key fetches and health calls."""
    from services.keyvault.setup import initialise  # keyring and the keystore load only here

    if warmup + calls >= SPOOL_BOUND:
        raise BenchError(f"--key-calls + --key-warmup must stay below keyvault's audit spool bound "
                         f"({SPOOL_BOUND}): nothing drains that spool yet and a full one refuses releases")
    repo = load_config(REPO / "mesh.toml")
    home = _make_home(fetch_toml(repo), IDENTITIES)
    try:
        config = load_config(home.root / "mesh.toml")
        keystore, _warning = initialise(home, config, bytearray(secrets.token_urlsafe(24).encode()))
        if keystore != "file":
            raise BenchError(f"keyvault setup chose keystore {keystore!r}, expected the file keystore")
        with Children(home) as kids:
            kids.spawn("kv-broker", "services.broker", guard=True)
            keyvault = kids.spawn("keyvault", "services.keyvault", guard=True)
            # Key release fails closed: audit must be up to record each release.
            kids.spawn("kv-audit", "services.audit", guard=True)
            try:
                with asyncio.Runner() as loop:
                    result = loop.run(_fetch(home, config, kids, keyvault.proc.pid, calls, blocks, warmup))
            except BenchError:
                kids.check_alive()  # a child that died explains a missing reply better
                raise
        result["spool"] = _spool_fsync(home, calls)
    finally:
        remove_home(home)
    result.update(calls=calls // blocks * blocks, blocks=blocks, warmup=warmup)
    return result


def measure(unlock_runs: int, calls: int, blocks: int, warmup: int) -> dict[str, Any]:
    """Both parts; the raw results :func:`bench.report.keyvault_figures` turns into figures."""
    unlock = measure_unlock(unlock_runs)
    fetch = measure_fetch(calls, blocks, warmup)
    p50 = {n: percentile(s, 0.5) * 1e6 for n, s in fetch["samples"].items()}
    print(f"keyvault: keys.get p50 {p50['keys_get']:.0f} us, health p50 {p50['health']:.0f} us "
          f"({fetch['calls']} calls each, as {CALLER})", flush=True)
    return {"unlock": unlock, "fetch": fetch}


# -- the child side -----------------------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds used by this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_start() -> tuple[int, bool]:
    """This process's RSS now (KiB), with the high-water mark restarted from it (see
    :func:`bench.measure.reset_peak_rss`), and whether the restart worked."""
    reset = reset_peak_rss()
    return proc_status_kib("VmRSS"), reset


def _child(mode: str) -> dict[str, Any]:
    from services.keyvault import store
    from services.keyvault.setup import initialise
    from shared.crypto import wipe

    home = MeshHome.from_env()
    config = load_config(home.root / "mesh.toml")
    password = bytearray(sys.stdin.buffer.read().strip())
    if mode == "init":
        rss, _ = _rss_start()
        start = time.perf_counter()
        keystore, warning = initialise(home, config, password)
        elapsed = time.perf_counter() - start
        return {"initialise_s": round(elapsed, 4), "keystore": keystore, "warning": warning,
                "rss_increase_kib": proc_status_kib("VmHWM") - rss}
    if mode != "unlock":
        raise SystemExit(f"bench.keyvault: unknown mode {mode!r}")
    state = store.load(home)
    if state is None:
        raise SystemExit("bench.keyvault: no keyvault state in this home")
    rss, reset = _rss_start()
    cpu = _cpu()
    start = time.perf_counter()
    master = store.derive_master(password, state)
    derived = time.perf_counter()
    keys = store.open_keys(state, master)
    end = time.perf_counter()
    rss_after, cpu_after = proc_status_kib("VmHWM"), _cpu()
    wipe(password)
    wipe(master)
    for key in keys.values():
        wipe(key)
    return {"unlock_s": round(end - start, 4), "derive_s": round(derived - start, 4),
            "open_keys_s": round(end - derived, 6), "keys": len(keys), "cpu_s": round(cpu_after - cpu, 3),
            "rss_before_kib": rss, "rss_peak_kib": rss_after, "rss_increase_kib": rss_after - rss,
            "hwm_reset": reset}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.keyvault init|unlock  (CURVEMESH_HOME set, password on stdin)")
    os.umask(0o077)
    print(json.dumps(_child(sys.argv[1])), flush=True)

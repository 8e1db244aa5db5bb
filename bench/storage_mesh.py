"""The storage figures over the mesh: data calls as a service would make them, then backup and restore.

A temporary home runs the real processes (``python -m services.broker``, ``services.keyvault``,
``services.audit``, ``services.storage``, each through :mod:`bench.guard`) with the repository's ACL
roles, identity rules and keyvault entitlements, the master key in the file keystore (keyvault
unseals at start) and a tiny test master profile (setup only; ``[argon2.file]``, which wraps the
backup passphrase, is the repository's). The bench waits for keyvault to be unsealed and audit
healthy, starts storage, and polls ``storage.health`` until it says ``ok`` (storage unseals once it
has fetched its keys), each wait with a deadline.

* Data calls. As ``authn`` (role service) through :class:`shared.MeshClient`: ``storage.kv.put``,
  ``storage.kv.get``, ``storage.records.insert``, ``storage.records.get`` with 100-200-byte values,
  and ``storage.health`` (granted to ``authn`` by the bench's mesh.toml only) as the bare round trip
  to compare with. Each round times every method sequentially (p50, p99 over every sample) and
  then pipelined (``window`` calls in flight from one client; calls per second), the order rotating.
* Backup. The same storage is filled through the mesh with about ``backup_mib`` MiB (files mostly,
  uploaded in 256 KiB pieces, some kv entries, records and an analytics table), then ``meshctl``
  (role operator) runs ``storage.backup.create {passphrase}`` and polls ``storage.jobs`` until the
  job is no longer running.
* Restore. That mesh is stopped; a second fresh home (another keyvault, other keys) gets the
  archive copied into ``<home>/backups/`` and runs ``storage.backup.restore {archive, passphrase}``
  the same way; then a few restored values are read back as ``authn`` to check the restore is real.

Backup and restore seconds are the job's own (``finished - started``, the storage process's clock);
the wall time the bench saw, polls included, is kept beside them. Every home is removed and every
process stopped on the way out (:class:`bench.harness.Children`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared import Argon2Profile, MeshClient, MeshConfig, MeshHome, load_config
from shared.provision import provision

from .harness import REPO, BenchError, Children, remove_home
from .measure import percentile
from .meshcalls import call, connect, until
from .storage import MIB, PIECE_BYTES, StorageOptions

IDENTITIES: Final = {"keyvault": "service", "audit": "service", "storage": "service", "authn": "service",
                     "meshctl": "operator"}
CALLER: Final = "authn"
OPERATOR: Final = "meshctl"
SCOPE: Final = {"category": "memories"}
COLLECTION: Final = "notes"
#: The measured methods, in the table's order; ``health`` is the comparison round trip.
METHODS: Final = ("kv_put", "kv_get", "records_insert", "records_get", "health")
#: Keys and documents written before the rounds, which the get calls read.
PRELOAD: Final = 512
#: The setup-only master profile (unlock is not measured here).
SETUP_PROFILE: Final = Argon2Profile(memory_kib=8192, iterations=1, parallelism=1)
FILE_BYTES: Final = 8 * MIB          # each fill file
UPLOADS_AT_ONCE: Final = 4           # storage allows a caller 8 open uploads
JOB_TIMEOUT: Final = 3600.0
POLL_S: Final = 0.05


def _toml_list(items: Any) -> str:
    return json.dumps(list(items))  # a TOML array of plain strings reads the same as JSON


def mesh_toml(repo: MeshConfig) -> str:
    """The bench homes' mesh.toml: the repository's roles, identity rules and entitlements, limits
    that never refuse the bench, the file keystore, a tiny setup-only master profile."""
    service, operator = repo.acl.role.get("service"), repo.acl.role.get("operator")
    if service is None or not {"storage.kv.*", "storage.records.*"} <= set(service.call):
        raise BenchError("mesh.toml: [acl.role.service] does not grant storage.kv.* and storage.records.*")
    if operator is None or "storage.*" not in operator.call:
        raise BenchError("mesh.toml: [acl.role.operator] does not grant storage.*")
    rules = [f"[acl.role.{name}]\ncall = {_toml_list(r.call)}\npublish = {_toml_list(r.publish)}\n"
             f"subscribe = {_toml_list(r.subscribe)}" for name, r in (("service", service), ("operator", operator))]
    for name in ("keyvault", "audit", "storage"):
        rule = repo.acl.identity.get(name)
        if rule is not None:
            rules.append(f"[acl.identity.{name}]\ncall = {_toml_list(rule.call)}\npublish = "
                         f"{_toml_list(rule.publish)}\nsubscribe = {_toml_list(rule.subscribe)}")
    caller = repo.acl.identity.get(CALLER)
    extra = sorted({*(caller.call if caller else ()), "storage.health"})
    entitlements = "\n".join(f"{name} = {_toml_list(purposes)}"
                             for name, purposes in repo.keyvault.entitlements.items())
    file = repo.argon2.file
    return f"""\
version = 1

[limits.default]                 # never refuse the bench's own pipelined calls
rate = 10000000.0
burst = 10000000

# As in the repository's mesh.toml:
{chr(10).join(rules)}

# The bench only: the storage.health round trip, for comparison.
[acl.identity.{CALLER}]
call = {_toml_list(extra)}

[keyvault]
keystore = "file"                # the master key in a 0600 file: keyvault unseals on start

[keyvault.entitlements]
{entitlements}

[argon2]
test_profiles = true             # for the setup-only master profile below

[argon2.master]
memory_kib = {SETUP_PROFILE.memory_kib}
iterations = {SETUP_PROFILE.iterations}
parallelism = {SETUP_PROFILE.parallelism}

# The repository's: it wraps the backup passphrase, whose cost backup and restore include.
[argon2.file]
memory_kib = {file.memory_kib}
iterations = {file.iterations}
parallelism = {file.parallelism}
"""


def _make_home(text: str) -> MeshHome:
    """A fresh provisioned home (short path: the broker's ipc socket lives in it), keyvault initialised."""
    from services.keyvault.setup import initialise  # keyring and the keystore load only here

    home = MeshHome(Path(tempfile.mkdtemp(prefix="cmst")))
    provision(home, IDENTITIES)
    (home.root / "mesh.toml").write_text(text, "utf-8")
    keystore, _warning = initialise(home, load_config(home.root / "mesh.toml"),
                                    bytearray(secrets.token_urlsafe(24).encode()))
    if keystore != "file":
        raise BenchError(f"keyvault setup chose keystore {keystore!r}, expected the file keystore")
    return home


async def start_mesh(kids: Children) -> MeshClient:
    """Start broker, keyvault and audit, wait until keyvault is unsealed and audit healthy, then start
    storage and wait until ``storage.health`` says ok; returns the operator's client."""
    for name in ("broker", "keyvault", "audit"):
        kids.spawn(name, f"services.{name}", guard=True)
    operator = await connect(kids.home, OPERATOR)
    try:
        async def vault() -> str | None:
            status = await operator.call("keyvault.status", timeout=2.0)
            if not status.get("initialised") or status.get("sealed"):
                return f"keyvault {status}"
            audit = await operator.call("audit.health", timeout=2.0)
            return None if audit.get("state") == "ready" else f"audit {audit.get('state')}: {audit.get('reason')}"
        await until(kids, "keyvault unsealed and audit ok", vault)
        kids.spawn("storage", "services.storage", guard=True)

        async def health() -> str | None:
            reply = await operator.call("storage.health", timeout=2.0)
            if reply.get("state") == "failed" and not reply.get("dependency"):
                raise BenchError(f"storage.health: failed: {reply.get('reason')}")
            return None if reply.get("state") == "ready" else f"state {reply.get('state')}: {reply.get('reason')}"
        await until(kids, "storage.health ok", health)
    except BaseException:
        await operator.close()
        raise
    return operator


# -- the data calls ---------------------------------------------------------------------------------


@dataclass
class Workload:
    """Request bodies and reply checks of each method; values are 100-200 bytes, keys never repeat."""

    values: list[bytes] = field(default_factory=lambda: [secrets.token_bytes(100 + i % 101) for i in range(256)])
    kv: dict[bytes, bytes] = field(default_factory=dict)        # preloaded: what kv_get reads
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # preloaded: what records_get reads
    kv_keys: list[bytes] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    next: int = 0

    def _n(self) -> int:
        self.next += 1
        return self.next

    def doc(self, n: int) -> dict[str, Any]:
        """A document of about 150 msgpack bytes."""
        return {"day": n % 365, "text": self.values[n % len(self.values)].hex()[:100 + n % 60]}

    def request(self, method: str, i: int) -> tuple[str, Any]:
        if method == "kv_put":
            n = self._n()
            return "storage.kv.put", {**SCOPE, "key": b"put/%d" % n, "value": self.values[n % len(self.values)]}
        if method == "kv_get":
            return "storage.kv.get", {**SCOPE, "key": self.kv_keys[i % len(self.kv_keys)]}
        if method == "records_insert":
            return "storage.records.insert", {**SCOPE, "collection": COLLECTION, "doc": self.doc(self._n())}
        if method == "records_get":
            return "storage.records.get", {**SCOPE, "collection": COLLECTION, "id": self.doc_ids[i % len(self.doc_ids)]}
        return "storage.health", None

    def check(self, method: str, body: Any, reply: Any) -> None:
        if method == "kv_put":
            ok = reply == {"stored": True}
        elif method == "kv_get":
            ok = reply.get("found") is True and reply.get("value") == self.kv[body["key"]]
        elif method == "records_insert":
            ok = isinstance(reply.get("id"), str)
        elif method == "records_get":
            ok = reply.get("found") is True and reply.get("doc") == self.docs[body["id"]]
        else:
            ok = reply.get("state") == "ready"
        if not ok:
            raise BenchError(f"{method}: unexpected reply {str(reply)[:200]}")


async def _sequential(client: MeshClient, load: Workload, method: str, count: int) -> list[float]:
    """``count`` sequential calls; each round trip in seconds (the reply checked after the clock)."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        target, body = load.request(method, i)
        start = clock()
        reply = await call(client, target, body)
        samples[i] = clock() - start
        load.check(method, body, reply)
    return samples


async def _pipelined(client: MeshClient, load: Workload, method: str, count: int, window: int) -> float:
    """``count`` calls from ``window`` concurrent tasks on one client; calls per second."""
    requests: Iterator[int] = iter(range(count))

    async def worker() -> None:
        for i in requests:  # one shared iterator: every call is made once
            target, body = load.request(method, i)
            load.check(method, body, await call(client, target, body))
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    return count / (time.perf_counter() - start)


async def _preload(client: MeshClient, load: Workload) -> None:
    await call(client, "storage.records.collection", {**SCOPE, "collection": COLLECTION, "indexed": ["day"]})

    async def put(i: int) -> None:
        key, value = b"get/%d" % i, load.values[i % len(load.values)]
        await call(client, "storage.kv.put", {**SCOPE, "key": key, "value": value})
        load.kv[key] = value

    async def insert(i: int) -> None:
        doc = load.doc(i)
        reply = await call(client, "storage.records.insert", {**SCOPE, "collection": COLLECTION, "doc": doc})
        load.docs[reply["id"]] = doc
    for job in (put, insert):
        for start in range(0, PRELOAD, 64):
            await asyncio.gather(*(job(i) for i in range(start, min(PRELOAD, start + 64))))
    load.kv_keys, load.doc_ids = list(load.kv), list(load.docs)


async def data_calls(client: MeshClient, kids: Children, opts: StorageOptions) -> dict[str, Any]:
    """Warm up, then ``opts.rounds`` rounds of every method, sequential then pipelined."""
    load = Workload()
    await _preload(client, load)
    for method in METHODS:
        await _sequential(client, load, method, opts.warmup)
        await _pipelined(client, load, method, opts.warmup, opts.window)
    samples: dict[str, list[float]] = {m: [] for m in METHODS}
    p50s: dict[str, list[float]] = {m: [] for m in METHODS}
    throughput: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(opts.rounds):
        order = list(METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)])
        for method in order:
            got = await _sequential(client, load, method, opts.calls)
            samples[method] += got
            p50s[method].append(round(percentile(got, 0.5) * 1e6, 1))
        for method in order:
            throughput[method].append(await _pipelined(client, load, method, opts.messages, opts.window))
        kids.check_alive()
        print(f"storage: mesh round {r + 1}/{opts.rounds}: p50 us "
              + " ".join(f"{m}={p50s[m][-1]:,.0f}" for m in METHODS) + " | calls/s "
              + " ".join(f"{m}={throughput[m][-1]:,.0f}" for m in METHODS), flush=True)
    return {"samples": samples, "round_p50_us": p50s, "throughput": throughput, "calls": opts.calls * opts.rounds,
            "messages": opts.messages, "window": opts.window, "warmup": opts.warmup, "preload": PRELOAD}


# -- fill, backup, restore ----------------------------------------------------------------------


async def _upload(client: MeshClient, name: str, size: int, pool: list[bytes]) -> None:
    """Upload ``size`` bytes as ``name`` in 256 KiB pieces; the commit's size proves every piece landed."""
    begun = await call(client, "storage.files.put.begin", {**SCOPE, "category": "files", "name": name, "size": size})
    sent = 0
    while sent < size:
        piece = pool[(sent // PIECE_BYTES + len(name)) % len(pool)][:size - sent]
        reply = await call(client, "storage.files.put.chunk", {"upload": begun["upload"], "data": piece})
        sent += len(piece)
        if reply.get("received") != sent:
            raise BenchError(f"storage.files.put.chunk: {name}: received {reply.get('received')} of {sent} bytes")
    info = await call(client, "storage.files.put.commit", {"upload": begun["upload"]})
    if info.get("size") != size:
        raise BenchError(f"storage.files.put.commit: {name} stored {info.get('size')} bytes of {size}")


async def fill(client: MeshClient, mib: int) -> dict[str, Any]:
    """About ``mib`` MiB through the mesh: ~90 % files, ~6 % kv entries (4 KiB), ~3 % records (2 KiB
    documents), and one small analytics table. Returns what was stored and how long it took."""
    total = mib * MIB
    files = max(1, round(total * 0.9 / FILE_BYTES))
    kv_values, docs = max(1, total * 6 // 100 // 4096), max(1, total * 3 // 100 // 2048)
    pool = [secrets.token_bytes(PIECE_BYTES) for _ in range(8)]
    start = time.perf_counter()
    slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

    async def one(i: int) -> None:
        async with slots:
            await _upload(client, f"fill/{i:04d}.bin", FILE_BYTES, pool)
    await asyncio.gather(*(one(i) for i in range(files)))
    uploaded = time.perf_counter()
    kv = {b"fill/%d" % i: secrets.token_bytes(4096) for i in range(kv_values)}
    items = list(kv.items())
    for at in range(0, len(items), 64):
        await asyncio.gather(*(call(client, "storage.kv.put", {**SCOPE, "key": k, "value": v})
                               for k, v in items[at:at + 64]))
    ids: list[str] = []
    for at in range(0, docs, 64):
        replies = await asyncio.gather(*(call(client, "storage.records.insert", {
            **SCOPE, "collection": COLLECTION, "doc": {"day": i % 365, "text": pool[i % 8][:1024].hex()}})
            for i in range(at, min(docs, at + 64))))
        ids += [r["id"] for r in replies]
    scope = {**SCOPE, "table": "mood"}
    await call(client, "storage.analytics.table", {**scope, "columns": [["day", "BIGINT"], ["score", "DOUBLE"]]})
    await call(client, "storage.analytics.ingest", {**scope, "rows": [[d, d / 10] for d in range(10_000)]})
    end = time.perf_counter()
    data = files * FILE_BYTES + kv_values * 4096 + docs * 2048
    print(f"storage: filled {data / MIB:,.0f} MiB ({files} files of {FILE_BYTES // MIB} MiB at "
          f"{files * FILE_BYTES / (uploaded - start) / 1e6:,.0f} MB/s, {kv_values} kv entries, {docs} records) "
          f"in {end - start:.1f} s", flush=True)
    sample = next(iter(kv))
    return {"bytes": data, "files": files, "file_bytes": FILE_BYTES, "kv_entries": kv_values, "records": docs,
            "analytics_rows": 10_000, "seconds": round(end - start, 3), "upload_s": round(uploaded - start, 3),
            "upload_mb_s": round(files * FILE_BYTES / (uploaded - start) / 1e6, 1),
            "check": {"kv": (sample, kv[sample]), "file": "fill/0000.bin", "record": ids[0]}}


async def run_job(operator: MeshClient, kids: Children, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """Start a storage job as the operator and poll ``storage.jobs`` until it is no longer running."""
    start = time.perf_counter()
    job = (await call(operator, method, body))["job"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        final: dict[str, Any] = await call(operator, "storage.jobs", {"job": job})
        if final["state"] != "running":
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{method}: job {job} still running after {JOB_TIMEOUT:.0f} s (phase {final['phase']})")
        kids.check_alive()
        await asyncio.sleep(POLL_S)
    wall = time.perf_counter() - start
    if final["state"] != "done":
        # The job's error names only the exception's type; storage's log says what failed.
        log = next((c.tail(4) for c in kids.started if c.name == "storage"), "")
        raise BenchError(f"{method}: job {final['state']}: {final.get('error')}\nstorage's log:\n{log[-2000:]}")
    return {"seconds": round(final["finished"] - final["started"], 3), "wall_s": round(wall, 3),
            "result": final["result"]}


async def _verify_restore(client: MeshClient, check: dict[str, Any]) -> None:
    """Read back a kv value, a file's metadata and a record in the restored home."""
    key, value = check["kv"]
    got = await call(client, "storage.kv.get", {**SCOPE, "key": key})
    info = await call(client, "storage.files.info", {**SCOPE, "category": "files", "name": check["file"]})
    doc = await call(client, "storage.records.get", {**SCOPE, "collection": COLLECTION, "id": check["record"]})
    if got.get("value") != value or info.get("size") != FILE_BYTES or not doc.get("found"):
        raise BenchError("restore: the restored storage does not hold what was backed up")


async def _first(kids: Children, opts: StorageOptions, passphrase: str) -> dict[str, Any]:
    """Data calls, then fill and backup; a failed fill or backup is recorded, not raised (the data
    call figures stand), unless a process died."""
    operator = await start_mesh(kids)
    try:
        client = await connect(kids.home, CALLER)
        try:
            calls = await data_calls(client, kids, opts)
            try:
                filled = await fill(client, opts.backup_mib)
                backup = await run_job(operator, kids, "storage.backup.create", {"passphrase": passphrase})
            except BenchError as exc:
                kids.check_alive()
                return {"calls": calls, "fill": None, "backup": {"error": str(exc)}}
        finally:
            await client.close()
    finally:
        await operator.close()
    print(f"storage: backup of {backup['result']['bytes'] / MIB:,.0f} MiB in {backup['seconds']:.2f} s", flush=True)
    return {"calls": calls, "fill": filled, "backup": backup}


async def _second(kids: Children, archive: str, passphrase: str, check: dict[str, Any]) -> dict[str, Any]:
    operator = await start_mesh(kids)
    try:
        restore = await run_job(operator, kids, "storage.backup.restore",
                                {"archive": archive, "passphrase": passphrase})
    finally:
        await operator.close()
    client = await connect(kids.home, CALLER)
    try:
        await _verify_restore(client, check)
    finally:
        await client.close()
    print(f"storage: restore in {restore['seconds']:.2f} s (into a fresh home, other keys)", flush=True)
    return restore


def _run(home: MeshHome, work: Callable[[Children], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run ``work`` against a mesh in ``home``; every process is stopped on the way out."""
    with Children(home) as kids:
        try:
            with asyncio.Runner() as loop:
                return loop.run(work(kids))
        except BenchError:
            kids.check_alive()  # a child that died explains a missing reply better
            raise


def measure(opts: StorageOptions) -> dict[str, Any]:
    """Data calls, fill and backup in one home; restore in a second; both homes removed on the way out.
    A backup or restore that fails is recorded as ``{"error": ...}`` for the report (and the exit status)."""
    text = mesh_toml(load_config(REPO / "mesh.toml"))
    passphrase = secrets.token_urlsafe(24)
    homes: list[MeshHome] = []
    try:
        homes.append(_make_home(text))
        first = _run(homes[0], lambda kids: _first(kids, opts, passphrase))
        if "error" in first["backup"]:
            restore: dict[str, Any] = {"error": "not run: the backup failed"}
        else:
            archive = Path(first["backup"]["result"]["path"])
            homes.append(_make_home(text))
            backups = homes[1].root / "backups"
            backups.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(archive, backups / archive.name)  # what meshctl does with the operator's file
            (backups / archive.name).chmod(0o600)
            remove_home(homes[0])  # the first mesh is stopped: its disk space goes back before the restore
            check = first["fill"].pop("check")  # holds bytes: not for the results file
            try:
                restore = _run(homes[1], lambda kids: _second(kids, archive.name, passphrase, check))
            except BenchError as exc:
                restore = {"error": str(exc)}
    finally:
        for home in homes:
            remove_home(home)
    for part, got in (("backup", first["backup"]), ("restore", restore)):
        if "error" in got:
            print(f"storage: {part} FAILED: {got['error']}", flush=True)
    return {**first, "restore": restore, "caller": CALLER, "operator": OPERATOR}

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
  Then gets under writes: ``calls`` sequential ``storage.kv.get`` while ``window`` puts stay in
  flight from the same client (:func:`_gets_under_puts`), against the gets alone: what a read waits
  for while writes are in flight. On the 2-core VM measured that is mostly the queue of puts ahead
  of it in the client, the broker and storage's loop (32 puts at ~3,000/s is ~10 ms of work in
  flight), the same before and after the WAL sync stopped holding the GIL
  (services/storage/kv/database.py); on a disk whose syncs are slow it would be the syncs.
* Backup, the growth curve (issue 18: "backup and restore per GiB at 1 and 4 GiB"). The same
  storage is grown through the mesh, as ``authn``, to each size of ``backup_sizes`` in turn (MiB of
  data stored; 1024 and 4096 by default, 64 and 256 with ``--quick``), always in the same mix: ~90 %
  files of 8 MiB uploaded in 256 KiB pieces, 8 uploads at once (storage's limit per caller), ~6 %
  kv entries of 4 KiB and ~3 % records of ~2 KiB, 256 calls in flight (storage commits them in
  groups), and analytics rows. Nothing is written around the service: the archive holds what the
  service stored. At each size ``meshctl`` (role operator) runs ``storage.backup.create
  {passphrase}`` ``backup_rounds`` times (2; 1 with ``--quick``) and polls ``storage.jobs`` until the
  job ends; the first archive is kept, the others removed at once.
* Restore. That mesh is stopped and its home removed (the archives set aside). Each archive is then
  restored ``backup_rounds`` times, the sizes in turn, each time into a fresh home of its own
  (another keyvault, other keys): copied into ``<home>/backups/``, ``storage.backup.restore
  {archive, passphrase}`` the same way, then read back as ``authn``: storage's count of restored
  files must be every file stored, and for every fill step two files are read whole and compared
  byte for byte, two kv values and two records compared too (:func:`verify_restore`).

Backup and restore seconds are the job's own (``finished - started``, the storage process's clock;
the figure is the median run); beside them the wall time the bench saw, the job's phases as the
50 ms polls saw them change, and the storage process's CPU seconds during the job (every thread,
user and kernel) with the time its threads waited for a CPU, from ``/proc/<pid>/task/*/schedstat``.
Before anything, the free space the curve needs (:func:`disk_needed`: about 2x the largest size
plus every archive, 15.5 GiB for 1 and 4 GiB) is checked in the temporary directory. Every home,
archive and the anchor directory (a temporary one, never the user's) is removed and every process
stopped on the way out (:class:`bench.harness.Children`).

The slope. On the 2-core VM these figures were first taken on (6 runs at 1 and 4 GiB, the load
average from other people's tests between 1.3 and 12), the per-GiB wall clock at 4 GiB over 1 GiB
was 0.73 to 1.70 for backup (1.45 to 1.70 on the quieter runs) and 1.09 to 1.42 for restore. The
code's own work is linear: storage's user CPU per GiB is flat (slope 0.95 for backup, 0.86 for
restore in the last run), and so is every part of it py-spy shows (AES-GCM, SHA-256, the chunk
wipes, the reads); in process, ``write_archive``, ``verify_archive`` and ``extract_archive`` of 1 and
4 GiB took the same per GiB. What grows is kernel time (slope 3.7 for backup, 1.5 for restore):
the kernel copying written data into the page cache (``copy_folio_from_iter_atomic``: 5 % of
storage's CPU during the 1 GiB backup, 44 % during the 4 GiB one, under ``perf``). On this VM the
first ~4-5 GiB of page cache a burst of writes adds cost ~0.35 s per GiB, every GiB past that ~3.3 s
(a plain loop of 64 KiB writes and fsyncs shows it; likely the host faulting fresh guest memory in
on first touch, as the VM hands freed memory back through virtio-balloon free page reporting). A
4 GiB restore writes ~8 GiB (the extracted archive, then the re-encrypted store). A backup no longer
adds to the cache: the archive writer syncs every 64 MiB and drops what it wrote
(services/storage/archive/writer.py, "Page cache"), which took the 4 GiB backup from 7.0-7.8 s/GiB
(slope 1.40-1.82) to 4.2-5.4 s/GiB (slope 0.79-1.19, three runs), with its kernel time per GiB
from 4.1 s to 1.2-1.7 s. Dropping a restore's extracted files and imported blobs as well was tried
and taken out: a 1 GiB restore was 20 % slower (the drops then cost more than the cache they
saved), and the 4 GiB gain was within the noise. The rest of the spread is the wall clock waiting
for a CPU on a busy machine. Where fresh memory costs nothing to fill, both curves should be flat
but for each job's fixed costs (one Argon2id of the ``file`` profile, 0.15-0.6 s here, and the
audit records), which make the smallest size the dearest per GiB.
"""

from __future__ import annotations

import asyncio
import hashlib
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

from .harness import REPO, BenchError, Children, initialised_home, remove_home
from .measure import percentile, sched_seconds, user_system_seconds
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
UPLOADS_AT_ONCE: Final = 8           # storage allows a caller 8 open uploads
PUTS_AT_ONCE: Final = 256            # fill kv puts and record inserts in flight (storage commits them in groups)
KV_BYTES: Final = 4096               # each fill kv value
ROWS_PER_MIB: Final = 40             # analytics rows per MiB filled
ROWS_PER_INGEST: Final = 10_000
JOB_TIMEOUT: Final = 3600.0
POLL_S: Final = 0.05


def _toml_list(items: Any) -> str:
    return json.dumps(list(items))  # a TOML array of plain strings reads the same as JSON


def mesh_toml(repo: MeshConfig, anchors: Path) -> str:
    """The bench homes' mesh.toml: the repository's roles, identity rules and entitlements, limits
    that never refuse the bench, the file keystore with its anchors in ``anchors`` (never the
    user's own anchor directory), a tiny setup-only master profile."""
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
anchor_dir = {json.dumps(str(anchors))}

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
    """A fresh provisioned home, keyvault initialised (:func:`bench.harness.initialised_home`)."""
    return initialised_home(text, IDENTITIES, "cmst")[0]


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


async def _gets_under_puts(client: MeshClient, load: Workload, count: int, window: int) -> tuple[list[float], float]:
    """``count`` sequential kv gets (round trips, s) while ``window`` tasks keep a put each in flight
    on the same client; and the puts per second answered while the gets ran."""
    stop, loaded = asyncio.Event(), asyncio.Event()
    answered = 0

    async def putter() -> None:
        nonlocal answered
        while not stop.is_set():
            target, body = load.request("kv_put", 0)
            load.check("kv_put", body, await call(client, target, body))
            answered += 1
            if answered >= window:
                loaded.set()  # every putter has had a put answered: the load is up

    tasks = [asyncio.create_task(putter()) for _ in range(window)]
    try:
        await asyncio.wait_for(loaded.wait(), 60)
        before, start = answered, time.perf_counter()
        samples = await _sequential(client, load, "kv_get", count)
        rate = (answered - before) / (time.perf_counter() - start)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return samples, rate


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
    loaded: list[float] = []
    loaded_p50s: list[float] = []
    puts_meanwhile: list[float] = []
    for r in range(opts.rounds):
        order = list(METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)])
        for method in order:
            got = await _sequential(client, load, method, opts.calls)
            samples[method] += got
            p50s[method].append(round(percentile(got, 0.5) * 1e6, 1))
        for method in order:
            throughput[method].append(await _pipelined(client, load, method, opts.messages, opts.window))
        got, rate = await _gets_under_puts(client, load, opts.calls, opts.window)
        loaded += got
        loaded_p50s.append(round(percentile(got, 0.5) * 1e6, 1))
        puts_meanwhile.append(round(rate, 1))
        kids.check_alive()
        print(f"storage: mesh round {r + 1}/{opts.rounds}: p50 us "
              + " ".join(f"{m}={p50s[m][-1]:,.0f}" for m in METHODS) + " | calls/s "
              + " ".join(f"{m}={throughput[m][-1]:,.0f}" for m in METHODS)
              + f" | kv_get under {opts.window} puts p50 {loaded_p50s[-1]:,.0f} us ({puts_meanwhile[-1]:,.0f} puts/s)",
              flush=True)
    return {"samples": samples, "round_p50_us": p50s, "throughput": throughput, "calls": opts.calls * opts.rounds,
            "gets_under_puts": {"samples": loaded, "round_p50_us": loaded_p50s, "puts_s": puts_meanwhile},
            "messages": opts.messages, "window": opts.window, "warmup": opts.warmup, "preload": PRELOAD}


# -- fill, backup, restore ----------------------------------------------------------------------


def file_piece(pool: list[bytes], number: int, index: int) -> bytes:
    """Piece ``index`` of fill file ``number``: a pool piece, the first one stamped with the file's
    number, so every file's content is its own and follows from its number alone."""
    piece = pool[(number + index) % len(pool)]
    return number.to_bytes(8, "big") + piece[8:] if index == 0 else piece


def file_name(number: int) -> str:
    return f"fill/{number:06d}.bin"


def record_doc(pool: list[bytes], number: int) -> dict[str, Any]:
    """Fill record ``number``: about 2 KiB of msgpack."""
    return {"day": number % 365, "text": pool[number % len(pool)][:1024].hex(), "n": number}


@dataclass
class Filled:
    """What the fill has stored in one home so far (it grows the store one curve point at a time),
    and what a restore of it must give back (``checks``: a few items of every step)."""

    pool: list[bytes] = field(default_factory=lambda: [secrets.token_bytes(PIECE_BYTES) for _ in range(8)])
    files: int = 0
    kv: int = 0
    records: int = 0
    rows: int = 0
    bytes: int = 0
    checks: dict[str, list[Any]] = field(default_factory=lambda: {"kv": [], "files": [], "records": []})


async def _upload(client: MeshClient, pool: list[bytes], number: int) -> None:
    """Upload fill file ``number`` (:data:`FILE_BYTES`) in 256 KiB pieces, in order; each piece's
    reply and the commit's size prove every byte landed."""
    name, size = file_name(number), FILE_BYTES
    begun = await call(client, "storage.files.put.begin", {**SCOPE, "category": "files", "name": name, "size": size})
    for index in range(size // PIECE_BYTES):
        piece = file_piece(pool, number, index)
        reply = await call(client, "storage.files.put.chunk", {"upload": begun["upload"], "data": piece})
        if reply.get("received") != (index + 1) * PIECE_BYTES:
            raise BenchError(f"storage.files.put.chunk: {name}: received {reply.get('received')} bytes, "
                             f"{(index + 1) * PIECE_BYTES} sent")
    info = await call(client, "storage.files.put.commit", {"upload": begun["upload"]})
    if info.get("size") != size:
        raise BenchError(f"storage.files.put.commit: {name} stored {info.get('size')} bytes of {size}")


async def _windowed(count: int, window: int, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """``one(i)`` for every i in range(count), ``window`` at a time (a worker takes the next i as soon
    as its call is answered, so a slow call never holds up the others)."""
    numbers: Iterator[int] = iter(range(count))

    async def worker() -> None:
        for i in numbers:  # one shared iterator: every i is done once
            await one(i)
    await asyncio.gather(*(worker() for _ in range(min(window, count))))


async def fill_to(client: MeshClient, filled: Filled, mib: int) -> dict[str, Any]:
    """Grow the store through the mesh to about ``mib`` MiB of data, in the same mix at every size:
    ~90 % files of 8 MiB (uploaded :data:`UPLOADS_AT_ONCE` at once), ~6 % kv entries of 4 KiB, ~3 %
    records of ~2 KiB (each :data:`PUTS_AT_ONCE` in flight), and analytics rows. Returns how long
    each part took; ``filled`` is updated, with a few items of this step to read back after a restore."""
    add = mib * MIB - filled.bytes
    if add < FILE_BYTES:
        raise BenchError(f"backup curve: {mib} MiB is not {FILE_BYTES // MIB} MiB above the previous point")
    files = max(1, round(add * 0.9 / FILE_BYTES))
    kv_count, doc_count = max(1, add * 6 // 100 // KV_BYTES), max(1, add * 3 // 100 // 2048)
    rows = max(1, add // MIB * ROWS_PER_MIB)
    pool, first_file, first_kv, first_doc = filled.pool, filled.files, filled.kv, filled.records
    if filled.records == 0:  # the data calls declare it too, with the same fields (idempotent)
        await call(client, "storage.records.collection", {**SCOPE, "collection": COLLECTION, "indexed": ["day"]})
    clock = time.perf_counter
    start = clock()
    await _windowed(files, UPLOADS_AT_ONCE, lambda i: _upload(client, pool, first_file + i))
    uploaded = clock()

    async def put(i: int) -> None:
        number = first_kv + i
        await call(client, "storage.kv.put", {**SCOPE, "key": b"fill/%d" % number, "value": kv_value(number)})
    await _windowed(kv_count, PUTS_AT_ONCE, put)
    put_done = clock()
    ids: dict[int, str] = {}

    async def insert(i: int) -> None:
        reply = await call(client, "storage.records.insert",
                           {**SCOPE, "collection": COLLECTION, "doc": record_doc(pool, first_doc + i)})
        if i in (0, doc_count - 1):
            ids[first_doc + i] = reply["id"]
    await _windowed(doc_count, PUTS_AT_ONCE, insert)
    inserted = clock()
    scope = {**SCOPE, "table": "mood"}
    if filled.rows == 0:
        await call(client, "storage.analytics.table", {**scope, "columns": [["day", "BIGINT"], ["score", "DOUBLE"]]})
    for at in range(filled.rows, filled.rows + rows, ROWS_PER_INGEST):
        days = range(at, min(filled.rows + rows, at + ROWS_PER_INGEST))
        await call(client, "storage.analytics.ingest", {**scope, "rows": [[d, d / 10] for d in days]})
    end = clock()
    data = files * FILE_BYTES + kv_count * KV_BYTES + doc_count * 2048
    filled.files, filled.kv, filled.records = first_file + files, first_kv + kv_count, first_doc + doc_count
    filled.rows, filled.bytes = filled.rows + rows, filled.bytes + data
    filled.checks["files"] += sorted({first_file, filled.files - 1})
    filled.checks["kv"] += sorted({first_kv, filled.kv - 1})
    filled.checks["records"] += sorted(ids.items())
    step = {"bytes": data, "files": files, "file_bytes": FILE_BYTES, "uploads_at_once": UPLOADS_AT_ONCE,
            "puts_at_once": PUTS_AT_ONCE, "kv_entries": kv_count, "records": doc_count, "analytics_rows": rows,
            "seconds": round(end - start, 3), "upload_s": round(uploaded - start, 3),
            "upload_mb_s": round(files * FILE_BYTES / (uploaded - start) / 1e6, 1),
            "kv_puts_s": round(kv_count / (put_done - uploaded), 1),
            "record_inserts_s": round(doc_count / (inserted - put_done), 1)}
    print(f"storage: filled to {filled.bytes / MIB:,.0f} MiB (+{data / MIB:,.0f} MiB: {files} files of "
          f"{FILE_BYTES // MIB} MiB at {step['upload_mb_s']:,.0f} MB/s, {kv_count:,} kv entries at "
          f"{step['kv_puts_s']:,.0f}/s, {doc_count:,} records at {step['record_inserts_s']:,.0f}/s) "
          f"in {end - start:.1f} s", flush=True)
    return step


def kv_value(number: int) -> bytes:
    """Fill kv entry ``number``'s value (4 KiB): derived from the number, so a restore can be checked
    without keeping every value."""
    seed = hashlib.sha256(b"fill/%d" % number).digest()
    return seed * (KV_BYTES // len(seed))


async def run_job(operator: MeshClient, kids: Children, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """Start a storage job as the operator and poll ``storage.jobs`` until it is no longer running.
    The job's phases as the polls saw them change (``phases_s``: seconds in each, to the poll
    interval) say where its time went; so do the storage process's CPU seconds meanwhile (every
    thread: ``cpu_s``, split into ``user_s`` and ``system_s``: the kernel's) and the seconds its
    threads waited runnable for a CPU (``run_queue_s``, summed over threads)."""
    pid = next(c.proc.pid for c in kids.started if c.name == "storage")
    before, modes = sched_seconds(pid), user_system_seconds(pid)
    start = time.perf_counter()
    job = (await call(operator, method, body))["job"]
    deadline = time.monotonic() + JOB_TIMEOUT
    seen: list[tuple[str, float]] = []
    while True:
        final: dict[str, Any] = await call(operator, "storage.jobs", {"job": job})
        if final["state"] != "running":
            break
        if not seen or seen[-1][0] != final["phase"]:
            seen.append((final["phase"], time.perf_counter()))
        if time.monotonic() > deadline:
            raise BenchError(f"{method}: job {job} still running after {JOB_TIMEOUT:.0f} s (phase {final['phase']})")
        kids.check_alive()
        await asyncio.sleep(POLL_S)  # the poll interval (not a synchronisation)
    ended = time.perf_counter()
    after, modes_after = sched_seconds(pid), user_system_seconds(pid)
    wall = ended - start
    if final["state"] != "done":
        # The job's error names only the exception's type; storage's log says what failed.
        log = next((c.tail(4) for c in kids.started if c.name == "storage"), "")
        raise BenchError(f"{method}: job {final['state']}: {final.get('error')}\nstorage's log:\n{log[-2000:]}")
    phases: dict[str, float] = {}
    for (phase, at), (_, until_) in zip(seen, [*seen[1:], ("", ended)], strict=True):
        phases[phase] = round(phases.get(phase, 0.0) + until_ - at, 3)
    used = (None, None) if before is None or after is None else (after[0] - before[0], after[1] - before[1])
    split = (None, None) if modes is None or modes_after is None else (modes_after[0] - modes[0],
                                                                        modes_after[1] - modes[1])
    return {"seconds": round(final["finished"] - final["started"], 3), "wall_s": round(wall, 3),
            "phases_s": phases, "cpu_s": None if used[0] is None else round(used[0], 3),
            "user_s": None if split[0] is None else round(split[0], 2),
            "system_s": None if split[1] is None else round(split[1], 2),
            "run_queue_s": None if used[1] is None else round(used[1], 3), "result": final["result"]}


async def _read_file(client: MeshClient, name: str) -> bytes:
    """A whole file through ``storage.files.get``, one reply (up to 512 KiB) at a time."""
    parts, offset = [], 0
    while offset is not None:
        reply = await call(client, "storage.files.get", {**SCOPE, "category": "files", "name": name, "offset": offset})
        parts.append(reply["data"])
        offset = reply["next"]
    return b"".join(parts)


async def verify_restore(client: MeshClient, filled: dict[str, Any], pool: list[bytes],
                         result: dict[str, Any]) -> dict[str, int]:
    """Check the restored home holds what was backed up: the restore's own count of files, and, read
    back as ``authn``, a few kv values, whole files (every byte) and records of every fill step."""
    if result.get("files") != filled["files"] or result.get("kv", 0) < filled["kv_entries"] \
            or result.get("records", 0) < filled["records"]:
        raise BenchError(f"restore: counts {result} do not cover the {filled['files']} files, "
                         f"{filled['kv_entries']} kv entries and {filled['records']} records backed up")
    checks = filled["checks"]
    read = 0
    for number in checks["kv"]:
        got = await call(client, "storage.kv.get", {**SCOPE, "key": b"fill/%d" % number})
        if got.get("value") != kv_value(number):
            raise BenchError(f"restore: kv entry fill/{number} does not hold what was backed up")
    for number in checks["files"]:
        data = await _read_file(client, file_name(number))
        want = b"".join(file_piece(pool, number, i) for i in range(FILE_BYTES // PIECE_BYTES))
        if data != want:
            raise BenchError(f"restore: {file_name(number)} reads back {len(data)} bytes that differ from the upload")
        read += len(data)
    for number, record in checks["records"]:
        doc = await call(client, "storage.records.get", {**SCOPE, "collection": COLLECTION, "id": record})
        if doc.get("doc") != record_doc(pool, number):
            raise BenchError(f"restore: record {number} does not hold what was backed up")
    return {"kv": len(checks["kv"]), "files": len(checks["files"]), "file_bytes": read,
            "records": len(checks["records"])}


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of one job at one point as one: the run of median seconds (the lower middle of an even
    count), every run's seconds, CPU and run-queue seconds beside it."""
    middle = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    keys = ("seconds", "wall_s", "cpu_s", "user_s", "system_s", "run_queue_s", "phases_s")
    return {**middle, "runs": [{k: r[k] for k in keys} for r in runs]}


async def _first(kids: Children, opts: StorageOptions, passphrase: str, filled: Filled) -> dict[str, Any]:
    """Data calls, then for each curve size: fill up to it and back up ``backup_rounds`` times (the
    first run's archive is kept for the restores, the others removed at once). A failed fill or
    backup is recorded, not raised (the figures before it stand) and ends the curve, unless a
    process died."""
    operator = await start_mesh(kids)
    points: list[dict[str, Any]] = []
    try:
        client = await connect(kids.home, CALLER)
        try:
            calls = await data_calls(client, kids, opts)
            for mib in opts.backup_sizes:
                point: dict[str, Any] = {"mib": mib}
                points.append(point)
                try:
                    point["fill"] = await fill_to(client, filled, mib)
                    point["stored"] = {"bytes": filled.bytes, "files": filled.files, "kv_entries": filled.kv,
                                       "records": filled.records, "analytics_rows": filled.rows,
                                       "checks": {k: list(v) for k, v in filled.checks.items()}}
                    runs = []
                    for r in range(opts.backup_rounds):
                        got = await run_job(operator, kids, "storage.backup.create", {"passphrase": passphrase})
                        runs.append(got)
                        if r:
                            Path(got["result"]["path"]).unlink()
                        print(f"storage: backup {r + 1}/{opts.backup_rounds} at {mib:,} MiB stored: "
                              f"{got['result']['bytes'] / MIB:,.0f} MiB archive in {got['seconds']:.2f} s (CPU "
                              f"{got['cpu_s']} s: user {got['user_s']}, kernel {got['system_s']}; run queue "
                              f"{got['run_queue_s']} s; phases {got['phases_s']})",
                              flush=True)
                    point["backup"] = {**summary(runs), "result": runs[0]["result"]}
                except BenchError as exc:
                    kids.check_alive()
                    point["backup"] = {"error": str(exc)}
                    break
        finally:
            await client.close()
    finally:
        await operator.close()
    return {"calls": calls, "points": points}


async def _restore(kids: Children, archive: str, passphrase: str, stored: dict[str, Any],
                   pool: list[bytes]) -> dict[str, Any]:
    operator = await start_mesh(kids)
    try:
        restore = await run_job(operator, kids, "storage.backup.restore",
                                {"archive": archive, "passphrase": passphrase})
    finally:
        await operator.close()
    client = await connect(kids.home, CALLER)
    try:
        restore["verified"] = await verify_restore(client, stored, pool, restore["result"])
    finally:
        await client.close()
    print(f"storage: restore of {stored['bytes'] / MIB:,.0f} MiB stored in {restore['seconds']:.2f} s (into a "
          f"fresh home, other keys; CPU {restore['cpu_s']} s: user {restore['user_s']}, kernel "
          f"{restore['system_s']}; run queue {restore['run_queue_s']} s; phases "
          f"{restore['phases_s']}; verified {restore['verified']})", flush=True)
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


def disk_needed(sizes: tuple[int, ...]) -> int:
    """Bytes of free space the curve needs at its peak, with a margin: the first home holds the
    largest store and every archive; a restore holds the largest archive, its extracted copy and the
    restored store, beside the archives still to restore."""
    largest, total = max(sizes) * MIB, sum(sizes) * MIB
    return int(max(largest + total, 2 * largest + total) * 1.15) + 512 * MIB


def measure(opts: StorageOptions) -> dict[str, Any]:
    """Data calls and the curve's fills and backups in one home; each archive restored in a fresh
    home of its own, one at a time; every home, archive and the anchor directory removed on the way
    out. A backup or restore that fails is recorded as ``{"error": ...}`` for the report (and the
    exit status)."""
    scratch = Path(tempfile.gettempdir())
    free, needed = shutil.disk_usage(scratch).free, disk_needed(opts.backup_sizes)
    if free < needed:
        raise BenchError(f"storage: the backup curve at {opts.backup_sizes} MiB needs about {needed / 2**30:.1f} "
                         f"GiB free in {scratch}, {free / 2**30:.1f} GiB is: give smaller --backup-sizes")
    anchors = Path(tempfile.mkdtemp(prefix="cmsa"))  # 0700, outside every home
    archives = Path(tempfile.mkdtemp(prefix="cmsk"))  # the operator's copies, between the two meshes
    text = mesh_toml(load_config(REPO / "mesh.toml"), anchors)
    passphrase = secrets.token_urlsafe(24)
    filled = Filled()
    try:
        home = _make_home(text)
        try:
            first = _run(home, lambda kids: _first(kids, opts, passphrase, filled))
            for point in first["points"]:
                if "error" not in point["backup"]:
                    path = Path(point["backup"]["result"]["path"])
                    shutil.move(path, archives / path.name)
        finally:
            remove_home(home)  # the first mesh is stopped: its disk space goes back before the restores
        measured = [p for p in first["points"] if "error" not in p["backup"]]
        for point in first["points"]:
            if "error" in point["backup"]:
                point["restore"] = {"error": "not run: the backup failed"}
        runs: dict[int, list[dict[str, Any]]] = {p["mib"]: [] for p in measured}
        for r in range(opts.backup_rounds):  # the sizes in turn, round after round
            for point in measured:
                if "restore" in point:  # a failed restore is not tried again
                    continue
                name = point["backup"]["result"]["archive"]
                last = r == opts.backup_rounds - 1
                home = _make_home(text)
                try:
                    backups = home.root / "backups"
                    backups.mkdir(mode=0o700, exist_ok=True)
                    # What meshctl does with the operator's file (moved, not copied, the last time).
                    (shutil.move if last else shutil.copyfile)(archives / name, backups / name)
                    (backups / name).chmod(0o600)
                    runs[point["mib"]].append(_run(home, lambda kids, p=point, n=name: _restore(
                        kids, n, passphrase, p["stored"], filled.pool)))
                except BenchError as exc:
                    point["restore"] = {"error": str(exc)}
                finally:
                    remove_home(home)
        for point in measured:
            if "restore" not in point:
                point["restore"] = summary(runs[point["mib"]])
    finally:
        shutil.rmtree(archives, ignore_errors=True)
        shutil.rmtree(anchors, ignore_errors=True)
    for point in first["points"]:
        for part in ("backup", "restore"):
            if "error" in point[part]:
                print(f"storage: {part} at {point['mib']:,} MiB FAILED: {point[part]['error']}", flush=True)
    return {"calls": first["calls"], "curve": first["points"], "disk": {"free_bytes": free, "needed_bytes": needed},
            "caller": CALLER, "operator": OPERATOR}

"""The key-value and file paths against their unsealed twins, in process, and the memory a large file takes.

Run by :func:`bench.storage.measure_engines` in interleaved rounds whose order alternates, each in
fresh files in the temporary directory it is given, removed after:

* RocksDB through :class:`services.storage.kv.store.KvStore` (application sealing, ``put_many`` batches,
  ``get``) against raw ``rocksdict`` put/get of the same values with the store's engine settings
  (``settings.options()``: the store adds Bloom filters on top, which would make the raw twin ~12% slower,
  so the baseline keeps the plain ones) and synced write batches of the same size: the ratio is what
  sealing and keyed name hashing cost.
* STREAM (:mod:`services.storage.core.stream`) against raw AES-256-GCM (``cryptography``'s ``AESGCM``,
  one object per stream) over the same bytes, the same chunk size, the same file writes and reads:
  the ratio is what STREAM adds over the cipher (a key per stream by HKDF, the header as associated
  data of every chunk, chunk bookkeeping).
* Peak resident memory of writing and reading one large file (1 GiB; smaller with ``--quick``)
  through :class:`services.storage.files.store.FileStore`, in a child process
  (``python -m bench.storage rss DIR BYTES``, whose entry point calls :func:`_rss_child`) that
  measures itself (see :func:`_rss_child` for why it reads /proc rather than trusting ``ru_maxrss``
  alone). Target: < 64 MiB, i.e. a file is streamed, never held whole.
"""

from __future__ import annotations

import gc
import os
import resource
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from .harness import REPO, BenchError, run_json_child
from .measure import proc_status_kib, reset_peak_rss
from .storage import MIB, PIECE_BYTES, Pair, Rounds, _timed, _values

#: Items per KvStore.put_many (and raw write batch): what one group commit of puts may carry.
KV_BATCH: Final = 500
CHILD_TIMEOUT: Final = 900.0     # one RSS child (a 1 GiB write and read, fsynced)


# -- RocksDB: KvStore (sealed) against raw rocksdict --------------------------------------------


def _rocks_round(work: Path, sealed: bool, names: list[bytes], values: list[bytes]) -> Pair:
    import rocksdict

    from services.storage.core.keys import KeySet
    from services.storage.core.namespace import Namespace
    from services.storage.kv import settings as kv_settings
    from services.storage.kv import store as kv

    ns = Namespace("authn", "alice", "memories")
    path = work / ("sealed" if sealed else "raw")
    batches = [range(i, min(i + KV_BATCH, len(names))) for i in range(0, len(names), KV_BATCH)]
    if sealed:
        keys = KeySet("rocksdb")
        keys.add(1, bytearray(secrets.token_bytes(32)))
        store = kv.KvStore.open(path)
        try:
            put_s, _ = _timed(lambda: [store.put_many(keys, [(ns, names[i], values[i]) for i in b]) for b in batches])
            get_s, got = _timed(lambda: [store.get(keys, ns, name) for name in names])
        finally:
            store.close()
            keys.wipe()
    else:
        # The store's own options (private, but the point is the same engine settings) and synced batches.
        db = rocksdict.Rdict(str(path), kv_settings.options())
        sync = rocksdict.WriteOptions()
        sync.sync = True
        label = ns.label()

        def put() -> None:
            for b in batches:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for i in b:
                    batch.put(label + names[i], values[i])
                db.write(batch, sync)
        try:
            put_s, _ = _timed(put)
            get_s, got = _timed(lambda: [db.get(label + name) for name in names])
        finally:
            db.close()
    if got != values:
        raise BenchError(f"rocksdb ({'sealed' if sealed else 'raw'}): a get did not return the value put")
    shutil.rmtree(path)
    return {"put": len(names) / put_s, "get": len(names) / get_s}


def rocksdb_rounds(work: Path, rounds: int, count: int) -> tuple[Rounds, dict[str, Any]]:
    """KvStore and raw rocksdict, interleaved; items/s of puts and gets per round."""
    out: Rounds = {"kv_put": [], "kv_get": []}
    for r in range(rounds):
        names = [f"memory/{r}/{i}".encode() for i in range(count)]
        values = _values(count)
        got: dict[str, Pair] = {}
        for sealed in ((True, False) if r % 2 == 0 else (False, True)):
            got["sealed" if sealed else "raw"] = _rocks_round(work, sealed, names, values)
        for figure, name in (("kv_put", "put"), ("kv_get", "get")):
            out[figure].append({v: got[v][name] for v in ("sealed", "raw")})
        print(f"storage: rocksdb round {r + 1}/{rounds}: put/s sealed={got['sealed']['put']:,.0f} "
              f"raw={got['raw']['put']:,.0f}, get/s sealed={got['sealed']['get']:,.0f} raw={got['raw']['get']:,.0f}",
              flush=True)
    from services.storage.kv import NATIVE

    return out, {"items": count, "batch": KV_BATCH, "sync": True, "compiled": NATIVE.compiled, "rounds": rounds}


def kv_growth(work: Path, sizes: tuple[int, ...], samples: int = 5000) -> dict[str, Any]:
    """KvStore get latency as the store grows: one store filled (``put_many`` batches of
    :data:`KV_BATCH`) to each size in turn; at each, ``samples`` gets of random names present, each
    timed alone (ns). Returns the per-size p50/p99 in microseconds and the time the fill took."""
    import random

    from services.storage.core.keys import KeySet
    from services.storage.core.namespace import Namespace
    from services.storage.kv import store as kv

    ns = Namespace("authn", "alice", "memories")
    keys = KeySet("rocksdb")
    keys.add(1, bytearray(secrets.token_bytes(32)))
    path = work / "growth"
    points: list[dict[str, Any]] = []
    store = kv.KvStore.open(path)
    try:
        filled, fill_s = 0, 0.0
        for size in sorted(sizes):
            start = time.perf_counter()
            while filled < size:
                n = min(KV_BATCH, size - filled)
                store.put_many(keys, [(ns, b"memory/%d" % (filled + i), os.urandom(150)) for i in range(n)])
                filled += n
            fill_s += time.perf_counter() - start
            rng = random.Random(size)
            lat: list[float] = []
            for i in (rng.randrange(size) for _ in range(samples)):
                name = b"memory/%d" % i
                t0 = time.perf_counter_ns()
                value = store.get(keys, ns, name)
                lat.append((time.perf_counter_ns() - t0) / 1000)
                if value is None:
                    raise BenchError("kv growth: a get did not find a value put")
            lat.sort()
            points.append({"entries": size, "p50_us": round(lat[len(lat) // 2], 2),
                           "p99_us": round(lat[int(len(lat) * 0.99)], 2), "fill_s": round(fill_s, 1)})
            print(f"storage: kv growth {size:,} entries: get p50 {points[-1]['p50_us']} us, "
                  f"p99 {points[-1]['p99_us']} us (filled in {fill_s:.1f} s)", flush=True)
    finally:
        store.close()
        keys.wipe()
        shutil.rmtree(path, ignore_errors=True)
    return {"points": points, "samples": samples, "value_bytes": 150}


# -- STREAM against raw AES-256-GCM -------------------------------------------------------------


def _pieces(pool: bytes, total: int, size: int) -> Iterator[memoryview]:
    """``total`` bytes as pieces of ``size``, cut from ``pool`` over and over (no copy)."""
    view = memoryview(pool)
    sent = 0
    while sent < total:
        at = sent % len(pool)
        n = min(size, total - sent, len(pool) - at)
        yield view[at:at + n]
        sent += n


def _stream_round(path: Path, lib: bool, pool: bytes, total: int) -> Pair:
    """Write then read ``total`` bytes through STREAM (``lib``) or raw AESGCM; MB/s both ways."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from services.storage.core import stream

    key, aad, chunk = secrets.token_bytes(32), b"bench-aad", stream.DEFAULT_CHUNK_SIZE
    if lib:
        def write() -> None:
            with open(path, "wb") as out, stream.StreamWriter(out, key, 1, aad, chunk_size=chunk) as writer:
                for piece in _pieces(pool, total, PIECE_BYTES):
                    writer.write(piece)

        def read() -> int:
            with open(path, "rb") as src, stream.StreamReader(src, lambda _v: key, aad) as reader:
                return sum(len(plain) for plain in reader.chunks())
    else:
        prefix = secrets.token_bytes(7)
        chunks = -(-total // chunk)

        def nonce(i: int) -> bytes:
            return prefix + i.to_bytes(4, "big") + (b"\x01" if i == chunks - 1 else b"\x00")

        def write() -> None:
            aes = AESGCM(key)
            with open(path, "wb") as out:
                out.write(bytes(stream.HEADER_BYTES))  # the same file layout, header included
                for i, piece in enumerate(_pieces(pool, total, chunk)):
                    out.write(aes.encrypt(nonce(i), piece, aad))

        def read() -> int:
            aes = AESGCM(key)
            size = 0
            with open(path, "rb") as src:
                src.seek(stream.HEADER_BYTES)
                for i in range(chunks):
                    size += len(aes.decrypt(nonce(i), src.read(chunk + stream.TAG_BYTES), aad))
            return size
    write_s, _ = _timed(write)
    read_s, size = _timed(read)
    if size != total:
        raise BenchError(f"stream ({'STREAM' if lib else 'raw AESGCM'}): read {size} bytes of {total}")
    path.unlink()
    return {"write": total / write_s / 1e6, "read": total / read_s / 1e6}


def stream_rounds(work: Path, rounds: int, mib: int) -> tuple[Rounds, dict[str, Any]]:
    """STREAM and raw AESGCM, interleaved; MB/s written and read per round."""
    from services.storage.core import stream

    pool = secrets.token_bytes(16 * MIB)
    total = mib * MIB
    out: Rounds = {"stream_write": [], "stream_read": []}
    for r in range(rounds):
        got: dict[str, Pair] = {}
        for lib in ((True, False) if r % 2 == 0 else (False, True)):
            got["stream" if lib else "aesgcm"] = _stream_round(work / "stream.bin", lib, pool, total)
        for figure, name in (("stream_write", "write"), ("stream_read", "read")):
            out[figure].append({v: got[v][name] for v in ("stream", "aesgcm")})
        print(f"storage: stream round {r + 1}/{rounds}: MB/s write STREAM={got['stream']['write']:,.0f} "
              f"raw={got['aesgcm']['write']:,.0f}, read STREAM={got['stream']['read']:,.0f} "
              f"raw={got['aesgcm']['read']:,.0f}", flush=True)
    return out, {"bytes": total, "chunk_bytes": stream.DEFAULT_CHUNK_SIZE, "piece_bytes": PIECE_BYTES}


# -- peak RSS of a large file through FileStore (child process) ---------------------------------


def measure_rss(work: Path, mib: int) -> dict[str, Any]:
    """Run the RSS child on a ``mib`` MiB file in ``work``; its JSON result."""
    env = {k: v for k, v in os.environ.items() if k != "CURVEMESH_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = run_json_child(["bench.storage", "rss", str(work), str(mib * MIB)], env, "storage rss child",
                            CHILD_TIMEOUT)
    print(f"storage: {mib} MiB file through FileStore: write {result['write_mb_s']:,.0f} MB/s, read "
          f"{result['read_mb_s']:,.0f} MB/s, peak RSS +{result['rss_increase_kib'] / 1024:.1f} MiB", flush=True)
    return result


def _rss_child(work: Path, size: int) -> dict[str, Any]:
    """Write ``size`` bytes as one file through FileStore (upload pieces, commit), read it back in the
    pieces ``storage.files.get`` returns, and report the peak resident memory that took.

    The figure is the peak RSS of this image after the work (``VmHWM``, reset just before it by
    :func:`bench.measure.reset_peak_rss`, which says why not ``ru_maxrss``) minus its RSS before
    (``VmRSS``); ``ru_maxrss`` before and after are reported beside it."""
    from services.storage.core.keys import KeySet
    from services.storage.core.namespace import Namespace
    from services.storage.core.stream import DEFAULT_CHUNK_SIZE
    from services.storage.files.store import FileStore

    def maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    store = FileStore(work / "files")
    keys = KeySet("files")
    keys.add(1, bytearray(secrets.token_bytes(32)))
    ns = Namespace("authn", "alice", "files")
    piece = secrets.token_bytes(PIECE_BYTES)
    gc.collect()
    ru_before = maxrss()
    reset = reset_peak_rss()  # the high-water mark restarts from here
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    upload = store.begin(keys, ns, "big.bin", size)
    for _ in range(size // PIECE_BYTES):
        upload.write(piece)
    if size % PIECE_BYTES:
        upload.write(piece[:size % PIECE_BYTES])
    info = store.commit(upload)
    written = time.perf_counter()
    offset: int | None = 0
    read = 0
    while offset is not None:
        data, offset = store.read(keys, ns, "big.bin", offset, PIECE_BYTES // DEFAULT_CHUNK_SIZE)
        read += len(data)
    end = time.perf_counter()
    peak = proc_status_kib("VmHWM")
    if info.size != size or read != size:
        raise SystemExit(f"bench.storage rss: wrote {info.size} and read {read} bytes of {size}")
    return {"bytes": size, "write_s": round(written - start, 3), "read_s": round(end - written, 3),
            "write_mb_s": round(size / (written - start) / 1e6, 1), "read_mb_s": round(size / (end - written) / 1e6, 1),
            "rss_before_kib": before, "rss_peak_kib": peak, "rss_increase_kib": peak - before, "hwm_reset": reset,
            "ru_maxrss_before_kib": ru_before, "ru_maxrss_after_kib": maxrss()}

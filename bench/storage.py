"""The storage figures: each engine encrypted against its plaintext twin, in process, then over the mesh.

In-process comparisons, in interleaved rounds whose order alternates; within a round the twins'
steps alternate too, so drift on a busy machine hits both alike (:func:`bench.report.storage_figures`
takes medians across rounds). Every round uses fresh files in a temporary directory, removed after:

* SQLCipher against ``sqlite3`` and encrypted DuckDB against a plain file (:mod:`bench.storage_sql`).
* RocksDB through the sealing ``KvStore`` against raw ``rocksdict``, STREAM against raw AES-256-GCM,
  and the peak resident memory of one large file through ``FileStore`` (:mod:`bench.storage_stream`).
  That last one runs in a child process, ``python -m bench.storage rss DIR BYTES`` (this module's
  entry point), so the figure is of the file alone, not of the bench around it.

Then the mesh figures and the backup/restore growth curve (:mod:`bench.storage_mesh`). No timed
assertion anywhere: targets are checked on the figures by :mod:`bench.report`.

This module holds what the others import: the options, the units and the small helpers of a round.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

MIB: Final = 1 << 20
#: Plaintext bytes of one file upload piece (services/storage/files/schema.py FILE_PIECE_BYTES).
PIECE_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class StorageOptions:
    """What the storage section measures, and how much (``python -m bench --help`` lists the flags)."""

    rounds: int = 5                  # interleaved rounds of every comparison and of the mesh calls
    sql_rows: int = 50_000           # rows per SQLCipher / sqlite3 bulk insert (and point selects)
    duckdb_rows: int = 200_000       # rows ingested per DuckDB twin, 10,000 per transaction
    duckdb_scan_rows: int = 2_000_000
    kv_items: int = 20_000           # values put and got per RocksDB twin
    # Rounds of the RocksDB twins alone (a second or so each). On a shared two-core VM one round's
    # ratio swings by a fifth either way (0.29-0.41 for puts in one run), so the median of five moved
    # between runs by more than the distance to the target; the median of eleven moves less.
    kv_rounds: int = 11
    # KvStore get p50 growth curve: entries in the store at each point (one store, filled in turn).
    kv_curve: tuple[int, ...] = (10_000, 1_000_000)
    stream_mib: int = 256            # bytes through STREAM and raw AESGCM, each way
    rss_file_mib: int = 1024         # the file written and read through FileStore in the RSS child
    calls: int = 1000                # sequential mesh calls per method per round
    messages: int = 4000             # pipelined mesh calls per method per round
    window: int = 32                 # mesh calls in flight
    warmup: int = 100                # mesh calls per method before the rounds
    # Backup and restore growth curve: MiB of data stored through the mesh at each point, increasing
    # (one store filled to each size in turn, backed up at each; each archive restored into a fresh home).
    backup_sizes: tuple[int, ...] = (1024, 4096)
    backup_rounds: int = 2           # backups, and restores, at each size (the median is the figure)

    @classmethod
    def quick(cls) -> StorageOptions:
        """``--quick``: every part, smaller (a few minutes in all on two cores)."""
        return cls(rounds=3, sql_rows=20_000, duckdb_rows=100_000, duckdb_scan_rows=1_000_000, kv_items=5_000,
                   kv_rounds=3, kv_curve=(10_000, 100_000), stream_mib=128, rss_file_mib=256, calls=300, messages=1500,
                   warmup=50, backup_sizes=(64, 256), backup_rounds=1)

    def params(self) -> dict[str, Any]:
        return asdict(self)


Pair = dict[str, float]                # variant -> value of one round
Rounds = dict[str, list[Pair]]         # figure key -> one Pair per round


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _values(count: int, low: int = 100, high: int = 200) -> list[bytes]:
    """``count`` random values of ``low``..``high`` bytes (the issue's value sizes)."""
    return [secrets.token_bytes(low + secrets.randbelow(high - low + 1)) for _ in range(count)]


# -- the section ----------------------------------------------------------------------------------


def measure_engines(opts: StorageOptions) -> dict[str, Any]:
    """Every in-process comparison and the RSS child, in a temporary directory removed on the way out."""
    from . import storage_sql, storage_stream  # they import this module's helpers

    work = Path(tempfile.mkdtemp(prefix="cmse"))
    try:
        # One after the other, in order.
        parts = {"sqlcipher": storage_sql.sqlcipher_rounds(work, opts.rounds, opts.sql_rows),
                 "duckdb": storage_sql.duckdb_rounds(work, opts.rounds, opts.duckdb_rows, opts.duckdb_scan_rows),
                 "rocksdb": storage_stream.rocksdb_rounds(work, opts.kv_rounds, opts.kv_items),
                 "stream": storage_stream.stream_rounds(work, opts.rounds, opts.stream_mib)}
        rounds: Rounds = {key: values for got, _ in parts.values() for key, values in got.items()}
        info = {name: about for name, (_, about) in parts.items()}
        growth = storage_stream.kv_growth(work, opts.kv_curve)
        rss = storage_stream.measure_rss(work, opts.rss_file_mib)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"rounds": rounds, "info": info, "rss": rss, "kv_growth": growth}


def measure(opts: StorageOptions) -> dict[str, Any]:
    """The whole storage section: the raw results :func:`bench.report.storage_figures` turns into figures."""
    from . import storage_mesh

    engines = measure_engines(opts)
    mesh = storage_mesh.measure(opts)
    return {**engines, "mesh": mesh}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "rss":
        raise SystemExit("usage: python -m bench.storage rss DIR BYTES")
    from .storage_stream import _rss_child

    os.umask(0o077)
    print(json.dumps(_rss_child(Path(sys.argv[2]), int(sys.argv[3]))), flush=True)

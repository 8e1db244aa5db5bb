"""The SQL engines against their plaintext twins, in process: what encryption at rest costs the records
store (SQLCipher) and the analytics store (DuckDB), with everything else held equal.

Both run in interleaved rounds (:func:`bench.storage.measure_engines` calls them); within a round the
twins' steps alternate, so drift on a busy machine hits both alike. Every round uses fresh files in
the temporary directory it is given, removed after:

* SQLCipher with a raw 256-bit key (``PRAGMA key = "x'<hex>'"``) against the standard library's
  ``sqlite3``, both with the records store's pragmas (WAL, ``synchronous = FULL``, ``temp_store =
  MEMORY``) and its ``docs`` table: a bulk insert of N rows in one transaction, then (connections
  reopened, so the page cache starts cold) N point selects by primary key. ``sqlcipher3`` without a
  key is timed too: it bundles another SQLite version than ``sqlite3``, and this third variant
  isolates what the encryption itself costs. The target (>= 0.7x) is against ``sqlite3``.
* DuckDB with ``ENCRYPTION_KEY`` against a plain file, both in the store's instance settings with
  httpfs loaded from the ``duckdb_extension_httpfs`` wheel (OpenSSL does the crypto), the plain file
  in the storage format DuckDB writes encrypted files in: bulk insert by the analytics store's own
  method (``sandbox.insert_sql``: one parameterised INSERT of a JSON payload of up to 10,000 rows,
  one transaction per payload; target >= 0.8x), an engine-bound write (``INSERT ... SELECT`` from
  ``range`` plus ``CHECKPOINT``) and cold scan aggregates (each on a fresh instance).

Each comparison also checks that the twins are what they say (the encrypted file is not readable
without its key, the plain one is) and raises :class:`bench.harness.BenchError` otherwise.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any, Final

from .harness import BenchError
from .storage import Pair, Rounds, _timed, _values

#: The DuckDB table of the comparison (the analytics store's column types).
DUCK_COLUMNS: Final = [("day", "BIGINT"), ("score", "DOUBLE"), ("note", "VARCHAR")]
#: Cold scans per DuckDB round, each after a fresh ATTACH (one takes tens of milliseconds).
DUCK_SCANS: Final = 5
#: Bulk inserts per SQLite variant per round (each N rows in one transaction into a fresh
#: database), alternating between the variants; and point selects per alternating block.
SQL_INSERTS: Final = 3
SQL_SELECT_BLOCK: Final = 1000
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_RECORDS_SCHEMA: Final = ("CREATE TABLE docs (ns BLOB NOT NULL, coll TEXT NOT NULL, id TEXT NOT NULL, "
                          "body BLOB NOT NULL, PRIMARY KEY (ns, coll, id))")


# -- SQLCipher against sqlite3 ------------------------------------------------------------------


def _sql_connect(variant: str, path: Path, key: bytes) -> Any:
    """A connection with the records store's pragmas; ``variant`` is sqlcipher, sqlcipher-nokey or sqlite3."""
    import sqlcipher3

    module: Any = sqlite3 if variant == "sqlite3" else sqlcipher3
    db = module.connect(str(path), isolation_level=None)
    if variant == "sqlcipher":
        db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    db.execute("PRAGMA temp_store = MEMORY")
    if str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() != "wal":
        raise BenchError(f"{variant}: WAL mode refused")
    db.execute("PRAGMA synchronous = FULL")
    return db


def _sql_set(work: Path, order: list[str], rows: list[tuple[bytes, str, str, bytes]]) -> dict[str, Pair]:
    """Each variant's bulk insert (N rows in one transaction into a fresh database), repeated
    :data:`SQL_INSERTS` times with the variants alternating, then point selects on reopened
    connections (a cold page cache, as after a restart) in blocks that alternate between the
    variants, so drift hits all alike; rows/s and selects/s per variant."""
    paths = {v: work / f"{v}.db" for v in order}
    keys = {v: secrets.token_bytes(32) for v in order}
    spent = {v: {"insert": 0.0, "select": 0.0} for v in order}
    for rep in range(SQL_INSERTS):
        for v in (order if rep % 2 == 0 else order[::-1]):
            for suffix in ("", "-wal", "-shm"):  # each insert into a fresh database
                Path(f"{paths[v]}{suffix}").unlink(missing_ok=True)
            db = _sql_connect(v, paths[v], keys[v])
            try:
                db.execute(_RECORDS_SCHEMA)

                def insert(db: Any = db) -> None:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany("INSERT INTO docs (ns, coll, id, body) VALUES (?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                spent[v]["insert"] += _timed(insert)[0]
            finally:
                db.close()
    dbs = {v: _sql_connect(v, paths[v], keys[v]) for v in order}
    query = "SELECT body FROM docs WHERE ns = ? AND coll = ? AND id = ?"
    found = dict.fromkeys(order, 0)
    try:
        for block, start in enumerate(range(0, len(rows), SQL_SELECT_BLOCK)):
            part = rows[start:start + SQL_SELECT_BLOCK]
            for v in (order if block % 2 == 0 else order[::-1]):
                db = dbs[v]

                def select(db: Any = db, part: list[tuple[bytes, str, str, bytes]] = part) -> int:
                    return sum(db.execute(query, (ns, coll, rid)).fetchone() is not None for ns, coll, rid, _ in part)
                seconds, hits = _timed(select)
                spent[v]["select"] += seconds
                found[v] += hits
    finally:
        for db in dbs.values():
            db.close()
    for v, path in paths.items():
        if found[v] != len(rows):
            raise BenchError(f"{v}: {found[v]} of {len(rows)} point selects found their row")
        # The encrypted file must not be readable SQLite; the plain ones must be (the twins are what they say).
        with open(path, "rb") as f:
            plain = f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
        if plain == (v == "sqlcipher"):
            raise BenchError(f"{v}: the database file is {'not ' if v != 'sqlcipher' else ''}plain SQLite")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {v: {"insert": SQL_INSERTS * len(rows) / t["insert"], "select": len(rows) / t["select"]}
            for v, t in spent.items()}


def sqlcipher_rounds(work: Path, rounds: int, count: int) -> tuple[Rounds, dict[str, Any]]:
    """SQLCipher (raw key), unkeyed sqlcipher3 and sqlite3, interleaved; rows/s and selects/s per round."""
    import sqlcipher3

    ns = b"\x94\xa3ns1\xa5authn\xa5alice\xa8memories"  # the shape of a Namespace label
    variants = ["sqlcipher", "sqlite3", "sqlcipher-nokey"]
    out: Rounds = {"sql_insert": [], "sql_select": []}
    for r in range(rounds):
        rows = [(ns, "notes", secrets.token_hex(16), body) for body in _values(count)]
        got = _sql_set(work, variants[r % 3:] + variants[:r % 3], rows)
        for figure, name in (("sql_insert", "insert"), ("sql_select", "select")):
            out[figure].append({v: got[v][name] for v in variants})
        print(f"storage: sqlcipher round {r + 1}/{rounds}: insert rows/s "
              + " ".join(f"{v}={got[v]['insert']:,.0f}" for v in variants), flush=True)
    probe = sqlcipher3.connect(":memory:")
    try:
        info = {"sqlcipher_sqlite_version": probe.execute("SELECT sqlite_version()").fetchone()[0],
                "cipher_version": probe.execute("PRAGMA cipher_version").fetchone()[0],
                "sqlite3_version": sqlite3.sqlite_version, "rows": count}
    finally:
        probe.close()
    return out, info


# -- DuckDB encrypted against plain -------------------------------------------------------------


def _duck_open(extension: Path, path: Path, key: str | None, version: str) -> Any:
    """A DuckDB instance with the store's settings and ``path`` attached as ``db`` (and used)."""
    from services.storage.analytics import sandbox

    con = sandbox.instance(extension)  # the store's memory limit, threads, no temp directory, httpfs loaded
    try:
        con.execute("SET enable_progress_bar = false")  # DuckDB draws one on stdout after 2 s otherwise
        # The plain twin gets the storage format an encrypted file is written in (newer than a plain
        # file's default), so the twins differ by the encryption only.
        option = f"ENCRYPTION_KEY {sandbox.sql_text(key)}" if key else f"STORAGE_VERSION {sandbox.sql_text(version)}"
        con.execute(f"ATTACH {sandbox.sql_text(str(path))} AS db ({option})")
        con.execute("USE db")
    except BaseException:
        con.close()
        raise
    return con


def _duck_info(con: Any) -> tuple[bool, str]:
    """Whether ``db`` is encrypted, and its storage version."""
    encrypted, tags = con.execute("SELECT encrypted, tags FROM duckdb_databases() "
                                  "WHERE database_name = 'db'").fetchone()
    return bool(encrypted), str(tags.get("storage_version", "?")).rstrip("+")


def _duck_pair(work: Path, payloads: list[str], rows: int, scan_rows: int, extension: Path, version: str,
               flip: bool) -> dict[str, Pair]:
    """Both twins open side by side; every step alternates between them so drift hits both alike.
    Steps: the store's ingest statement per payload (one transaction each, as one
    ``storage.analytics.ingest`` call each), an engine-bound write, then cold scans; rows/s of each."""
    from services.storage.analytics import sandbox

    keys = {"encrypted": secrets.token_hex(32), "plain": None}
    order = ["plain", "encrypted"] if flip else ["encrypted", "plain"]
    paths = {v: work / f"{v}.duckdb" for v in order}
    cons: dict[str, Any] = {}
    spent = {v: {"insert": 0.0, "write": 0.0, "scan": 0.0} for v in order}
    try:
        for v in order:
            cons[v] = _duck_open(extension, paths[v], keys[v], version)
            if _duck_info(cons[v]) != (v == "encrypted", version):
                raise BenchError(f"duckdb: the {v} twin is {_duck_info(cons[v])}, expected ({v == 'encrypted'}, "
                                 f"{version!r})")
            for table in ("rows", "big"):
                cons[v].execute(f"CREATE TABLE {table} ({', '.join(f'{n} {t}' for n, t in DUCK_COLUMNS)})")
        statement = sandbox.insert_sql("rows", DUCK_COLUMNS)
        for i, payload in enumerate(payloads):
            for v in (order if i % 2 == 0 else order[::-1]):
                con = cons[v]

                def ingest(con: Any = con, payload: str = payload) -> None:
                    con.execute("BEGIN")
                    con.execute(statement, [payload])
                    con.execute("COMMIT")
                spent[v]["insert"] += _timed(ingest)[0]
        for v in order:
            con = cons[v]

            def write(con: Any = con) -> None:
                con.execute("INSERT INTO big SELECT i, random(), 'note ' || i || repeat('x', i % 64) "
                            f"FROM range({scan_rows}) t(i)")
                con.execute("CHECKPOINT db")
            spent[v]["write"] = _timed(write)[0]
        for scan in range(DUCK_SCANS):
            for v in (order if scan % 2 == 0 else order[::-1]):
                cons[v].close()
                # A fresh instance: the scan reads (and decrypts) every block from the file.
                cons[v] = _duck_open(extension, paths[v], keys[v], version)
                con = cons[v]

                def scan_once(con: Any = con) -> Any:
                    return con.execute("SELECT count(*), sum(score), sum(length(note)) FROM big").fetchone()
                seconds, result = _timed(scan_once)
                spent[v]["scan"] += seconds
                stored = cons[v].execute("SELECT count(*) FROM rows").fetchone()[0]
                if (result[0], stored) != (scan_rows, rows):
                    raise BenchError(f"duckdb ({v}): {stored} ingested and {result[0]} written rows, expected "
                                     f"{rows} and {scan_rows}")
    finally:
        for con in cons.values():
            con.close()
    try:  # the encrypted twin must refuse to open without its key
        _duck_open(extension, paths["encrypted"], None, version).close()
    except Exception:  # noqa: BLE001 - any refusal will do; what matters is that it did not open
        pass
    else:
        raise BenchError("duckdb: the encrypted database opened without its key")
    for leftover in work.glob("*.duckdb*"):
        leftover.unlink()
    return {v: {"insert": rows / t["insert"], "write": scan_rows / t["write"],
                "scan": DUCK_SCANS * scan_rows / t["scan"]} for v, t in spent.items()}


def duckdb_rounds(work: Path, rounds: int, count: int, scan_rows: int) -> tuple[Rounds, dict[str, Any]]:
    """Encrypted and plain DuckDB, interleaved; rows/s of each workload per round."""
    import duckdb

    from services.storage.analytics.sandbox import encode_rows, httpfs_path
    from services.storage.analytics.store import MAX_INGEST_ROWS

    extension = httpfs_path()
    probe = _duck_open(extension, work / "probe.duckdb", secrets.token_hex(32), "")
    try:
        version = _duck_info(probe)[1]  # the storage version DuckDB writes encrypted files in
    finally:
        probe.close()
    rows = [[i, i / 7, f"note {i} " + "x" * (i % 64)] for i in range(count)]
    # Encoded once, outside the clock: the comparison is of the engines, not of Python's json.
    payloads = [encode_rows(DUCK_COLUMNS, rows[i:i + MAX_INGEST_ROWS]) for i in range(0, count, MAX_INGEST_ROWS)]
    out: Rounds = {"duck_insert": [], "duck_write": [], "duck_scan": []}
    for r in range(rounds):
        got = _duck_pair(work, payloads, count, scan_rows, extension, version, flip=r % 2 == 1)
        for figure, name in (("duck_insert", "insert"), ("duck_write", "write"), ("duck_scan", "scan")):
            out[figure].append({v: got[v][name] for v in ("encrypted", "plain")})
        print(f"storage: duckdb round {r + 1}/{rounds}: ingest rows/s encrypted={got['encrypted']['insert']:,.0f} "
              f"plain={got['plain']['insert']:,.0f}; scan rows/s encrypted={got['encrypted']['scan']:,.0f} "
              f"plain={got['plain']['scan']:,.0f}", flush=True)
    for leftover in work.glob("probe.duckdb*"):
        leftover.unlink()
    return out, {"duckdb_version": duckdb.__version__, "extension": extension.name, "storage_version": version,
                 "rows": count, "rows_per_transaction": MAX_INGEST_ROWS, "scan_rows": scan_rows,
                 "cold_scans": DUCK_SCANS}

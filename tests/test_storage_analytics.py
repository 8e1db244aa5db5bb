"""Encrypted DuckDB analytics: confinement of caller SQL, encryption, damage, isolation and rotation."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from services.storage.analytics.sandbox import attach, file_key, file_name
from services.storage.analytics.store import MAX_INGEST_ROWS, AnalyticsStore, httpfs_path
from services.storage.core.errors import DamagedError, MissingKeyError
from services.storage.core.keys import KeySet
from services.storage.core.namespace import Namespace
from shared import BadRequest, Conflict, NotFound, Timeout

ROOT = Path(__file__).resolve().parent.parent
ALICE = Namespace("assistant", "alice@example.org", "events")
BOB = Namespace("assistant", "bob@example.org", "events")
COLUMNS = [("ts", "TIMESTAMP"), ("kind", "VARCHAR"), ("n", "BIGINT"), ("x", "DOUBLE"), ("raw", "BLOB"),
           ("ok", "BOOLEAN"), ("day", "DATE")]


def keyset(*versions: int) -> KeySet:
    keys = KeySet("duckdb")
    for v in versions:
        keys.add(v, bytearray(secrets.token_bytes(32)), current=True)
    return keys


def rows(n: int, kind: str = "k") -> list[list[object]]:
    return [[dt.datetime(2024, 1, 1, 10, 0) + dt.timedelta(minutes=i), kind, i, i / 4, bytes([i % 256]),
             i % 2 == 0, dt.date(2024, 2, 1)] for i in range(n)]


@pytest.fixture
def keys() -> KeySet:
    return keyset(1)


@pytest.fixture
def store(tmp_path: Path):
    s = AnalyticsStore(tmp_path / "analytics")
    yield s
    s.close()


@pytest.fixture
def filled(store: AnalyticsStore, keys: KeySet) -> AnalyticsStore:
    store.create_table(keys, ALICE, "t", COLUMNS)
    store.ingest(keys, ALICE, "t", rows(20))
    return store


def select(store: AnalyticsStore, keys: KeySet, ns: Namespace, sql: str, *params: object) -> list[list[object]]:
    return store.query(keys, ns, sql, list(params), 1000, 10.0)[1]


def test_httpfs_is_found_and_the_crypto_self_test_passes(store: AnalyticsStore) -> None:
    path = httpfs_path()
    assert path.is_file() and path.name == "httpfs.duckdb_extension" and f"v{duckdb.__version__}" in str(path)
    store.check_crypto()
    assert list(store.root.iterdir()) == [] and store.is_empty()


def test_without_the_httpfs_extension_storage_refuses_to_start(tmp_path: Path) -> None:
    # A stand-in package without the extension file: what a broken or missing wheel looks like.
    shadow = tmp_path / "shadow" / "duckdb_extension_httpfs"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    code = ("import sys; from pathlib import Path; from services.storage.analytics.store import AnalyticsStore\n"
            "try:\n    AnalyticsStore(Path(sys.argv[1])).check_crypto()\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "root")], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"}, cwd=ROOT)
    assert done.stdout.startswith(b"StartupError DuckDB's secure crypto module (httpfs/OpenSSL) cannot be loaded: "
                                  b"storage refuses to start"), done
    assert list((tmp_path / "root").iterdir()) == []


def test_round_trip_types_and_tables(filled: AnalyticsStore, keys: KeySet) -> None:
    filled.create_table(keys, ALICE, "t", [(n, t.lower()) for n, t in COLUMNS])  # identical: idempotent
    with pytest.raises(Conflict):
        filled.create_table(keys, ALICE, "t", COLUMNS[:3])
    filled.ingest(keys, ALICE, "t", [["2024-03-01T12:00:00+02:00", None, None, float("inf"), None, None, "2024-03-01"]])
    names, got = filled.query(keys, ALICE, "SELECT * FROM t WHERE n = ? OR n IS NULL ORDER BY n NULLS LAST", [3],
                              10, 5.0)
    assert names == [n for n, _ in COLUMNS]
    assert got == [["2024-01-01T10:03:00", "k", 3, 0.75, b"\x03", False, "2024-02-01"],
                   ["2024-03-01T10:00:00", None, None, float("inf"), None, None, "2024-03-01"]]
    huge = str(2**100)
    wire = select(filled, keys, ALICE, "SELECT 1.25::DECIMAL(5,2) AS d, INTERVAL 90 SECOND AS i, [1, 2] AS l, "
                                      f"{{'a': DATE '2024-01-02'}} AS s, {huge}::HUGEINT AS h, "
                                      "'00000000-0000-0000-0000-000000000001'::UUID AS u, TIME '10:30:00' AS t")
    assert wire == [["1.25", 90.0, [1, 2], {"a": "2024-01-02"}, huge, "00000000-0000-0000-0000-000000000001",
                     "10:30:00"]]
    assert filled.tables(keys, ALICE) == [{"name": "t", "columns": [[n, t] for n, t in COLUMNS], "rows": 21}]
    assert filled.tables(keys, BOB) == []
    with pytest.raises(BadRequest, match="add a LIMIT"):
        filled.query(keys, ALICE, "SELECT * FROM t", [], 5, 5.0)


def test_bad_rows_and_arguments_are_refused_atomically(filled: AnalyticsStore, keys: KeySet) -> None:
    good = rows(1)[0]
    bad_rows = [
        good[:-1], "not a row", [*good[:2], "12", *good[3:]], [*good[:2], True, *good[3:]],
        [*good[:2], 2**63, *good[3:]], ["yesterday", *good[1:]], [*good[:-1], "2024-13-01"],
        [*good[:4], "text", *good[5:]], [*good[:5], 1, good[6]], [good[0], 5, *good[2:]], [*good[:3], "1.5", *good[4:]],
        [*good[:1], "\ud800", *good[2:]],
    ]
    for bad in bad_rows:
        with pytest.raises(BadRequest) as info:
            filled.ingest(keys, ALICE, "t", [good, bad])
        assert "yesterday" not in info.value.message and "text" not in info.value.message
    assert select(filled, keys, ALICE, "SELECT count(*) FROM t") == [[20]]
    with pytest.raises(BadRequest):
        filled.ingest(keys, ALICE, "t", [good] * (MAX_INGEST_ROWS + 1))
    with pytest.raises(BadRequest):
        filled.ingest(keys, ALICE, "t", [])
    with pytest.raises(NotFound):
        filled.ingest(keys, ALICE, "missing", [good])
    with pytest.raises(NotFound):
        filled.ingest(keys, BOB, "t", [good])
    for name, cols in [("x; DROP TABLE t", COLUMNS), ("T", COLUMNS), ("ok", [("a", "INTEGER")]),
                       ("ok", [("a b", "BIGINT")]), ("ok", [("a", "BIGINT"), ("a", "DOUBLE")]), ("ok", []),
                       ("ok", [(f"c{i}", "BIGINT") for i in range(65)]), ("ok", [("a", "VARCHAR); DROP TABLE t; --")])]:
        with pytest.raises(BadRequest):
            filled.create_table(keys, ALICE, name, cols)
    for bad in ({"max_rows": 0}, {"timeout_s": 0}, {"timeout_s": 301}, {"params": [[1]]}, {"params": [object()]}):
        args = {"params": [], "max_rows": 10, "timeout_s": 1.0, **bad}
        with pytest.raises(BadRequest):
            filled.query(keys, ALICE, "SELECT 1", **args)  # type: ignore[arg-type]
    assert filled.tables(keys, ALICE)[0]["rows"] == 20


ESCAPES = [
    "ATTACH '{tmp}/x.db' AS x",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM glob('*')",
    "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
    "COPY t TO '{tmp}/out.csv'",
    "COPY (SELECT * FROM t) TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{httpfs}'",
    "PRAGMA database_list",
    "/* hidden */ PRAGMA database_list",
    "SHOW TABLES",
    "DESCRIBE t",
    "SUMMARIZE t",
    "EXPLAIN SELECT 1",
    "CALL checkpoint()",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "SELECT 1; DROP TABLE t",
    "SELECT 1; SELECT 2",
    "DROP TABLE t",
    "CREATE TABLE x (a BIGINT)",
    "INSERT INTO t (n) VALUES (1)",
    "UPDATE t SET n = 0",
    "DELETE FROM t",
    "BEGIN",
    "DETACH db",
    "USE memory",
    "PIVOT t ON kind USING count(*)",
    "SELECT * FROM query('DROP TABLE t')",
    "SELECT * FROM query('CREATE TABLE y AS SELECT 1')",
    "",
]


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory):
    """One store shared by the escape attempts: each must leave it exactly as it was."""
    keys = keyset(1)
    store = AnalyticsStore(tmp_path_factory.mktemp("sandboxed"))
    store.create_table(keys, ALICE, "t", COLUMNS)
    store.ingest(keys, ALICE, "t", rows(20))
    yield store, keys
    store.close()


@pytest.mark.parametrize("sql", ESCAPES)
def test_escapes_are_refused(sandboxed: tuple[AnalyticsStore, KeySet], tmp_path: Path, sql: str) -> None:
    filled, keys = sandboxed
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(BadRequest):
        filled.query(keys, ALICE, sql.format(tmp=tmp_path, httpfs=httpfs_path()), [], 100, 5.0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert select(filled, keys, ALICE, "SELECT count(*) FROM t") == [[20]]
    assert select(filled, keys, ALICE, "SELECT current_setting('enable_external_access')") == [[False]]


def test_no_key_or_other_namespace_is_visible(filled: AnalyticsStore, keys: KeySet) -> None:
    filled.create_table(keys, BOB, "t", [("secret", "VARCHAR")])
    filled.ingest(keys, BOB, "t", [["bob's"]])
    own, bob = (filled.root / file_name(keys.key(1), ns.label(), 1) for ns in (ALICE, BOB))
    assert own.exists() and bob.exists()
    for sql in [f"SELECT * FROM '{bob}'", f"SELECT * FROM read_blob('{bob}')", f"SELECT * FROM '{own}'",
                "SELECT * FROM bob.main.t", "SELECT * FROM memory.main.t", "SELECT * FROM system.main.t"]:
        with pytest.raises(BadRequest):
            filled.query(keys, ALICE, sql, [], 10, 5.0)
    seen = str([select(filled, keys, ALICE, f"SELECT * FROM {fn}()") for fn in
                ("duckdb_databases", "duckdb_settings", "duckdb_secrets", "duckdb_tables", "duckdb_columns")])
    assert file_key(keys.key(1)) not in seen and "bob's" not in seen and bob.name not in seen
    attached = {row[0] for row in select(filled, keys, ALICE, "SELECT database_name FROM duckdb_databases()")}
    assert "db" in attached and attached <= {"db", "memory", "system", "temp"}
    assert select(filled, keys, ALICE, "SELECT current_setting('temp_directory'), current_setting('threads')") == [
        ["", 2]]
    assert select(filled, keys, BOB, "SELECT * FROM t") == [["bob's"]]
    assert select(filled, keys, ALICE, "SELECT count(*) FROM t") == [[20]]


def test_files_are_encrypted_private_and_named_by_tag(store: AnalyticsStore, keys: KeySet) -> None:
    marker = "CANARY" + secrets.token_hex(8)
    store.create_table(keys, ALICE, "notes", [("body", "VARCHAR"), ("raw", "BLOB")])
    store.ingest(keys, ALICE, "notes", [[f"{marker} {i}", marker.encode()] for i in range(500)])
    names = sorted(p.name for p in store.root.iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".wal"  # the committed rows are in the WAL
    for path in store.root.iterdir():
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert marker.encode() not in path.read_bytes()
    store.close()
    assert oct(store.root.stat().st_mode & 0o777) == "0o700"
    files = [p for p in store.root.rglob("*") if p.is_file()]
    assert files and all(b"alice" not in p.name.encode() and "events" not in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        assert marker.encode() not in data and b"alice@example.org" not in data and b"notes" not in data


def test_a_flipped_byte_fails_loudly(tmp_path: Path, keys: KeySet) -> None:
    store = AnalyticsStore(tmp_path / "a")
    store.create_table(keys, ALICE, "t", [("n", "BIGINT"), ("s", "VARCHAR")])
    for _ in range(3):
        store.ingest(keys, ALICE, "t", [[i, secrets.token_hex(32)] for i in range(MAX_INGEST_ROWS)])
    expected = select(store, keys, ALICE, "SELECT count(*), sum(n), sum(hash(s)) FROM t")
    store.close()
    path = next(store.root.glob("*.duckdb"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    problems = store.verify(keys)
    assert len(problems) == 1 and "integrity" in problems[0] and path.name in problems[0]
    try:
        got = select(store, keys, ALICE, "SELECT count(*), sum(n), sum(hash(s)) FROM t")
    except DamagedError:
        return
    assert got == expected  # never different data, silently


def test_forged_damage_messages_are_not_believed(filled: AnalyticsStore, keys: KeySet) -> None:
    # error() lets a caller raise DuckDB's exact wording for a bad AES tag; the file is checked first.
    forged = "Computed AES tag differs from read AES tag, are you using the right key?"
    with pytest.raises(BadRequest) as info:
        filled.query(keys, ALICE, "SELECT error(?)", [forged], 10, 5.0)
    assert "AES" not in info.value.message
    with pytest.raises(BadRequest):
        filled.query(keys, ALICE, "SELECT checksum FROM t", [], 10, 5.0)  # names a word, not damage
    assert select(filled, keys, ALICE, "SELECT count(*) FROM t") == [[20]]


def test_a_file_moved_onto_another_namespace_is_refused(store: AnalyticsStore, keys: KeySet) -> None:
    store.create_table(keys, ALICE, "t", [("v", "VARCHAR")])
    store.ingest(keys, ALICE, "t", [["alice's"]])
    store.create_table(keys, BOB, "t", [("v", "VARCHAR")])
    store.close()
    files = {p.name for p in store.root.glob("*.duckdb")}
    assert len(files) == 2
    # Put one namespace's file under the other's name: opening checks the label inside.
    a, b = sorted(files)
    (store.root / a).rename(store.root / "swap")
    (store.root / b).rename(store.root / a)
    (store.root / "swap").rename(store.root / b)
    for ns in (ALICE, BOB):
        with pytest.raises(DamagedError):
            store.query(keys, ns, "SELECT * FROM t", [], 10, 5.0)
    assert len(store.verify(keys)) == 2


def test_a_slow_query_is_interrupted_at_its_deadline(filled: AnalyticsStore, keys: KeySet) -> None:
    with pytest.raises(Timeout):
        filled.query(keys, ALICE, "SELECT count(*) FROM range(100000000) a, range(100000000) b", [], 10, 0.2)
    assert select(filled, keys, ALICE, "SELECT count(*) FROM t") == [[20]]


def test_rotation_resumes_after_crashes_without_loss(tmp_path: Path) -> None:
    keys = keyset(1)
    store = AnalyticsStore(tmp_path / "a")
    spaces = [Namespace("assistant", f"user{i}", "events") for i in range(3)]
    for i, ns in enumerate(spaces):
        store.create_table(keys, ns, "t", COLUMNS)
        store.ingest(keys, ns, "t", rows(10 + i, kind=f"user{i}"))
    before = {ns: select(store, keys, ns, "SELECT * FROM t ORDER BY n") for ns in spaces}
    keys.add(2, bytearray(secrets.token_bytes(32)), current=True)
    assert (store.count(1), store.count(2)) == (3, 0)
    # Files under version 1 keep serving before they move.
    assert select(store, keys, spaces[0], "SELECT count(*) FROM t") == [[10]]
    # A crash mid-copy leaves a .rot file behind: deleted and redone.
    (store.root / f"{'0' * 32}.v2.duckdb.rot").write_bytes(b"half a copy")
    assert store.rotate_step(keys, 1) == 1
    assert not list(store.root.glob("*.rot*"))
    # A crash between the rename and the delete leaves both files: the old one goes.
    old = sorted(store.root.glob("*.v1.duckdb"))[0]
    saved = old.read_bytes()
    assert store.rotate_step(keys, 1) == 1
    old.write_bytes(saved)
    assert store.count(1) == 2
    while store.rotate_step(keys, 1):
        pass
    assert (store.count(1), store.count(2)) == (0, 3)
    assert {ns: select(store, keys, ns, "SELECT * FROM t ORDER BY n") for ns in spaces} == before
    assert store.verify(keys) == []
    keys.retire(1)
    store.close()
    assert {ns: select(store, keys, ns, "SELECT * FROM t ORDER BY n") for ns in spaces} == before
    with pytest.raises(BadRequest):
        store.rotate_step(keys, 2)
    with pytest.raises(MissingKeyError):
        store.rotate_step(keys, 1)


def test_verify_reports_files_under_keys_not_held(filled: AnalyticsStore, keys: KeySet) -> None:
    assert filled.verify(keys) == []
    other = keyset(2)
    problems = filled.verify(other)
    assert len(problems) == 1 and "key version 1" in problems[0]
    # Another key of the same version names other files: the namespace's data is not even found.
    with pytest.raises(NotFound):
        filled.query(keyset(1), ALICE, "SELECT 1", [], 1, 1.0)
    filled.close()
    path = next(filled.root.glob("*.duckdb"))
    with pytest.raises(DamagedError, match="integrity"):
        attach(httpfs_path(), path, keyset(1).key(1))
    attach(httpfs_path(), path, keys.key(1)).close()


def test_snapshot_is_a_consistent_encrypted_copy(filled: AnalyticsStore, keys: KeySet, tmp_path: Path) -> None:
    filled.create_table(keys, BOB, "t", [("v", "BIGINT")])
    filled.ingest(keys, BOB, "t", [[7]])
    copies = filled.snapshot(keys, tmp_path / "snap")
    assert sorted(p.name for p in copies) == sorted(p.name for p in filled.root.glob("*.duckdb"))
    filled.ingest(keys, ALICE, "t", rows(5))  # after the snapshot: not in it
    copy = AnalyticsStore(tmp_path / "snap")
    try:
        assert select(copy, keys, ALICE, "SELECT count(*) FROM t") == [[20]]
        assert select(copy, keys, BOB, "SELECT v FROM t") == [[7]]
        assert copy.verify(keys) == []
    finally:
        copy.close()
    for path in copies:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        with pytest.raises(DamagedError):
            attach(httpfs_path(), path, keyset(1).key(1))
    # A restore re-encrypts the snapshot under another mesh's keys; running it twice changes nothing.
    other_keys = keyset(3)
    restored = AnalyticsStore(tmp_path / "restored")
    try:
        assert restored.import_from(tmp_path / "snap", keys, other_keys) == 2
        assert restored.import_from(tmp_path / "snap", keys, other_keys) == 2
        assert (restored.count(3), restored.count(1)) == (2, 0)
        assert select(restored, other_keys, ALICE, "SELECT count(*) FROM t") == [[20]]
        assert select(restored, other_keys, BOB, "SELECT v FROM t") == [[7]]
        assert restored.verify(other_keys) == []
    finally:
        restored.close()

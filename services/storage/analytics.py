"""Encrypted analytics: one DuckDB file per namespace, ``<root>/<tag>.v<version>.duckdb``.

Contracts:

- Names: ``tag`` is ``HMAC-SHA256(derive_subkey(key_v, "storage-duckdb-names"), ns.label())[:16]``
  in hex, so the disk shows no namespace. Each file also holds its namespace's label inside
  (``mesh_meta.namespace``) and opening checks it: a file renamed or swapped onto another
  namespace's name is :class:`DamagedError`, never served.
- Encryption: DuckDB's AES-GCM file format with ``ENCRYPTION_KEY`` = hex of
  ``derive_subkey(key_v, "storage-duckdb-file")``; data, metadata and WAL are encrypted, temp files
  never exist (``sandbox.py``). The hex is an immutable ``str`` we cannot wipe (as for SQLCipher in
  ``services/audit/store.py``); DuckDB holds the key until the instance closes (:meth:`close`).
- Durability: :meth:`AnalyticsStore.ingest` is one transaction and DuckDB fsyncs its WAL at every
  commit (seen with strace on 1.5.5); we fsync the directory when a WAL file first appears. New
  files appear by rename only once complete, so a crash never leaves half a file under a real name.
- Isolation: one DuckDB instance per namespace with only its own file attached, confined
  (``sandbox.py``): a query cannot name, read or even attach another namespace's file.
- Rotation (:meth:`rotate_step`): one file at a time is copied into a new file under the current
  key (``<name>.rot`` until complete, then renamed) and the old file deleted. A leftover ``.rot``
  is deleted and redone; an old file whose new copy exists (a crash between rename and delete) is
  deleted once the copy's ``copied_from`` confirms it came from that version.

Threading: each namespace file has a lock held for the whole of any call on it (rotation included);
other namespaces keep serving. At most :data:`MAX_OPEN` instances stay open (least recently used
closes first). Costs: opening an instance takes ~0.1 s (loading httpfs); each may use up to
``sandbox.MEMORY_LIMIT`` of memory and ``sandbox.THREADS`` threads while it runs a query.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb

from shared import BadRequest, Conflict, MeshError, NotFound, Unavailable
from shared._files import fsync_path

from . import sandbox
from .errors import DamagedError
from .keys import KeySet, Namespace
from .records import check_ident
from .sandbox import StartupError, httpfs_path

__all__ = ["MAX_INGEST_ROWS", "MAX_OPEN", "AnalyticsStore", "StartupError", "httpfs_path"]

MAX_TABLES: Final = 256
MAX_INGEST_ROWS: Final = 10_000
MAX_OPEN: Final = 16
MAX_RESULT_ROWS: Final = 100_000
MAX_TIMEOUT_S: Final = 300.0
_NAME_RE: Final = re.compile(r"([0-9a-f]{32})\.v([1-9][0-9]{0,9})\.duckdb")
_CRYPTO_FAILED: Final = "DuckDB's secure crypto module (httpfs/OpenSSL) cannot be loaded: storage refuses to start"


@dataclass(eq=False)
class _Slot:
    """One namespace file: its lock, and its open instance if any. ``retired`` once it was closed
    for good (moved by rotation, evicted, damaged): a waiter then looks the namespace up again."""

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    con: duckdb.DuckDBPyConnection | None = None
    retired: bool = False
    used: int = 0


class AnalyticsStore:
    """The analytics files under ``root`` (created 0700). Keys are passed to each call, never kept."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self._extension: Path | None = None
        self._guard = threading.Lock()
        self._rotating = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._clock = itertools.count(1)

    def check_crypto(self) -> None:
        """Write and read back an encrypted table in a scratch directory; :class:`StartupError` if
        DuckDB cannot (the service calls this at start and refuses to start when it fails)."""
        try:
            extension = self._httpfs()
        except StartupError as exc:
            raise StartupError(f"{_CRYPTO_FAILED} ({exc.message})") from None
        scratch = Path(tempfile.mkdtemp(prefix=".crypto-check-", dir=self.root))
        try:
            sandbox.crypto_selftest(extension, scratch)
        except (duckdb.Error, OSError, ValueError) as exc:
            raise StartupError(f"{_CRYPTO_FAILED} ({type(exc).__name__})") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _httpfs(self) -> Path:
        """The httpfs extension, found on first use (:class:`StartupError` if it cannot be)."""
        if self._extension is None:
            self._extension = httpfs_path()
        return self._extension

    # -- caller operations ----------------------------------------------------------------

    def create_table(self, keys: KeySet, ns: Namespace, table: str, columns: list[tuple[str, str]]) -> None:
        """Create ``table`` with ``columns`` (name, type in BIGINT DOUBLE VARCHAR BOOLEAN TIMESTAMP
        BLOB DATE), at most 64. Idempotent if identical; :class:`Conflict` if it exists otherwise."""
        check_ident(table, "a table name")
        cols = sandbox.check_columns(columns)
        with self._session(keys, ns, create=True) as slot, sandbox.engine():
            con = slot.con
            existing = sandbox.table_columns(con, table)
            if existing:
                if existing != cols:
                    raise Conflict(f"table {table!r} exists with other columns")
                return
            if len(sandbox.table_names(con)) >= MAX_TABLES:
                raise BadRequest(f"a namespace holds at most {MAX_TABLES} tables")
            spec = ", ".join(f"{sandbox.quote(name)} {kind}" for name, kind in cols)
            with self._durable(slot.path):
                con.execute(f"CREATE TABLE {sandbox.quote(table)} ({spec})")

    def ingest(self, keys: KeySet, ns: Namespace, table: str, rows: list[list[Any]]) -> int:
        """Append ``rows`` (1-10,000, each a value per column) to ``table`` in one transaction,
        durable on return; return the number stored. Bad arity or types: :class:`BadRequest`."""
        check_ident(table, "a table name")
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_INGEST_ROWS:
            raise BadRequest(f"ingest takes 1 to {MAX_INGEST_ROWS} rows")
        with self._session(keys, ns, create=False) as slot:
            con = slot.con
            with sandbox.engine():
                cols = sandbox.table_columns(con, table)
            if not cols:
                raise NotFound(f"no table {table!r} in this namespace")
            payload = sandbox.encode_rows(cols, rows)
            with self._durable(slot.path):
                try:
                    con.execute("BEGIN")
                    con.execute(sandbox.insert_sql(table, cols), [payload])
                    con.execute("COMMIT")
                except duckdb.Error as exc:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    error = sandbox.mapped(exc)
                    if isinstance(error, DamagedError):
                        error = self._confirmed(slot, keys)
                    # DuckDB's own text here could quote the values (a JSON or cast error): only the kind.
                    if not isinstance(error, Unavailable):
                        error = BadRequest(f"the rows could not be stored ({type(exc).__name__})")
                    raise error from None
        return len(rows)

    def query(self, keys: KeySet, ns: Namespace, sql: str, params: list[Any], max_rows: int,
              timeout_s: float) -> tuple[list[str], list[list[Any]]]:
        """Run one read-only SELECT over the namespace's own tables: column names and rows
        (msgpack-friendly values). More than ``max_rows`` rows: :class:`BadRequest` ("add a LIMIT").
        Past ``timeout_s`` the query is interrupted: :class:`~shared.Timeout`."""
        sandbox.check_params(params)
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= MAX_RESULT_ROWS:
            raise BadRequest(f"max_rows must be an integer from 1 to {MAX_RESULT_ROWS}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S:
            raise BadRequest(f"timeout_s must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}")
        with self._session(keys, ns, create=False) as slot:
            sandbox.check_select(slot.con, sql)
            try:
                return sandbox.run_select(slot.con, sql, list(params), max_rows, float(timeout_s))
            except DamagedError:
                raise self._confirmed(slot, keys) from None

    def tables(self, keys: KeySet, ns: Namespace) -> list[dict[str, Any]]:
        """``{name, columns: [[name, type]...], rows}`` for each table of the namespace."""
        try:
            with self._session(keys, ns, create=False) as slot, sandbox.engine():
                con = slot.con
                count = "SELECT count(*) FROM {}"  # a quoted name from the catalog, nothing else
                return [{"name": name, "columns": [list(c) for c in sandbox.table_columns(con, name)],
                         "rows": int(con.execute(count.format(sandbox.quote(name))).fetchone()[0])}
                        for name in sandbox.table_names(con)]
        except NotFound:
            return []

    # -- whole store ----------------------------------------------------------------------

    def count(self, version: int) -> int:
        """How many namespace files are under key ``version``."""
        return len(_namespace_files(self.root, version))

    def is_empty(self) -> bool:
        """True when no namespace file exists."""
        return not _namespace_files(self.root, None)

    def rotate_step(self, keys: KeySet, from_version: int) -> int:
        """Move one namespace file from key ``from_version`` to ``keys.current``; return 1, or 0 when
        none is left. Holds that namespace's lock throughout; see the module notes on crashes."""
        if from_version == keys.current:
            raise BadRequest("rotation goes from an older key version to the current one")
        old_key = keys.key(from_version)
        with self._rotating:
            for leftover in self.root.glob("*.rot*"):
                leftover.unlink(missing_ok=True)
            files = _namespace_files(self.root, from_version)
            if not files:
                return 0
            with self._hold(files[0].name) as slot:
                self._shut(slot)
                if slot.path.exists():
                    final, copied = self._copy_into(slot.path, old_key, from_version, keys, replace=False)
                    # Both files after a crash between rename and delete: the new one is complete if it says it
                    # was copied from this version (a file made afresh under the new key must not cost old data).
                    if not copied and self._copied_from(final, keys.key()) != from_version:
                        raise Conflict(f"{slot.path.name}: the namespace has files under two key versions; "
                                       "resolve by hand")
                    sandbox.remove_file(slot.path)
                    fsync_path(self.root)
                # Waiters on this slot then look the namespace up again and find the new file.
                self._retire(slot)
            return 1

    def import_from(self, source: Path, source_keys: KeySet, keys: KeySet) -> int:
        """Re-encrypt every namespace file of ``source`` (a :meth:`snapshot` under ``source_keys``, as
        a restore extracts it) into this store under ``keys.current``; how many. Each replaces the
        same namespace's file, so an interrupted import can run again."""
        with self._rotating:
            files = _namespace_files(source, None)
            for path in files:
                self._copy_into(path, source_keys.key(_version(path)), _version(path), keys, replace=True)
            return len(files)

    def verify(self, keys: KeySet) -> list[str]:
        """Problems found (empty when none): each file is reopened and every table read in full, so
        GCM tags and block checksums are checked; files under key versions not held are problems."""
        problems = []
        for path in _namespace_files(self.root, None):
            version = _version(path)
            if not keys.has(version):
                problems.append(f"{path.name}: under key version {version}, which storage does not hold")
                continue
            with self._hold(path.name) as slot:
                if not path.exists():
                    continue
                # Closed first, so every block is read from disk rather than from the instance's cache.
                self._shut(slot)
                try:
                    self._check_file(path, keys.key(version))
                except MeshError as exc:
                    problems.append(f"{path.name}: {exc.message}")
        return problems

    def snapshot(self, keys: KeySet, dest_dir: Path) -> list[Path]:
        """Copy every namespace file, checkpointed and still encrypted under its key, into
        ``dest_dir``; each copy is consistent (taken under the namespace's lock). Returns the copies."""
        dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        copies = []
        for path in _namespace_files(self.root, None):
            with self._hold(path.name) as slot, sandbox.engine():
                if not path.exists():
                    continue
                if slot.con is not None:
                    slot.con.execute("CHECKPOINT")
                elif sandbox.wal(path).exists() and keys.has(_version(path)):
                    con = sandbox.attach(self._httpfs(), path, keys.key(_version(path)))
                    con.close()  # closing checkpoints the WAL into the file
                for source in (path, sandbox.wal(path)):
                    if source.exists():  # a WAL is left only under a key version not held
                        copies.append(sandbox.copy_file(source, dest_dir / source.name))
        fsync_path(dest_dir)
        return copies

    def close(self) -> None:
        """Close every instance (interrupting running queries); DuckDB forgets the keys with them."""
        with self._guard:
            slots = list(self._slots.values())
        for slot in slots:
            if not slot.lock.acquire(blocking=False):
                con = slot.con
                if con is not None:
                    with contextlib.suppress(duckdb.Error):
                        con.interrupt()
                slot.lock.acquire()
            try:
                self._retire(slot)
            finally:
                slot.lock.release()

    def forget_keys(self) -> None:
        """What sealing calls: :meth:`close`. Files reopen lazily once keys are passed again."""
        self.close()

    # -- files and instances ------------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, keys: KeySet, ns: Namespace, create: bool) -> Iterator[Any]:
        """The namespace's slot, locked, with its instance open (creating the file if ``create``)."""
        label = ns.label()
        while True:
            version, name, exists = self._resolve(keys, label)
            if not exists and not create:
                raise NotFound("this namespace has no analytics tables")
            with self._hold(name) as slot:
                if slot.con is None:
                    if not slot.path.exists():
                        if exists:  # rotation moved it since we looked: look again
                            continue
                        self._create(slot.path, keys.key(version), label)
                    slot.con = self._open(slot.path, keys.key(version), label)
                    self._evict(slot)
                slot.used = next(self._clock)
                try:
                    yield slot
                except Unavailable:
                    # A damaged or failed instance is not reused: the next call opens the file afresh.
                    self._retire(slot)
                    raise
                return

    def _resolve(self, keys: KeySet, label: bytes) -> tuple[int, str, bool]:
        """The version and file name holding ``label``'s data (current version first), and whether
        it exists; a namespace with no file gets the current version's name."""
        order = [keys.current, *(v for v in reversed(keys.versions()) if v != keys.current)]
        for version in order:
            name = sandbox.file_name(keys.key(version), label, version)
            if (self.root / name).exists():
                return version, name, True
        return keys.current, sandbox.file_name(keys.key(keys.current), label, keys.current), False

    def _slot(self, name: str) -> _Slot:
        with self._guard:
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot(self.root / name)
            return slot

    @contextlib.contextmanager
    def _hold(self, name: str) -> Iterator[_Slot]:
        """The live slot of file ``name``, locked. Only the holder of a live slot touches its file; a
        slot retired while we waited is looked up again (its file may have moved)."""
        while True:
            slot = self._slot(name)
            with slot.lock:
                if slot.retired:
                    continue
                yield slot
                return

    def _shut(self, slot: _Slot) -> None:
        """Close the slot's instance (the caller holds its lock); DuckDB checkpoints on close."""
        if slot.con is not None:
            con, slot.con = slot.con, None
            with contextlib.suppress(duckdb.Error):
                con.close()

    def _retire(self, slot: _Slot) -> None:
        self._shut(slot)
        slot.retired = True
        with self._guard:
            if self._slots.get(slot.path.name) is slot:
                del self._slots[slot.path.name]

    def _evict(self, keep: _Slot) -> None:
        """Close the least recently used idle instances beyond :data:`MAX_OPEN` (never waiting)."""
        with self._guard:
            idle = sorted((s for s in self._slots.values() if s.con is not None and s is not keep),
                          key=lambda s: s.used)
        for slot in idle[: max(0, len(idle) + 1 - MAX_OPEN)]:
            if slot.lock.acquire(blocking=False):
                try:
                    self._retire(slot)
                finally:
                    slot.lock.release()

    def _open(self, path: Path, key: bytearray, label: bytes) -> Any:
        """The confined instance serving ``path``, after checking the label inside it is ``label``."""
        con = sandbox.attach(self._httpfs(), path, key)
        try:
            con.execute("USE db")
            if sandbox.read_label(con, "db") != label:
                raise DamagedError("an analytics file holds another namespace than its name says (moved or swapped)")
            sandbox.confine(con)
        except BaseException:
            con.close()
            raise
        sandbox.private_file(path)
        return con

    def _create(self, path: Path, key: bytearray, label: bytes) -> None:
        """Make ``path``: a new file holding only ``label``, renamed into place once complete."""
        part = path.with_name(path.name + ".new")
        sandbox.remove_file(part)
        con = sandbox.attach(self._httpfs(), part, key)
        try:
            with sandbox.engine():
                con.execute("CREATE SCHEMA db.mesh_meta")
                con.execute("CREATE TABLE db.mesh_meta.namespace (label BLOB NOT NULL, copied_from BIGINT)")
                con.execute("INSERT INTO db.mesh_meta.namespace VALUES (?, NULL)", [label])
                con.execute("DETACH db")
        finally:
            con.close()
        sandbox.publish_file(part, path)

    def _copy_into(self, path: Path, key: bytearray, version: int, keys: KeySet, replace: bool) -> tuple[Path, bool]:
        """Copy namespace file ``path`` (under ``key`` of ``version``) to its name under ``keys.current``
        (``.rot`` until complete, then renamed); return that name and whether it was written (not when
        it exists and ``replace`` is false)."""
        new_key = keys.key()
        con = sandbox.attach(self._httpfs(), path, key, "old", read_only=True)
        try:
            with sandbox.engine():
                label = sandbox.read_label(con, "old")
                if label is None or not hmac.compare_digest(sandbox.file_name(key, label, version), path.name):
                    raise DamagedError(f"{path.name} holds another namespace than its name says: not copied")
                final = self.root / sandbox.file_name(new_key, label, keys.current)
                if final.exists() and not replace:
                    return final, False
                part = final.with_name(final.name + ".rot")
                sandbox.remove_file(part)
                new_file_key = sandbox.sql_text(sandbox.file_key(new_key))
                con.execute(f"ATTACH {sandbox.sql_text(str(part))} AS new (ENCRYPTION_KEY {new_file_key})")
                con.execute("COPY FROM DATABASE old TO new")
                con.execute("UPDATE new.mesh_meta.namespace SET copied_from = ?", [version])
                con.execute("DETACH new")
        finally:
            con.close()
        with self._hold(final.name) as slot:
            # An instance on a file being replaced closes first (the next call opens the new file), and a
            # stale WAL must not be replayed onto it.
            self._shut(slot)
            sandbox.wal(final).unlink(missing_ok=True)
            sandbox.publish_file(part, final)
        return final, True

    def _copied_from(self, path: Path, key: bytearray) -> int | None:
        with self._hold(path.name) as slot:
            self._shut(slot)
            con = sandbox.attach(self._httpfs(), path, key)
            try:
                with sandbox.engine():
                    row = con.execute("SELECT copied_from FROM db.mesh_meta.namespace").fetchone()
            finally:
                con.close()
        return None if row is None else row[0]

    def _check_file(self, path: Path, key: bytearray) -> None:
        con = sandbox.attach(self._httpfs(), path, key)
        try:
            with sandbox.engine():
                label = sandbox.read_label(con, "db")
                if label is None or not hmac.compare_digest(sandbox.file_name(key, label, _version(path)), path.name):
                    raise DamagedError("holds another namespace than its name says (moved or swapped)")
                tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                     "WHERE database_name = 'db'").fetchall()
                # Hashing whole rows reads (so decrypts and checks) every column of every row.
                read_all = "SELECT count(*), bit_xor(hash(x)) FROM db.{}.{} AS x"  # quoted catalog names only
                for schema, table in tables:
                    con.execute(read_all.format(sandbox.quote(schema), sandbox.quote(table))).fetchall()
        finally:
            con.close()

    def _confirmed(self, slot: _Slot, keys: KeySet) -> MeshError:
        """What a damage report from inside a caller's statement is: believed only if the file fails
        its check, since a caller can forge DuckDB's wording (``error()``, or text it stored)."""
        self._shut(slot)
        try:
            self._check_file(slot.path, keys.key(_version(slot.path)))
        except DamagedError as found:
            return found
        return BadRequest("the statement failed while running")

    @contextlib.contextmanager
    def _durable(self, path: Path) -> Iterator[None]:
        """Around a commit: a WAL file that appears gets mode 0600 and its directory entry synced."""
        log_file = sandbox.wal(path)
        existed = log_file.exists()
        yield
        if not existed and log_file.exists():
            sandbox.private_file(log_file)
            fsync_path(self.root)


def _namespace_files(root: Path, version: int | None) -> list[Path]:
    """Namespace files in ``root`` (of ``version``, or all), by name."""
    return sorted(p for p in root.iterdir() if (m := _NAME_RE.fullmatch(p.name)) is not None
                  and (version is None or int(m.group(2)) == version))


def _version(path: Path) -> int:
    m = _NAME_RE.fullmatch(path.name)
    assert m is not None
    return int(m.group(2))

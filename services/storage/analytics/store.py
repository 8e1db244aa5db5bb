"""Encrypted analytics: one DuckDB file per namespace, ``<root>/<tag>.v<version>.duckdb``.

Contracts:

- Names: ``tag`` is ``HMAC-SHA256(derive_subkey(key_v, "storage-duckdb-names"), ns.label())[:16]``
  in hex, so the disk shows no namespace. Each file also holds its namespace's label inside
  (``mesh_meta.namespace``) and opening checks it: a file renamed or swapped onto another
  namespace's name is :class:`DamagedError`, never served.
- Encryption: DuckDB's AES-GCM file format with ``ENCRYPTION_KEY`` = hex of
  ``derive_subkey(key_v, "storage-duckdb-file")``; data, metadata and WAL are encrypted, temp files
  never exist (:mod:`.sandbox`). The hex is an immutable ``str`` we cannot wipe (as for SQLCipher in
  ``services/audit/store.py``); DuckDB holds the key until the instance closes (:meth:`close`).
- Durability: :meth:`AnalyticsStore.ingest` is one transaction and DuckDB fsyncs its WAL at every
  commit (seen with strace on 1.5.5); we fsync the directory when a WAL file first appears. New
  files appear by rename only once complete, so a crash never leaves half a file under a real name.
- Isolation: one DuckDB instance per namespace with only its own file attached, confined
  (:mod:`.sandbox`): a query cannot name, read or even attach another namespace's file.
- Rotation (:meth:`rotate_step`): one file at a time is copied into a new file under the current
  key (``<name>.rot`` until complete, then renamed) and the old file deleted. A leftover ``.rot``
  is deleted and redone; an old file whose new copy exists (a crash between rename and delete) is
  deleted once the copy's ``copied_from`` confirms it came from that version.

Threading: each namespace file has a lock held for the whole of any call on it (rotation included);
other namespaces keep serving. At most :data:`MAX_OPEN` instances stay open (least recently used
closes first). Costs: opening an instance takes ~0.1 s (loading httpfs); each may use up to
``sandbox.MEMORY_LIMIT`` of memory and ``sandbox.THREADS`` threads while it runs a query.

This module is the store's API and the order of its steps. The locks and open instances are
:mod:`.slots`; naming, making, opening, re-encrypting and checking one file is
:mod:`.dbfiles`; instances and caller SQL are :mod:`.sandbox`.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import duckdb

from shared import BadRequest, Conflict, MeshError, NotFound, Unavailable
from shared.files import fsync_path

from ..core.errors import DamagedError
from ..core.keys import KeySet
from ..core.namespace import Namespace, check_ident
from . import dbfiles, sandbox
from .sandbox import StartupError, httpfs_path
from .slots import Slot, Slots

__all__ = ["MAX_INGEST_ROWS", "MAX_OPEN", "AnalyticsStore", "StartupError", "httpfs_path"]

MAX_TABLES: Final = 256
MAX_INGEST_ROWS: Final = 10_000
MAX_OPEN: Final = 16
MAX_RESULT_ROWS: Final = 100_000
MAX_TIMEOUT_S: Final = 300.0
_CRYPTO_FAILED: Final = "DuckDB's secure crypto module (httpfs/OpenSSL) cannot be loaded: storage refuses to start"


class AnalyticsStore:
    """The analytics files under ``root`` (created 0700). Keys are passed to each call, never kept."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root
        self._extension: Path | None = None
        self._rotating = threading.Lock()
        self._slots = Slots(root, MAX_OPEN)

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
            with dbfiles.durable(slot.path):
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
            with dbfiles.durable(slot.path):
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
        return len(dbfiles.namespace_files(self.root, version))

    def is_empty(self) -> bool:
        """True when no namespace file exists."""
        return not dbfiles.namespace_files(self.root, None)

    def rotate_step(self, keys: KeySet, from_version: int) -> int:
        """Move one namespace file from key ``from_version`` to ``keys.current``; return 1, or 0 when
        none is left. Holds that namespace's lock throughout; see the module notes on crashes."""
        if from_version == keys.current:
            raise BadRequest("rotation goes from an older key version to the current one")
        old_key = keys.key(from_version)
        with self._rotating:
            for leftover in self.root.glob("*.rot*"):
                leftover.unlink(missing_ok=True)
            files = dbfiles.namespace_files(self.root, from_version)
            if not files:
                return 0
            with self._slots.hold(files[0].name) as slot:
                self._slots.shut(slot)
                if slot.path.exists():
                    final, copied = dbfiles.reencrypt(self._slots, self._httpfs(), slot.path, old_key,
                                                              from_version, keys, replace=False)
                    # Both files after a crash between rename and delete: the new one is complete if it says it
                    # was copied from this version (a file made afresh under the new key must not cost old data).
                    if not copied and dbfiles.copied_from(self._slots, self._httpfs(), final,
                                                                  keys.key()) != from_version:
                        raise Conflict(f"{slot.path.name}: the namespace has files under two key versions; "
                                       "resolve by hand")
                    dbfiles.remove_file(slot.path)
                    fsync_path(self.root)
                # Waiters on this slot then look the namespace up again and find the new file.
                self._slots.retire(slot)
            return 1

    def import_from(self, source: Path, source_keys: KeySet, keys: KeySet) -> int:
        """Re-encrypt every namespace file of ``source`` (a :meth:`snapshot` under ``source_keys``, as
        a restore extracts it) into this store under ``keys.current``; how many. Each replaces the
        same namespace's file, so an interrupted import can run again."""
        with self._rotating:
            files = dbfiles.namespace_files(source, None)
            for path in files:
                version = dbfiles.version_of(path)
                dbfiles.reencrypt(self._slots, self._httpfs(), path, source_keys.key(version), version, keys,
                                          replace=True)
            return len(files)

    def verify(self, keys: KeySet) -> list[str]:
        """Problems found (empty when none): each file is reopened and every table read in full, so
        GCM tags and block checksums are checked; files under key versions not held are problems."""
        problems = []
        for path in dbfiles.namespace_files(self.root, None):
            version = dbfiles.version_of(path)
            if not keys.has(version):
                problems.append(f"{path.name}: under key version {version}, which storage does not hold")
                continue
            with self._slots.hold(path.name) as slot:
                if not path.exists():
                    continue
                # Closed first, so every block is read from disk rather than from the instance's cache.
                self._slots.shut(slot)
                try:
                    dbfiles.check_file(self._httpfs(), path, keys.key(version))
                except MeshError as exc:
                    problems.append(f"{path.name}: {exc.message}")
        return problems

    def snapshot(self, keys: KeySet, dest_dir: Path) -> list[Path]:
        """Copy every namespace file, checkpointed and still encrypted under its key, into
        ``dest_dir``; each copy is consistent (taken under the namespace's lock). Returns the copies."""
        dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        copies = []
        for path in dbfiles.namespace_files(self.root, None):
            with self._slots.hold(path.name) as slot, sandbox.engine():
                if not path.exists():
                    continue
                if slot.con is not None:
                    slot.con.execute("CHECKPOINT")
                elif dbfiles.wal(path).exists() and keys.has(dbfiles.version_of(path)):
                    con = sandbox.attach(self._httpfs(), path, keys.key(dbfiles.version_of(path)))
                    con.close()  # closing checkpoints the WAL into the file
                for source in (path, dbfiles.wal(path)):
                    if source.exists():  # a WAL is left only under a key version not held
                        copies.append(dbfiles.copy_file(source, dest_dir / source.name))
        fsync_path(dest_dir)
        return copies

    def close(self) -> None:
        """Close every instance (interrupting running queries); DuckDB forgets the keys with them."""
        self._slots.close()

    def forget_keys(self) -> None:
        """What sealing calls: :meth:`close`. Files reopen lazily once keys are passed again."""
        self.close()

    # -- one namespace's instance ---------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, keys: KeySet, ns: Namespace, create: bool) -> Iterator[Any]:
        """The namespace's slot, locked, with its instance open (creating the file if ``create``)."""
        label = ns.label()
        while True:
            version, name, exists = dbfiles.resolve(self.root, keys, label)
            if not exists and not create:
                raise NotFound("this namespace has no analytics tables")
            with self._slots.hold(name) as slot:
                if slot.con is None:
                    if not slot.path.exists():
                        if exists:  # rotation moved it since we looked: look again
                            continue
                        dbfiles.create_file(self._httpfs(), slot.path, keys.key(version), label)
                    slot.con = dbfiles.open_file(self._httpfs(), slot.path, keys.key(version), label)
                    self._slots.evict(slot)
                self._slots.touch(slot)
                try:
                    yield slot
                except Unavailable:
                    # A damaged or failed instance is not reused: the next call opens the file afresh.
                    self._slots.retire(slot)
                    raise
                return

    def _confirmed(self, slot: Slot, keys: KeySet) -> MeshError:
        """What a damage report from inside a caller's statement is: believed only if the file fails
        its check, since a caller can forge DuckDB's wording (``error()``, or text it stored)."""
        self._slots.shut(slot)
        try:
            dbfiles.check_file(self._httpfs(), slot.path, keys.key(dbfiles.version_of(slot.path)))
        except DamagedError as found:
            return found
        return BadRequest("the statement failed while running")

"""The DuckDB instances analytics uses, and what a caller's SQL may do inside an instance.

Contracts:

- Every instance is in-memory with extension auto-install and auto-load off, community and
  unsigned extensions refused, no persistent secrets, :data:`MEMORY_LIMIT` of memory,
  :data:`THREADS` threads and no temporary directory: nothing ever spills to disk unencrypted
  (a query that needs more memory fails instead). It loads httpfs from the
  ``duckdb_extension_httpfs`` wheel by absolute path: without httpfs DuckDB has only a read-only
  crypto module and refuses to write encrypted files; ``force_mbedtls_unsafe`` is never set.
- :func:`attach` opens a file with its ``ENCRYPTION_KEY`` (:func:`file_key`, a subkey of the
  key version); :func:`file_name` derives the file's name from the namespace label under another.
- :func:`confine` then turns external access off (no files, no network, no ATTACH, INSTALL or
  LOAD) and locks the configuration, so no later statement can undo it.
- :func:`check_select` admits exactly one statement of type SELECT that starts with ``SELECT``,
  ``WITH``, ``FROM``, ``VALUES``, ``TABLE`` or ``(``: DuckDB rewrites ``PRAGMA``, ``SHOW``,
  ``DESCRIBE`` and ``SUMMARIZE`` into SELECTs, and we refuse those too. :func:`run_select` runs it
  in a ``READ ONLY`` transaction, interrupted by a timer at its deadline.
- Error messages: parser, binder and catalog errors go back with DuckDB's text (it echoes only the
  caller's own query and names). Errors raised while running (conversions, ``error()``, JSON) can
  quote stored values, so they go back as their kind only. Damage is :class:`DamagedError`.

The checks and conversions of caller values (columns, parameters, ingest rows, results) are in
:mod:`.values` and re-exported here; the files on disk (WAL, modes, publishing, copies)
are in :mod:`.dbfiles`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.metadata
import importlib.util
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import duckdb

from shared import BadRequest, MeshError, Timeout, Unavailable
from shared.crypto import derive_subkey, wipe

from ..core.errors import DamagedError, StoreError
from .values import (
    MAX_COLUMNS,
    MAX_PARAMS,
    TYPES,
    check_columns,
    check_params,
    encode_rows,
    insert_sql,
    to_wire,
)

__all__ = ["MAX_COLUMNS", "MAX_PARAMS", "MEMORY_LIMIT", "THREADS", "TYPES", "attach", "check_columns",
           "check_params", "check_select", "confine", "crypto_selftest", "encode_rows", "engine",
           "file_key", "file_name", "httpfs_path", "insert_sql", "instance", "mapped", "quote", "read_label",
           "run_select", "sql_text", "StartupError", "table_columns", "table_names", "to_wire"]

MEMORY_LIMIT: Final = "512MiB"
THREADS: Final = 2
_CONFIG: Final[dict[str, str | int]] = {
    "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    "allow_community_extensions": False, "allow_unsigned_extensions": False, "allow_persistent_secrets": False,
    "memory_limit": MEMORY_LIMIT, "threads": THREADS, "temp_directory": "",
}
_FIRST_WORD: Final = re.compile(r"\(|[A-Za-z]+")
_LEADING_COMMENT: Final = re.compile(r"\s+|--[^\n]*|/\*.*?\*/", re.S)
_SELECT_WORDS: Final = frozenset({"(", "SELECT", "WITH", "FROM", "VALUES", "TABLE"})
_DAMAGE: Final = ("aes tag", "corrupt database", "checksum", "wrong encryption key")
_COLUMNS_SQL: Final = ("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'db' "
                       "AND schema_name = 'main' AND table_name = ? ORDER BY column_index")


class StartupError(MeshError):
    """Storage cannot run safely on this machine (the secure crypto module is missing); it refuses
    to start rather than fall back to unencrypted files."""

    code = Unavailable.code


def httpfs_path() -> Path:
    """The httpfs extension in the ``duckdb_extension_httpfs`` wheel built for exactly this DuckDB."""
    spec = importlib.util.find_spec("duckdb_extension_httpfs")
    if spec is None or spec.origin is None:
        raise StartupError("the duckdb_extension_httpfs package is not installed: storage refuses to start")
    try:
        wheel = importlib.metadata.version("duckdb_extension_httpfs")
    except importlib.metadata.PackageNotFoundError:
        wheel = "unknown"
    if wheel != duckdb.__version__:
        raise StartupError(f"duckdb_extension_httpfs {wheel} does not match duckdb {duckdb.__version__}: "
                           "storage refuses to start")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / "httpfs.duckdb_extension"
    if not path.is_file():
        raise StartupError(f"the httpfs extension for duckdb {duckdb.__version__} is missing: storage refuses to start")
    return path


def sql_text(text: str) -> str:
    """``text`` as a SQL string literal (for paths and hex keys, which DuckDB takes only as literals)."""
    return "'" + text.replace("'", "''") + "'"


def instance(extension: Path) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB instance with httpfs loaded (the only extension it will ever load)."""
    con = duckdb.connect(":memory:", config=dict(_CONFIG))
    try:
        con.execute(f"LOAD {sql_text(str(extension))}")
    except BaseException:
        con.close()
        raise
    return con


def file_key(key: bytearray) -> str:
    """The ``ENCRYPTION_KEY`` of files under ``key``: an immutable hex ``str`` that cannot be wiped."""
    sub = derive_subkey(key, "storage-duckdb-file")
    try:
        return sub.hex()
    finally:
        wipe(sub)


def file_name(key: bytearray, label: bytes, version: int) -> str:
    """``<tag>.v<version>.duckdb``, the tag an HMAC of the namespace label under a subkey of ``key``."""
    names = derive_subkey(key, "storage-duckdb-names")
    try:
        return f"{hmac.new(names, label, hashlib.sha256).digest()[:16].hex()}.v{version}.duckdb"
    finally:
        wipe(names)


def attach(extension: Path, path: Path, key: bytearray, alias: str = "db", read_only: bool = False) -> Any:
    """A fresh instance with ``path`` attached as ``alias``; errors are :class:`DamagedError` or
    :class:`StoreError`, never DuckDB's text."""
    con = instance(extension)
    options = f"ENCRYPTION_KEY {sql_text(file_key(key))}" + (", READ_ONLY" if read_only else "")
    try:
        con.execute(f"ATTACH {sql_text(str(path))} AS {alias} ({options})")
    except duckdb.Error as exc:
        con.close()
        error = mapped(exc)
        raise (error if isinstance(error, DamagedError) else
               StoreError(f"{path.name}: cannot open the analytics file ({type(exc).__name__})")) from None
    return con


def crypto_selftest(extension: Path, scratch: Path) -> None:
    """Write an encrypted table in ``scratch``, read it back and check no plaintext reached the disk."""
    marker = "crypto-check-" + secrets.token_hex(8)
    path, key = scratch / "check.duckdb", secrets.token_hex(32)
    for step in ("write", "read"):
        con = instance(extension)
        try:
            con.execute(f"ATTACH {sql_text(str(path))} AS c (ENCRYPTION_KEY {sql_text(key)})")
            if step == "write":
                con.execute("CREATE TABLE c.t (v VARCHAR)")
                con.execute("INSERT INTO c.t VALUES (?)", [marker])
            elif con.execute("SELECT v FROM c.t").fetchall() != [(marker,)]:
                raise ValueError("read back something else")
            con.execute("DETACH c")
        finally:
            con.close()
    if any(marker.encode() in f.read_bytes() for f in scratch.iterdir()):
        raise ValueError("the file is not encrypted")


def confine(con: duckdb.DuckDBPyConnection) -> None:
    """No files, network, ATTACH, INSTALL or LOAD from now on, and no setting can change back."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_select(con: duckdb.DuckDBPyConnection, sql: object) -> str:
    """``sql`` if it is exactly one plain SELECT; :class:`BadRequest` otherwise (nothing runs)."""
    if not isinstance(sql, str) or not sql.strip() or len(sql) > 100_000:
        raise BadRequest("the query must be a non-empty string of at most 100000 characters")
    try:
        statements = con.extract_statements(sql)
    except (duckdb.Error, UnicodeDecodeError) as exc:
        raise mapped(exc) from None
    single = len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT
    if not single or _first_word(sql) not in _SELECT_WORDS:
        raise BadRequest("only a single SELECT is allowed")
    return sql


def _first_word(sql: str) -> str:
    pos = 0
    while (m := _LEADING_COMMENT.match(sql, pos)) is not None and m.end() > pos:
        pos = m.end()
    word = _FIRST_WORD.match(sql, pos)
    return word.group(0).upper() if word else ""


def run_select(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any], max_rows: int,
               timeout_s: float) -> tuple[list[str], list[list[Any]]]:
    """Run a checked SELECT read-only, stopping it at ``timeout_s`` (:class:`Timeout`); more than
    ``max_rows`` rows is :class:`BadRequest` ("add a LIMIT"), never a silent cut."""
    con.execute("BEGIN TRANSACTION READ ONLY")
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        con.execute(sql, params)
        names = [str(d[0]) for d in (con.description or [])]
        rows = con.fetchmany(max_rows + 1)
    except duckdb.InterruptException:
        raise Timeout(f"the query ran longer than {timeout_s:g} s and was stopped") from None
    except (duckdb.Error, UnicodeDecodeError) as exc:
        raise mapped(exc) from None
    finally:
        # Joined before the rollback, so a late interrupt cannot land on it.
        timer.cancel()
        timer.join()
        con.execute("ROLLBACK")
    if len(rows) > max_rows:
        raise BadRequest(f"the query returns more than {max_rows} rows: add a LIMIT")
    return names, [[to_wire(v) for v in row] for row in rows]


def mapped(exc: BaseException) -> MeshError:
    """The mesh error for a DuckDB exception, quoting DuckDB only where it cannot quote stored data."""
    text = str(exc)
    # Only errors of the kinds storage damage raises count: a parser or binder message may quote a
    # caller's query, which can contain any word. (error() can still forge one: see analytics.query.)
    damage_kinds = duckdb.IOException | duckdb.InvalidInputException | duckdb.FatalException
    if isinstance(exc, damage_kinds) and any(marker in text.lower() for marker in _DAMAGE):
        return DamagedError("an analytics file failed its integrity check (a damaged block, or the wrong key)")
    if isinstance(exc, duckdb.PermissionException):
        return BadRequest("analytics queries may not reach files, the network, extensions or settings")
    if isinstance(exc, duckdb.OutOfMemoryException):
        return BadRequest(f"the query needs more than {MEMORY_LIMIT} of memory")
    if isinstance(exc, duckdb.InterruptException):
        return Timeout("the query was stopped at its deadline")
    if isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
        return BadRequest(text[:500])
    if isinstance(exc, duckdb.FatalException | duckdb.IOException):
        return Unavailable(f"the analytics engine failed ({type(exc).__name__})")
    # The rest, and a message DuckDB built with bytes that are not UTF-8: the kind only.
    return BadRequest(f"the query failed while running ({type(exc).__name__})")


@contextlib.contextmanager
def engine() -> Iterator[None]:
    """DuckDB errors raised inside become mesh errors (see :func:`mapped`)."""
    try:
        yield
    except (duckdb.Error, UnicodeDecodeError) as exc:
        raise mapped(exc) from None


def read_label(con: Any, alias: str) -> bytes | None:
    """The namespace label stored in the database ``alias`` (``db``/``old``), or None if it has none."""
    try:
        rows = con.execute(f"SELECT label FROM {alias}.mesh_meta.namespace").fetchall()  # noqa: S608 - our alias
    except duckdb.CatalogException:
        return None
    return bytes(rows[0][0]) if len(rows) == 1 else None


def table_columns(con: Any, table: str) -> list[tuple[str, str]]:
    """``table``'s ``(name, type)`` in order; empty when there is no such table."""
    return [(str(n), str(t)) for n, t in con.execute(_COLUMNS_SQL, [table]).fetchall()]


def table_names(con: Any) -> list[str]:
    """The caller's tables (schema ``main``), by name."""
    return [str(r[0]) for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'db' "
                                            "AND schema_name = 'main' ORDER BY table_name").fetchall()]


def quote(name: str) -> str:
    """A quoted SQL identifier (names are validated before; quoting keeps keywords usable)."""
    return '"' + name.replace('"', '""') + '"'

"""The records database's SQL side: connection, schema, statement text, and document encoding.

Contract:

- No SQL from callers. Names must be identifiers (:func:`~..core.namespace.check_ident`) and, like every
  value, are bound as parameters; statement text is only fixed fragments and aliases we number
  (:func:`query_sql`).
- Layout (:data:`SCHEMA`): ``collections`` holds each declared collection's indexed field names,
  ``docs`` the msgpack bodies, ``idx`` one row per (document, indexed field present). Every row
  carries its namespace label as a BLOB, and every statement filters on it.
- Documents (:func:`prepare`): a ``dict`` with ``str`` keys that msgpack round-trips in at most
  :data:`MAX_DOC_BYTES`; an indexed value is ``None``, a ``bool``, a 64-bit ``int``, a non-NaN
  ``float`` or a ``str`` of at most :data:`MAX_INDEXED_VALUE_BYTES` UTF-8 bytes, else
  :class:`BadRequest`. A stored body or definition that does not decode is :class:`DamagedError`.
- :func:`mapped` turns a SQLCipher exception into :class:`DamagedError` or :class:`StoreError`;
  messages hold no data or keys. :func:`verify_database` reports problems, repairing nothing.

:class:`~.store.RecordStore` owns the connection, its lock and transactions; these functions run
on a connection it hands them. Split out of the store (:mod:`.store`), which re-exports the public names.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Final

import msgpack
import sqlcipher3  # no stubs: pyproject.toml's mypy overrides ignore its imports

from shared import BadRequest, integrity_problems

from ..core.errors import DamagedError, StoreError
from ..core.namespace import check_ident

__all__ = ["MAX_DOC_BYTES", "MAX_INDEXED", "MAX_INDEXED_VALUE_BYTES", "SCHEMA", "Scalar",
           "check_fields", "check_id", "configure", "connect", "decode",
           "index_value", "mapped", "opens_with", "prepare", "query_sql", "read_fields", "verify_database",
           "write_index"]

_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
MAX_INDEXED: Final = 16
MAX_DOC_BYTES: Final = 512 * 1024
MAX_INDEXED_VALUE_BYTES: Final = 1024
_INT64: Final = (-(2**63), 2**63 - 1)
# One flipped byte can make integrity_check list every page of a tree; the first few say enough.
_MAX_PROBLEMS: Final = 50

# `value` has no declared type on purpose: no affinity, so '1' stays text and 1 stays an integer.
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS collections (
    ns BLOB NOT NULL, name TEXT NOT NULL, fields BLOB NOT NULL, PRIMARY KEY (ns, name));
CREATE TABLE IF NOT EXISTS docs (
    ns BLOB NOT NULL, coll TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (ns, coll, id));
CREATE TABLE IF NOT EXISTS idx (
    ns BLOB NOT NULL, coll TEXT NOT NULL, field TEXT NOT NULL, value, id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_find ON idx (ns, coll, field, value, id);
CREATE INDEX IF NOT EXISTS idx_doc ON idx (ns, coll, id);
"""

Scalar = str | int | float | bool | None


def check_id(doc_id: object, what: str = "id") -> None:
    """:class:`BadRequest` unless ``doc_id`` is a document id (32 lowercase hex digits)."""
    if not isinstance(doc_id, str) or not _ID_RE.fullmatch(doc_id):
        raise BadRequest(f"{what} must be a document id (32 lowercase hex digits)")


def check_fields(indexed: object) -> tuple[str, ...]:
    """A collection's indexed field names, sorted (the stored and compared form); at most
    :data:`MAX_INDEXED` distinct identifiers, else :class:`BadRequest`."""
    if not isinstance(indexed, list) or len(indexed) > MAX_INDEXED or len(set(map(str, indexed))) != len(indexed):
        raise BadRequest(f"indexed must be a list of at most {MAX_INDEXED} distinct field names")
    for name in indexed:
        check_ident(name, "an indexed field name")
    return tuple(sorted(indexed))


# -- connection ---------------------------------------------------------------------------


def connect(path: Path, key: bytes | bytearray) -> Any:
    """A connection to ``path`` keyed with the raw 32-byte ``key`` (no KDF). Nothing is read yet:
    SQLCipher finds out whether the key is right at the first read."""
    db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    # The hex form is an immutable str we cannot wipe; it lives only for this statement.
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return db


def configure(db: Any) -> None:
    """Set a fresh connection up: temp data in memory, WAL with ``synchronous = FULL``, the schema.
    A wrong key or a damaged file surfaces here as ``sqlcipher3.DatabaseError``."""
    db.execute("PRAGMA temp_store = MEMORY")
    # The first read is where SQLCipher finds out whether the key is right.
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError("the records database refused WAL mode")
    db.execute("PRAGMA synchronous = FULL")
    db.executescript(SCHEMA)


def opens_with(path: Path, key: bytes | bytearray) -> bool:
    """Whether ``key`` opens the database at ``path``, tried on a fresh connection closed after."""
    db = connect(path, key)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return True
    except sqlcipher3.DatabaseError:
        return False
    finally:
        db.close()


def mapped(exc: Exception) -> Exception:
    """The mesh error for a SQLCipher exception: damage, or a plain store failure."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return DamagedError("the records database failed its integrity check (a damaged page, or the wrong key)")
    return StoreError(f"the records database failed ({type(exc).__name__})")


# -- statements ---------------------------------------------------------------------------


def query_sql(label: bytes, collection: str, conditions: list[tuple[str, Scalar]], after: str,
              limit: int) -> tuple[str, list[Any]]:
    """The statement and parameters of a query. The text is made of fixed fragments and aliases we
    number; every name and value is a parameter. The first condition drives an index range scan
    in id order; each further one is an index lookup on ``idx_find``."""
    if not conditions:
        return ("SELECT id, body FROM docs WHERE ns = ? AND coll = ? AND id > ? ORDER BY id LIMIT ?",
                [label, collection, after, limit])
    joins: list[str] = []
    params: list[Any] = []
    for n, (field, value) in enumerate(conditions[1:], start=1):
        test = "IS NULL" if value is None else "= ?"
        joins.append(f"JOIN idx AS i{n} ON i{n}.ns = i0.ns AND i{n}.coll = i0.coll AND i{n}.field = ? "
                     f"AND i{n}.value {test} AND i{n}.id = i0.id")
        params += [field] if value is None else [field, value]
    field, value = conditions[0]
    test = "IS NULL" if value is None else "= ?"
    sql = (f"SELECT i0.id, d.body FROM idx AS i0 {' '.join(joins)} "  # noqa: S608 - fixed fragments only
           "JOIN docs AS d ON d.ns = i0.ns AND d.coll = i0.coll AND d.id = i0.id "
           f"WHERE i0.ns = ? AND i0.coll = ? AND i0.field = ? AND i0.value {test} AND i0.id > ? "
           "ORDER BY i0.id LIMIT ?")
    params += [label, collection, field] + ([] if value is None else [value]) + [after, limit]
    return sql, params


def read_fields(db: Any, label: bytes, collection: str) -> tuple[str, ...] | None:
    """The indexed fields ``collection`` was declared with in namespace ``label``, or None if undeclared."""
    row = db.execute("SELECT fields FROM collections WHERE ns = ? AND name = ?", (label, collection)).fetchone()
    if row is None:
        return None
    fields: tuple[str, ...] = decode(row[0], True)
    return fields


def write_index(db: Any, label: bytes, collection: str, doc_id: str, entries: list[tuple[str, Scalar]]) -> None:
    """Insert the index rows of document ``doc_id`` (inside the caller's transaction)."""
    if entries:
        db.executemany("INSERT INTO idx (ns, coll, field, value, id) VALUES (?, ?, ?, ?, ?)",
                       [(label, collection, f, v, doc_id) for f, v in entries])


# -- documents ----------------------------------------------------------------------------


def prepare(doc: object, fields: tuple[str, ...]) -> tuple[bytes, list[tuple[str, Scalar]]]:
    """The encoded body and index entries of ``doc``; :class:`BadRequest` when it is not storable."""
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise BadRequest("a document must be a map with string keys")
    try:
        body = msgpack.packb(doc, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest("the document holds a value msgpack cannot encode") from None
    if len(body) > MAX_DOC_BYTES:
        raise BadRequest(f"the document is {len(body)} bytes encoded; the limit is {MAX_DOC_BYTES}")
    try:
        # A document must read back: maps keyed by lists, for one, encode but do not decode.
        decode(body)
    except DamagedError:
        raise BadRequest("the document does not decode back (a map key msgpack cannot read)") from None
    return body, _entries(doc, fields)


def _entries(doc: dict[str, Any], fields: tuple[str, ...]) -> list[tuple[str, Scalar]]:
    return [(f, index_value(f, doc[f])) for f in fields if f in doc]


def index_value(field: str, value: object) -> Scalar:
    """``value`` if an indexed field (or a ``where`` condition on one) may hold it, else :class:`BadRequest`."""
    if not (value is None or isinstance(value, bool)
            or (isinstance(value, int) and _INT64[0] <= value <= _INT64[1])
            or (isinstance(value, float) and not math.isnan(value))
            or (isinstance(value, str) and _utf8_size(value) <= MAX_INDEXED_VALUE_BYTES)):
        raise BadRequest(f"indexed field {field!r} must hold null, a boolean, a 64-bit integer, a float "
                         f"(not NaN) or a string of at most {MAX_INDEXED_VALUE_BYTES} UTF-8 bytes")
    return value


def _utf8_size(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not storable text
        return MAX_INDEXED_VALUE_BYTES + 1


def _kind(value: Any) -> tuple[str, Any]:
    """A comparable form of an index value as SQLite stores it (booleans are integers)."""
    return ("int", int(value)) if isinstance(value, bool) else (type(value).__name__, value)


def decode(blob: bytes, fields: bool = False) -> Any:
    """A stored document (a map), or with ``fields`` a collection's field names; else DamagedError."""
    try:
        value = msgpack.unpackb(bytes(blob), raw=False, strict_map_key=False)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, list if fields else dict):
        raise DamagedError(f"a stored {'collection definition' if fields else 'document'} does not decode")
    return tuple(value) if fields else value


# -- verification -------------------------------------------------------------------------


def verify_database(db: Any) -> list[str]:
    """Problems found in the database behind ``db`` (at most the first 50): page HMACs, SQLite's
    integrity check, then, if those pass, every document decoding and its index rows matching it.
    Reads the whole database; the caller holds the store's lock."""
    problems = integrity_problems(db, _MAX_PROBLEMS)
    if not problems:
        # Documents are read only from pages that passed both checks: over damaged ones the reads fail or mislead.
        try:
            problems += _verify_documents(db)
        except sqlcipher3.Error as exc:
            problems.append(f"reading documents failed: {type(exc).__name__}")
    return problems[:_MAX_PROBLEMS]


def _verify_documents(db: Any) -> list[str]:
    problems: list[str] = []
    collections = {(bytes(ns), name): decode(fields, True)
                   for ns, name, fields in db.execute("SELECT ns, name, fields FROM collections")}
    for ns, collection, doc_id, body in db.cursor().execute("SELECT ns, coll, id, body FROM docs"):
        fields = collections.get((bytes(ns), collection))
        if fields is None:
            problems.append(f"document {doc_id} belongs to no declared collection")
            continue
        try:
            expected = Counter((f, *_kind(v)) for f, v in _entries(decode(body), fields))
        except (DamagedError, BadRequest):
            problems.append(f"document {doc_id} in {collection!r} does not decode or has a bad indexed value")
            continue
        actual = Counter((f, *_kind(v)) for f, v in db.execute(
            "SELECT field, value FROM idx WHERE ns = ? AND coll = ? AND id = ?", (ns, collection, doc_id)))
        if actual != expected:
            problems.append(f"document {doc_id} in {collection!r}: its index rows do not match it")
        if len(problems) >= _MAX_PROBLEMS:
            return problems
    orphans = db.execute("SELECT count(*) FROM idx AS i WHERE NOT EXISTS (SELECT 1 FROM docs AS d "
                         "WHERE d.ns = i.ns AND d.coll = i.coll AND d.id = i.id)").fetchone()[0]
    if orphans:
        problems.append(f"{orphans} index rows point at no document")
    return problems

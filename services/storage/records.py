"""The records store: collections of msgpack documents in one SQLCipher database (``<dir>/records.db``).

- Encrypted at rest with a raw 256-bit key (``PRAGMA key = "x'<hex>'"``, no KDF): database, WAL and
  temporary data (``temp_store = MEMORY``). The file is created 0600 before SQLite opens it, so its
  ``-wal``/``-shm`` inherit that mode; a directory we create is 0700. The key's hex form is an
  immutable ``str`` we cannot wipe (see ``shared/_crypto.py``); the store keeps one ``bytearray``
  copy of the key for :meth:`RecordStore.backup_to`, wiped by ``close``.
- Durable: WAL with ``synchronous = FULL``; each writing call is one transaction, on disk when it
  returns (:meth:`RecordStore.insert_many`: one transaction for the whole batch).
- No SQL from callers: names must match ``[a-z][a-z0-9_]{0,62}`` and, like every value, are bound
  as parameters; statement text is only fixed fragments and aliases we number.
- Namespace isolation: every row carries ``ns.label()`` as a BLOB and every statement filters on it.
- A document is a ``dict`` with ``str`` keys that msgpack round-trips in at most
  :data:`MAX_DOC_BYTES`; its id is 128 random bits in hex. Up to :data:`MAX_INDEXED` indexed fields
  per collection; an indexed field, when present, must hold ``None``, a ``bool``, a 64-bit ``int``,
  a non-NaN ``float`` or a ``str`` of at most :data:`MAX_INDEXED_VALUE_BYTES` UTF-8 bytes, else
  :class:`BadRequest`. A document lacking the field matches no condition on it; ``None`` matches
  ``None``; ``1``, ``1.0`` and ``True`` are equal (as in Python), ``"1"`` is not ``1``.
- Queries: equality on indexed fields (AND), by id, paged by an id cursor, walking the
  ``(ns, collection, field, value, id)`` index (never a scan of the collection).
- Damage is loud: a page failing its HMAC or a document that does not decode raises
  :class:`~.errors.DamagedError`; nothing is guessed or repaired. Messages hold no data or keys.

Threading: one connection behind a lock; any thread may call, calls are serialised. ``rekey``,
``verify`` and ``backup_to`` read or rewrite the whole database while holding it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

import msgpack
import sqlcipher3  # no stubs: pyproject.toml's mypy overrides ignore its imports

from shared import BadRequest, Conflict, NotFound, Unavailable
from shared._crypto import wipe
from shared._files import fsync_path

from .errors import DamagedError
from .keys import Namespace

__all__ = ["MAX_BATCH", "MAX_DOC_BYTES", "MAX_INDEXED", "MAX_INDEXED_VALUE_BYTES", "MAX_LIMIT",
           "IDENT_RE", "RecordStore", "StoreError", "check_ident"]

IDENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
_ID_RE: Final = re.compile(r"[0-9a-f]{32}")
MAX_INDEXED: Final = 16
MAX_DOC_BYTES: Final = 512 * 1024
MAX_INDEXED_VALUE_BYTES: Final = 1024
MAX_BATCH: Final = 1000
MAX_LIMIT: Final = 1000
_INT64: Final = (-(2**63), 2**63 - 1)
# One flipped byte can make integrity_check list every page of a tree; the first few say enough.
_MAX_PROBLEMS: Final = 50

# `value` has no declared type on purpose: no affinity, so '1' stays text and 1 stays an integer.
_SCHEMA: Final = """
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


class StoreError(Unavailable):
    """A store failed for a reason other than damage (disk full, I/O error, closed): ``UNAVAILABLE``."""


def check_ident(name: object, what: str) -> str:
    """``name`` if it is a valid identifier, else :class:`BadRequest` (not echoing the value)."""
    if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
        raise BadRequest(f"{what} must be 1-63 characters of a-z, 0-9 and _, starting with a letter")
    return name


def _connect(path: Path, key: bytes | bytearray) -> Any:
    db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    # The hex form is an immutable str we cannot wipe; it lives only for this statement.
    db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
    return db


def _mapped(exc: Exception) -> Exception:
    """The mesh error for a SQLCipher exception: damage, or a plain store failure."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or "not a database" in text:
        return DamagedError("the records database failed its integrity check (a damaged page, or the wrong key)")
    return StoreError(f"the records database failed ({type(exc).__name__})")


class RecordStore:
    """One open records database. Use :meth:`open`; close with :meth:`close` (or ``contextlib.closing``)."""

    def __init__(self, connection: Any, path: Path, key: bytes | bytearray) -> None:
        self._db: Any = connection
        self.path = path
        self._key = bytearray(key)
        self._lock = threading.RLock()
        self._fields: dict[tuple[bytes, str], tuple[str, ...]] = {}

    @classmethod
    def open(cls, path: Path, key: bytes | bytearray) -> RecordStore:
        """Open (creating it, 0600, in a 0700 directory when missing) the database at ``path`` with
        the 32-byte ``key``. An existing file the key does not open raises :class:`DamagedError`."""
        if len(key) != 32:
            raise BadRequest("the records database key must be 32 bytes")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        existed = path.exists() and path.stat().st_size > 0
        with contextlib.suppress(FileExistsError):
            # Created 0600 before SQLite opens it, so the -wal and -shm it makes inherit that mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.chmod(path, 0o600)
        db = _connect(path, key)
        try:
            db.execute("PRAGMA temp_store = MEMORY")
            # The first read is where SQLCipher finds out whether the key is right.
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError("the records database refused WAL mode")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
        except BaseException as exc:
            db.close()
            if not isinstance(exc, sqlcipher3.DatabaseError):
                raise
            if existed:
                raise DamagedError(f"{path.name}: the key does not open the records database "
                                   "(wrong key version, or the file is damaged)") from None
            raise StoreError(f"{path.name}: cannot create the records database ({type(exc).__name__})") from None
        return cls(db, path, key)

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL into the main file) and wipe the key copy."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            wipe(self._key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        """Hold the lock and turn SQLCipher errors into mesh errors."""
        with self._lock:
            if self._db is None:
                raise StoreError("the records store is closed")
            try:
                yield self._db
            except sqlcipher3.Error as exc:
                raise _mapped(exc) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One durable write transaction; rolled back on any failure."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def create_collection(self, ns: Namespace, collection: str, indexed: list[str]) -> None:
        """Declare ``collection`` with ``indexed`` fields (at most 16). Idempotent with the same set of
        fields; :class:`Conflict` if the collection exists with others."""
        check_ident(collection, "a collection name")
        if not isinstance(indexed, list) or len(indexed) > MAX_INDEXED or len(set(map(str, indexed))) != len(indexed):
            raise BadRequest(f"indexed must be a list of at most {MAX_INDEXED} distinct field names")
        for name in indexed:
            check_ident(name, "an indexed field name")
        fields = tuple(sorted(indexed))
        label = ns.label()
        with self._transaction() as db:
            row = db.execute("SELECT fields FROM collections WHERE ns = ? AND name = ?", (label, collection)).fetchone()
            if row is None:
                db.execute("INSERT INTO collections (ns, name, fields) VALUES (?, ?, ?)",
                           (label, collection, msgpack.packb(list(fields))))
            elif _decode(row[0], True) != fields:
                raise Conflict(f"collection {collection!r} exists with other indexed fields")
        self._fields[(label, collection)] = fields

    def _collection(self, db: Any, ns: Namespace, collection: str) -> tuple[bytes, tuple[str, ...]]:
        """``ns``'s label and the indexed fields of its ``collection``; :class:`NotFound` if undeclared."""
        label = ns.label()
        check_ident(collection, "a collection name")
        fields = self._fields.get((label, collection))
        if fields is None:
            row = db.execute("SELECT fields FROM collections WHERE ns = ? AND name = ?", (label, collection)).fetchone()
            if row is None:
                raise NotFound(f"no collection {collection!r} in this namespace")
            fields = _decode(row[0], True)
            self._fields[(label, collection)] = fields
        return label, fields

    def insert(self, ns: Namespace, collection: str, doc: dict[str, Any]) -> str:
        """Store ``doc`` in ``collection``; return its new id. Durable on return."""
        return self.insert_many([(ns, collection, doc)])[0]

    def insert_many(self, items: list[tuple[Namespace, str, dict[str, Any]]]) -> list[str]:
        """Store every ``(ns, collection, doc)`` in one transaction (all or none); return their ids."""
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise BadRequest(f"insert_many takes 1 to {MAX_BATCH} documents")
        with self._locked() as db:
            # Every document is checked before the transaction starts: a bad one stores none.
            rows = []
            for ns, coll, doc in items:
                label, fields = self._collection(db, ns, coll)
                rows.append((label, coll, secrets.token_hex(16), *_prepare(doc, fields)))
            with self._transaction():
                for label, coll, doc_id, body, entries in rows:
                    db.execute("INSERT INTO docs (ns, coll, id, body) VALUES (?, ?, ?, ?)", (label, coll, doc_id, body))
                    _write_index(db, label, coll, doc_id, entries)
        return [row[2] for row in rows]

    def get(self, ns: Namespace, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document ``doc_id`` of ``collection``, or None."""
        _check_id(doc_id)
        with self._locked() as db:
            label, _ = self._collection(db, ns, collection)
            row = db.execute("SELECT body FROM docs WHERE ns = ? AND coll = ? AND id = ?",
                             (label, collection, doc_id)).fetchone()
        return None if row is None else _decode(row[0])

    def update(self, ns: Namespace, collection: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Replace document ``doc_id`` by ``doc`` and reindex it, in one transaction; False if absent."""
        _check_id(doc_id)
        with self._locked() as db:
            label, fields = self._collection(db, ns, collection)
            body, entries = _prepare(doc, fields)
            with self._transaction():
                cur = db.execute("UPDATE docs SET body = ? WHERE ns = ? AND coll = ? AND id = ?",
                                 (body, label, collection, doc_id))
                if cur.rowcount == 0:
                    return False
                db.execute("DELETE FROM idx WHERE ns = ? AND coll = ? AND id = ?", (label, collection, doc_id))
                _write_index(db, label, collection, doc_id, entries)
        return True

    def delete(self, ns: Namespace, collection: str, doc_id: str) -> bool:
        """Delete document ``doc_id`` and its index entries; False if absent."""
        _check_id(doc_id)
        with self._locked() as db:
            label, _ = self._collection(db, ns, collection)
            with self._transaction():
                cur = db.execute("DELETE FROM docs WHERE ns = ? AND coll = ? AND id = ?", (label, collection, doc_id))
                db.execute("DELETE FROM idx WHERE ns = ? AND coll = ? AND id = ?", (label, collection, doc_id))
        return bool(cur.rowcount)

    def query(self, ns: Namespace, collection: str, where: dict[str, Scalar], after: str | None = None,
              limit: int = 100) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        """Up to ``limit`` (1-1000) ``(id, doc)`` whose indexed fields equal all of ``where``, in id
        order after id ``after``, and the next page's cursor (None on the last page). A field that
        is not indexed raises :class:`BadRequest`."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}")
        if after is not None:
            _check_id(after, "after")
        if not isinstance(where, dict):
            raise BadRequest("where must be a map of indexed field names to values")
        with self._locked() as db:
            label, fields = self._collection(db, ns, collection)
            conditions = []
            for name in sorted(where, key=str):
                check_ident(name, "a field name in where")
                if name not in fields:
                    raise BadRequest(f"field {name!r} is not indexed in collection {collection!r}")
                conditions.append((name, _index_value(name, where[name])))
            sql, params = query_sql(label, collection, conditions, after or "", limit + 1)
            rows = db.execute(sql, params).fetchall()
        page = [(str(doc_id), _decode(body)) for doc_id, body in rows[:limit]]
        return page, (page[-1][0] if len(rows) > limit else None)

    def count(self) -> int:
        """The number of documents, all namespaces together."""
        with self._locked() as db:
            return int(db.execute("SELECT count(*) FROM docs").fetchone()[0])

    def is_empty(self) -> bool:
        """True when no collection exists (hence no document)."""
        with self._locked() as db:
            return db.execute("SELECT 1 FROM collections LIMIT 1").fetchone() is None

    def rekey(self, new_key: bytes | bytearray) -> None:
        """Re-encrypt every page under ``new_key`` in one transaction: a crash leaves the database
        under exactly one of the two keys (:meth:`which_key` tells which). SQLCipher 4 rekeys in WAL
        mode (the salt stays): the rewritten pages commit atomically to the WAL, then a ``TRUNCATE``
        checkpoint moves them into the main file and empties the WAL, leaving no old-key page."""
        if len(new_key) != 32:
            raise BadRequest("the records database key must be 32 bytes")
        with self._locked() as db:
            db.execute(f"PRAGMA rekey = \"x'{new_key.hex()}'\"")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            # Prove the new key opens the file from a fresh connection before forgetting the old one.
            if self.which_key(self.path, {1: new_key}) is None:
                raise StoreError("the records database does not open with its new key after rekey")
            wipe(self._key)
            self._key = bytearray(new_key)

    @staticmethod
    def which_key(path: Path, candidates: dict[int, bytes | bytearray]) -> int | None:
        """The version among ``candidates`` whose key opens ``path`` (newest first), or None."""
        if not path.exists():
            return None
        for version in sorted(candidates, reverse=True):
            db = _connect(path, candidates[version])
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return version
            except sqlcipher3.DatabaseError:
                continue
            finally:
                db.close()
        return None

    def backup_to(self, dest: Path) -> None:
        """Copy the database, consistently and online, to the new file ``dest`` (0600), encrypted
        with the same key, via the SQLite backup API; ``dest`` appears only once complete."""
        if dest.exists():
            raise Conflict("the backup destination already exists")
        part = dest.with_name(dest.name + ".part")
        with self._locked() as db:
            part.unlink(missing_ok=True)
            os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            try:
                target = _connect(part, self._key)
                try:
                    # Holding the lock makes the copy one consistent snapshot: no write can interleave.
                    db.backup(target)
                finally:
                    target.close()
                fsync_path(part)
                os.replace(part, dest)
            except BaseException:
                part.unlink(missing_ok=True)
                raise
            fsync_path(dest.parent)

    def verify(self) -> list[str]:
        """Problems found (empty when none): page HMACs, SQLite's integrity check, every document
        decoding, and index rows matching the documents. Reads the whole database."""
        problems: list[str] = []
        with self._locked() as db:
            for pragma in ("cipher_integrity_check", "integrity_check"):
                try:
                    rows = db.execute(f"PRAGMA {pragma}").fetchall()
                except sqlcipher3.Error as exc:
                    problems.append(f"{pragma} failed: {type(exc).__name__}")
                    continue
                lines = [line for row in rows for line in str(row[0]).splitlines()]
                problems += [f"{pragma}: {line[:200]}" for line in lines if line != "ok"]
            if not problems:
                try:
                    problems += self._verify_documents()
                except sqlcipher3.Error as exc:
                    problems.append(f"reading documents failed: {type(exc).__name__}")
        return problems[:_MAX_PROBLEMS]

    def _verify_documents(self) -> list[str]:
        db, problems = self._db, []
        collections = {(bytes(ns), name): _decode(fields, True)
                       for ns, name, fields in db.execute("SELECT ns, name, fields FROM collections")}
        for ns, collection, doc_id, body in db.cursor().execute("SELECT ns, coll, id, body FROM docs"):
            fields = collections.get((bytes(ns), collection))
            if fields is None:
                problems.append(f"document {doc_id} belongs to no declared collection")
                continue
            try:
                expected = Counter((f, *_kind(v)) for f, v in _entries(_decode(body), fields))
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


def _check_id(doc_id: object, what: str = "id") -> None:
    if not isinstance(doc_id, str) or not _ID_RE.fullmatch(doc_id):
        raise BadRequest(f"{what} must be a document id (32 lowercase hex digits)")


def _prepare(doc: object, fields: tuple[str, ...]) -> tuple[bytes, list[tuple[str, Scalar]]]:
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
        _decode(body)
    except DamagedError:
        raise BadRequest("the document does not decode back (a map key msgpack cannot read)") from None
    return body, _entries(doc, fields)


def _entries(doc: dict[str, Any], fields: tuple[str, ...]) -> list[tuple[str, Scalar]]:
    return [(f, _index_value(f, doc[f])) for f in fields if f in doc]


def _index_value(field: str, value: object) -> Scalar:
    if not (value is None or isinstance(value, bool)
            or (isinstance(value, int) and _INT64[0] <= value <= _INT64[1])
            or (isinstance(value, float) and not math.isnan(value))
            or (isinstance(value, str) and _utf8_size(value) <= MAX_INDEXED_VALUE_BYTES)):
        raise BadRequest(f"indexed field {field!r} must hold null, a boolean, a 64-bit integer, a float "
                         f"(not NaN) or a string of at most {MAX_INDEXED_VALUE_BYTES} UTF-8 bytes")
    return cast(Scalar, value)


def _utf8_size(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not storable text
        return MAX_INDEXED_VALUE_BYTES + 1


def _kind(value: Any) -> tuple[str, Any]:
    """A comparable form of an index value as SQLite stores it (booleans are integers)."""
    return ("int", int(value)) if isinstance(value, bool) else (type(value).__name__, value)


def _write_index(db: Any, label: bytes, collection: str, doc_id: str, entries: list[tuple[str, Scalar]]) -> None:
    if entries:
        db.executemany("INSERT INTO idx (ns, coll, field, value, id) VALUES (?, ?, ?, ?, ?)",
                       [(label, collection, f, v, doc_id) for f, v in entries])


def _decode(blob: bytes, fields: bool = False) -> Any:
    """A stored document (a map), or with ``fields`` a collection's field names; else DamagedError."""
    try:
        value = msgpack.unpackb(bytes(blob), raw=False, strict_map_key=False)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, list if fields else dict):
        raise DamagedError(f"a stored {'collection definition' if fields else 'document'} does not decode")
    return tuple(value) if fields else value

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
  :class:`~..core.errors.DamagedError`; nothing is guessed or repaired. Messages hold no data or keys.

Threading: one connection behind a lock; any thread may call, calls are serialised. ``rekey``,
``verify`` and ``backup_to`` read or rewrite the whole database while holding it.

This module is the store: opening, the lock, transactions and the public API. The SQL side (the
connection's pragmas, schema, statement text, document encoding and the verify pass) is
:mod:`.sql`; names callers import from here (``query_sql``, the limits) are re-exported.
Identifiers (:func:`~..core.namespace.check_ident`) and :class:`~..core.errors.StoreError` are
shared with the analytics engine and live in the core.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack
import sqlcipher3  # no stubs: pyproject.toml's mypy overrides ignore its imports

from shared import BadRequest, Conflict, NotFound
from shared.crypto import wipe
from shared.files import fsync_path

from ..core.errors import DamagedError, StoreError
from ..core.namespace import Namespace, check_ident
from . import sql
from .sql import MAX_DOC_BYTES, MAX_INDEXED, MAX_INDEXED_VALUE_BYTES, Scalar, query_sql

__all__ = ["MAX_BATCH", "MAX_DOC_BYTES", "MAX_INDEXED", "MAX_INDEXED_VALUE_BYTES", "MAX_LIMIT",
           "RecordStore", "query_sql"]

MAX_BATCH: Final = 1000
MAX_LIMIT: Final = 1000


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
        db = sql.connect(path, key)
        try:
            sql.configure(db)
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
                raise sql.mapped(exc) from None

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
        fields = sql.check_fields(indexed)
        label = ns.label()
        with self._transaction() as db:
            stored = sql.read_fields(db, label, collection)
            if stored is None:
                db.execute("INSERT INTO collections (ns, name, fields) VALUES (?, ?, ?)",
                           (label, collection, msgpack.packb(list(fields))))
            elif stored != fields:
                raise Conflict(f"collection {collection!r} exists with other indexed fields")
        self._fields[(label, collection)] = fields

    def _collection(self, db: Any, ns: Namespace, collection: str) -> tuple[bytes, tuple[str, ...]]:
        """``ns``'s label and the indexed fields of its ``collection``; :class:`NotFound` if undeclared."""
        label = ns.label()
        check_ident(collection, "a collection name")
        fields = self._fields.get((label, collection))
        if fields is None:
            fields = sql.read_fields(db, label, collection)
            if fields is None:
                raise NotFound(f"no collection {collection!r} in this namespace")
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
                rows.append((label, coll, secrets.token_hex(16), *sql.prepare(doc, fields)))
            with self._transaction():
                for label, coll, doc_id, body, entries in rows:
                    db.execute("INSERT INTO docs (ns, coll, id, body) VALUES (?, ?, ?, ?)", (label, coll, doc_id, body))
                    sql.write_index(db, label, coll, doc_id, entries)
        return [row[2] for row in rows]

    def get(self, ns: Namespace, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The document ``doc_id`` of ``collection``, or None."""
        sql.check_id(doc_id)
        with self._locked() as db:
            label, _ = self._collection(db, ns, collection)
            row = db.execute("SELECT body FROM docs WHERE ns = ? AND coll = ? AND id = ?",
                             (label, collection, doc_id)).fetchone()
        return None if row is None else sql.decode(row[0])

    def update(self, ns: Namespace, collection: str, doc_id: str, doc: dict[str, Any]) -> bool:
        """Replace document ``doc_id`` by ``doc`` and reindex it, in one transaction; False if absent."""
        sql.check_id(doc_id)
        with self._locked() as db:
            label, fields = self._collection(db, ns, collection)
            body, entries = sql.prepare(doc, fields)
            with self._transaction():
                cur = db.execute("UPDATE docs SET body = ? WHERE ns = ? AND coll = ? AND id = ?",
                                 (body, label, collection, doc_id))
                if cur.rowcount == 0:
                    return False
                db.execute("DELETE FROM idx WHERE ns = ? AND coll = ? AND id = ?", (label, collection, doc_id))
                sql.write_index(db, label, collection, doc_id, entries)
        return True

    def delete(self, ns: Namespace, collection: str, doc_id: str) -> bool:
        """Delete document ``doc_id`` and its index entries; False if absent."""
        sql.check_id(doc_id)
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
            sql.check_id(after, "after")
        if not isinstance(where, dict):
            raise BadRequest("where must be a map of indexed field names to values")
        with self._locked() as db:
            label, fields = self._collection(db, ns, collection)
            conditions = []
            for name in sorted(where, key=str):
                check_ident(name, "a field name in where")
                if name not in fields:
                    raise BadRequest(f"field {name!r} is not indexed in collection {collection!r}")
                conditions.append((name, sql.index_value(name, where[name])))
            statement, params = query_sql(label, collection, conditions, after or "", limit + 1)
            rows = db.execute(statement, params).fetchall()
        page = [(str(doc_id), sql.decode(body)) for doc_id, body in rows[:limit]]
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
            if sql.opens_with(path, candidates[version]):
                return version
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
                target = sql.connect(part, self._key)
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
        decoding, and index rows matching the documents. Reads the whole database under the lock."""
        with self._locked() as db:
            problems: list[str] = sql.verify_database(db)
        return problems

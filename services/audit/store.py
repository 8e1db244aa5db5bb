"""The audit database: records and signed checkpoints in SQLCipher, at ``<home>/data/audit/audit.db``.

Contracts:

- Encrypted at rest (DESIGN.md invariant 5): the database, its WAL and its temp data are all
  SQLCipher-encrypted with a raw 256-bit key (``PRAGMA key = "x'<hex>'"``, no passphrase KDF);
  temporary tables and sort spills stay in memory (``temp_store = MEMORY``). A wrong key or a
  file that is not an audit database raises :class:`StoreError` at :meth:`AuditStore.open`.
- Durable (invariant 9): WAL with ``synchronous = FULL``, so a commit is on disk when
  :meth:`AuditStore.append` returns. A batch (records and, optionally, a checkpoint) is one
  transaction: all of it or none of it.
- The store does not judge what it reads back: :meth:`AuditStore.entries` streams the rows as
  :class:`~.chain.LogEntry` in primary-key order (:data:`BATCH_ROWS` rows per query, one row
  decoded at a time, so reading the log costs memory for one record, not the log),
  :meth:`AuditStore.checkpoints` lists the :class:`~.chain.Checkpoint` rows, and the verifier
  (:mod:`.scan`, :func:`~.verifier.verify_log`) decides whether they are the log that was written.
  Only a row that cannot even be decoded raises :class:`~.errors.TamperError` here, naming it.
  :meth:`AuditStore.snapshot` makes several reads see one committed state of the database.
- The store knows nothing of verification: :mod:`.scan` builds on it (the streamed pass, and
  ``audit.verify``'s report), never the other way round.

A connection is used from one thread at a time: the service serialises writes, and readers
(``tail``, ``verify``, ``export``) open a connection of their own (WAL lets them read while a
commit is in progress; opening with a raw key costs well under a millisecond).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

import sqlcipher3  # no stubs: pyproject.toml's mypy overrides ignore its imports

from shared import BadRequest, MeshError, MeshHome, damaged_pages, integrity_problems

from .chain import Checkpoint, LogEntry, Record, encode_record
from .errors import TamperError
from .proofs import decode_checkpoint, decode_record, encode_checkpoint

__all__ = ["BATCH_ROWS", "AuditStore", "DamagedError", "StoreError", "db_path"]

#: Rows per query when the log is read in order. Each batch is one short statement (a cursor over
#: ``seq >= last + 1``), its rows decoded one at a time, so memory holds one record at a time.
BATCH_ROWS: Final = 10_000
_LAST_SEQ: Final = (1 << 63) - 1  # SQLite's largest integer key: "no upper bound"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    record BLOB NOT NULL,
    chain_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    tree_size INTEGER PRIMARY KEY,
    blob BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tree_size INTEGER NOT NULL,
    blob BLOB NOT NULL
);
"""


class StoreError(MeshError):
    """The database cannot be opened or written (wrong key, not a database, disk failure).
    A local error: on the wire it answers ``UNAVAILABLE``; details stay in the local log."""

    code = "UNAVAILABLE"


class DamagedError(StoreError):
    """The database's own integrity checks fail (a changed or lost page on disk): its records cannot
    all be read, so the log cannot be verified. Who is at fault: the disk, or whoever changed the
    file. ``pages`` are the damaged pages SQLCipher named (empty when it named none)."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path, self.problems, self.pages = path, problems, damaged_pages(problems)
        where = (f"page{'s' if len(self.pages) > 1 else ''} {', '.join(map(str, self.pages[:10]))}"
                 if self.pages else "no page named")
        finding = problems[0] if problems else "reads fail with 'database disk image is malformed'"
        super().__init__(
            f"{path}: the audit database failed its integrity check ({where}; {finding}): the log cannot be "
            "verified. Keep a copy of the file as evidence (`meshctl audit tail` may still read the newest "
            "records), then restore audit.db from a copy of the home made before the damage")


def db_path(home: MeshHome) -> Path:
    """Where the audit database lives in ``home``."""
    return home.data / "audit" / "audit.db"


class AuditStore:
    """One open connection to the audit database. Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, connection: sqlcipher3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path, key: bytes | bytearray) -> AuditStore:
        """Open (creating it and its 0700 directory when missing) the database at ``path`` with the
        32-byte ``key``. Raises :class:`StoreError` if the key does not open it."""
        if len(key) != 32:
            raise BadRequest("the audit database key must be 32 bytes")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        try:
            # The hex form of the key is an immutable str we cannot wipe (shared/_crypto.py lists
            # the limits); it lives only for this statement.
            db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
            db.execute("PRAGMA temp_store = MEMORY")
            db.execute("PRAGMA foreign_keys = ON")
            # The first read is where SQLCipher finds out whether the key is right.
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the audit database refused WAL mode ({mode})")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
        except sqlcipher3.DatabaseError:
            db.close()
            raise StoreError(f"{path}: cannot open the audit database (wrong key, or the file is damaged or not "
                             "an audit database)") from None
        except BaseException:
            db.close()
            raise
        os.chmod(path, 0o600)
        return cls(db, path)

    def rekey(self, new_key: bytes | bytearray) -> None:
        """Re-encrypt the database under ``new_key`` (``PRAGMA rekey``: the rewritten pages commit
        atomically through the WAL, so a crash leaves the database under exactly one of the two
        keys), then check that a fresh connection opens with it. :class:`StoreError` on failure."""
        if len(new_key) != 32:
            raise BadRequest("the audit database key must be 32 bytes")
        try:
            # As for PRAGMA key, the hex string cannot be wiped; it lives for this statement only.
            self._db.execute(f"PRAGMA rekey = \"x'{new_key.hex()}'\"")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlcipher3.DatabaseError:
            raise StoreError(f"{self.path}: re-keying the audit database failed") from None
        AuditStore.open(self.path, new_key).close()

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL into the main file when it is the last)."""
        self._db.close()

    def damaged(self) -> DamagedError:
        """What the integrity checks find, after a read failed inside SQLCipher (reads every page)."""
        return DamagedError(self.path, integrity_problems(self._db))

    def check_pages(self, structure: bool = False) -> None:
        """Check every page's HMAC (``PRAGMA cipher_integrity_check``: a byte changed on disk, in any
        part of the log) and, with ``structure``, SQLite's ``integrity_check`` too; raise
        :class:`DamagedError` naming the pages that fail. It reads the whole file in SQLCipher's C code,
        many times faster than verifying the records: a start runs the HMAC check when the file is small
        enough (``[audit] start_page_check_mib``), the background pass and ``audit.verify`` both checks."""
        try:
            problems = (integrity_problems(self._db) if structure
                        else integrity_problems(self._db, checks=("cipher_integrity_check",)))
        except sqlcipher3.DatabaseError:
            raise self.damaged() from None
        if problems:
            raise DamagedError(self.path, problems)

    def file_bytes(self) -> int:
        """The size of the database file and its WAL, in bytes (what :meth:`check_pages` reads)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Turn a read that fails inside SQLCipher (a damaged page: "database disk image is malformed")
        into :class:`DamagedError` naming the file and the damaged pages."""
        try:
            yield
        except sqlcipher3.DatabaseError:
            raise self.damaged() from None

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------

    def append(self, entries: Sequence[LogEntry], checkpoint: Checkpoint | None = None) -> None:
        """Write ``entries`` (and ``checkpoint``, if given) in one durable transaction.

        Returns only after the commit is on disk; on any failure nothing of the batch is written
        and :class:`StoreError` is raised (the caller rolls its in-memory log head back).
        """
        rows = [(e.record.seq, encode_record(e.record), e.chain_hash) for e in entries]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO records (seq, record, chain_hash) VALUES (?, ?, ?)", rows)
                if checkpoint is not None:
                    self._db.execute("INSERT INTO checkpoints (tree_size, blob) VALUES (?, ?)",
                                     (checkpoint.tree_size, encode_checkpoint(checkpoint)))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlcipher3.Error as exc:
            raise StoreError(f"the audit database write failed ({type(exc).__name__})") from None

    # -- reading ----------------------------------------------------------------------

    def load(self) -> tuple[list[LogEntry], list[Checkpoint]]:
        """Every record and checkpoint, in primary-key order, all in memory: for tests and tools over
        small logs. The service streams instead (:meth:`entries`, :mod:`.scan`).

        Raises :class:`TamperError` naming the first row that does not decode at all.
        """
        with self.snapshot():
            return list(self.entries()), self.checkpoints()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state of the database: a read transaction (WAL lets the
        writer go on meanwhile; its commits become visible after). Without it, a commit between two
        batches of :meth:`entries`, or between the records and the checkpoints, could show a
        checkpoint whose records are not there yet, which verification would call a truncation."""
        if self._db.in_transaction:  # already inside one: it is the snapshot
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")  # nothing was written: ending the read is all it does

    def entries(self, start: int = 0, stop: int | None = None, batch: int = BATCH_ROWS) -> Iterator[LogEntry]:
        """The records whose row key is in ``[start, stop)``, in order, decoded one at a time.

        Read ``batch`` rows per query, each query going on from the last key seen, so a reader
        that pauses (the alert rebuild consuming the stream) holds no long-lived statement open.
        Raises :class:`TamperError` naming a row that does not decode, when the stream reaches it.
        """
        end = _LAST_SEQ if stop is None else stop
        query = "SELECT seq, record, chain_hash FROM records WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?"
        while start < end:
            fetched = 0
            # Only the cursor's own reads are translated: what the consumer does between rows
            # never raises inside this generator.
            with self.reading():
                for seq, blob, chain in self._db.execute(query, (start, end, batch)):
                    fetched += 1
                    start = seq + 1
                    yield LogEntry(_decode(seq, blob), bytes(chain))
            if fetched < batch:
                return

    def checkpoints(self, since: int = 0) -> list[Checkpoint]:
        """The stored checkpoints of tree size ``since`` and up (by default every one), in tree-size
        order (at most one per hundred records). Raises :class:`TamperError` naming the first row that
        does not decode."""
        with self.reading():
            rows = self._db.execute("SELECT tree_size, blob FROM checkpoints WHERE tree_size >= ? "
                                    "ORDER BY tree_size", (since,)).fetchall()
        return [_decode_checkpoint(size, blob) for size, blob in rows]

    def chain_hash_at(self, seq: int) -> bytes | None:
        """The chain hash stored with record ``seq`` (the record itself is not read), or None."""
        with self.reading():
            row = self._db.execute("SELECT chain_hash FROM records WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def max_seq(self) -> int:
        """The largest record key, -1 when there is none (an index lookup, unlike :meth:`size`)."""
        with self.reading():
            value = self._db.execute("SELECT max(seq) FROM records").fetchone()[0]
        return -1 if value is None else int(value)

    def anchor(self) -> bytes | None:
        """The saved verified anchor (:mod:`.anchor`), or None. Not judged here."""
        with self.reading():
            row = self._db.execute("SELECT blob FROM anchor WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def put_anchor(self, tree_size: int, blob: bytes) -> None:
        """Replace the saved anchor, durably (one transaction). :class:`StoreError` on failure."""
        try:
            self._db.execute("INSERT OR REPLACE INTO anchor (id, tree_size, blob) VALUES (1, ?, ?)",
                             (tree_size, blob))
        except sqlcipher3.Error as exc:
            raise StoreError(f"the audit database write failed ({type(exc).__name__})") from None

    def checkpoint_at(self, tree_size: int) -> Checkpoint | None:
        """The stored checkpoint of ``tree_size``, or None. Its signature is not checked here."""
        with self.reading():
            row = self._db.execute("SELECT tree_size, blob FROM checkpoints WHERE tree_size = ?",
                                   (tree_size,)).fetchone()
        return None if row is None else _decode_checkpoint(row[0], row[1])

    def tail(self, limit: int, event: str | None = None, actor: str | None = None,
             scan_limit: int = 100_000) -> list[Record]:
        """Up to ``limit`` latest records (oldest first) matching ``event`` and ``actor``.

        Records are filtered after decoding (no plaintext index columns to keep in sync); at most
        ``scan_limit`` rows are examined so a rare filter cannot make one call read the whole log.
        """
        found: list[Record] = []
        query = "SELECT seq, record FROM records ORDER BY seq DESC LIMIT ?"
        with self.reading():
            for seq, blob in self._db.execute(query, (scan_limit,)):
                record = _decode(seq, blob)
                if (event is None or record.event == event) and (actor is None or record.actor == actor):
                    found.append(record)
                    if len(found) >= limit:
                        break
        found.reverse()
        return found

    def size(self) -> int:
        """The number of record rows."""
        with self.reading():
            return int(self._db.execute("SELECT count(*) FROM records").fetchone()[0])


def _decode(seq: int, blob: bytes) -> Record:
    try:
        return decode_record(bytes(blob))
    except BadRequest as exc:
        raise TamperError(f"record {seq} is corrupt: {exc.message}", sequence=seq) from None


def _decode_checkpoint(size: int, blob: bytes) -> Checkpoint:
    try:
        return decode_checkpoint(bytes(blob))
    except BadRequest as exc:
        raise TamperError(f"the stored checkpoint at tree size {size} is corrupt: {exc.message}") from None


"""A service's own SQLCipher database under a keyvault purpose key, kept in step with rotations.

authn (accounts) and authz (roles and consent) each keep a database of their own that the storage
process can never read. Both need the same recipe, written once here:

- :class:`KeyedDatabase` opens a file with the raw 256-bit key (``PRAGMA key = "x'<hex>'"``: no
  KDF, the key is already uniform, so opening costs well under a millisecond), keeps temporary data
  in memory, WAL with ``synchronous = FULL`` (a commit is durable), creates the schema and makes the
  file 0600. A key that does not open it is a :class:`~shared.StateError` naming the file.
- :func:`open_current` opens it under the *current* key version: ``<stem>.version`` beside the file
  names the version it is under; after a rotation it is re-keyed and the new version recorded.
  A crash between the two is recovered the next time (the recorded version is tried, then the
  current one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlcipher3  # no stubs: pyproject.toml's mypy overrides ignore its imports

from ._crypto import wipe
from ._errors import StateError
from ._files import write_atomic

D = TypeVar("D", bound="KeyedDatabase")
#: ``fetch(purpose, version or None)`` -> (version, key): the service's keyvault call.
Fetch = Callable[[str, "int | None"], Awaitable[tuple[int, bytearray]]]


class KeyedDatabase:
    """One open database. Subclasses set ``SCHEMA`` (SQL run at every open, idempotent) and
    ``WHAT`` (how an operator calls it in messages)."""

    SCHEMA = ""
    WHAT = "database"

    def __init__(self, db: Any) -> None:
        self._db = db

    @classmethod
    def open(cls: type[D], path: Path, key: bytes | bytearray) -> D:
        """Open (creating) the database at ``path`` with ``key``; :class:`StateError` when the key
        does not open it or the file is damaged."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        try:
            # The hex form is an immutable str we cannot wipe; it lives only for this statement.
            db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
            db.execute("PRAGMA temp_store = MEMORY")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the key is checked here
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            db.executescript(cls.SCHEMA)
        except sqlcipher3.DatabaseError:
            db.close()
            raise StateError(f"{path}: the {cls.WHAT} does not open with its key from keyvault, or is "
                             "damaged; restore it from a backup (meshctl backup restore)") from None
        path.chmod(0o600)
        return cls(db)

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> Any:
        """The connection, for single-statement reads (every write goes through :meth:`transaction`)."""
        return self._db

    def rekey(self, key: bytes | bytearray) -> None:
        """Re-encrypt the whole database under ``key`` (after a rotation of its purpose)."""
        # The hex form is an immutable str we cannot wipe; it lives only for this statement.
        self._db.execute(f"PRAGMA rekey = \"x'{key.hex()}'\"")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception. Yields the connection."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _recorded_version(version_path: Path) -> int | None:
    try:
        return int(version_path.read_text("ascii").strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise StateError(f"{version_path}: unreadable; it names the key version the database beside it "
                         "is under") from None


async def open_current(cls: type[D], path: Path, purpose: str, fetch: Fetch) -> D:
    """Open ``path`` (a :class:`KeyedDatabase` subclass ``cls``) under the current ``purpose`` key,
    re-keying it first if it is still under an older version (see the module docstring)."""
    version_path = path.with_suffix(".version")
    current, current_key = await fetch(purpose, None)
    try:
        recorded = _recorded_version(version_path)
        if recorded is None or recorded == current or not path.exists():
            db = cls.open(path, current_key)
        else:
            _, old_key = await fetch(purpose, recorded)
            try:
                db = cls.open(path, old_key)
            except StateError:
                # A re-key finished but its version was not recorded: the current key opens it.
                db = cls.open(path, current_key)
            else:
                db.rekey(current_key)
            finally:
                wipe(old_key)
        write_atomic(version_path, f"{current}\n".encode())
        return db
    finally:
        wipe(current_key)


async def rekey_current(db: KeyedDatabase, path: Path, purpose: str, fetch: Fetch) -> None:
    """After a rotation of ``purpose``: re-encrypt the open ``db`` under the current key, then
    record the version (a crash in between is recovered by :func:`open_current`)."""
    version_path = path.with_suffix(".version")
    current, key = await fetch(purpose, None)
    try:
        if _recorded_version(version_path) != current:
            db.rekey(key)
            write_atomic(version_path, f"{current}\n".encode())
    finally:
        wipe(key)

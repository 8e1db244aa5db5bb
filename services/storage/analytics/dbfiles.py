"""The analytics files on disk: their names, and making, opening, re-encrypting and checking one.

Contract:

- A namespace file is ``<root>/<tag>.v<version>.duckdb`` (:data:`NAME_RE`; the tag comes from
  :func:`~.sandbox.file_name`, so the disk shows no namespace). It holds its namespace's label in
  ``mesh_meta.namespace`` (with ``copied_from``, the key version it was copied from, when rotation
  or import made it). Opening, re-encrypting and checking a file compare that label with the
  file's name: a file renamed or swapped onto another namespace's name is :class:`DamagedError`,
  never served.
- New files appear by rename only once complete, synced, and 0600 (:func:`publish_file`,
  :func:`copy_file`), so a crash never leaves half a file under a real name. A part left with a
  WAL was not complete and is not published.
- Locking: nothing here locks on its own account except as noted. :class:`~.store.AnalyticsStore`
  calls the per-file functions holding that file's slot (:mod:`.slots`), with its
  instance closed where a second instance must not open the file (an imported file comes from
  outside the store and has no slot). :func:`reencrypt` and :func:`copied_from` take the slot of
  the store file they write or read themselves, closing its instance first: nothing may keep
  serving a file being replaced.

Split out of the store (:mod:`.store`) (naming, opening, rotation and import copies, checks) and
:mod:`.sandbox` (the WAL, mode and publishing helpers).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from shared.files import fsync_path

from ..core.errors import DamagedError, StoreError
from ..core.keys import KeySet
from . import sandbox
from .slots import Slots

__all__ = ["NAME_RE", "check_file", "copied_from", "copy_file", "create_file", "durable", "namespace_files",
           "open_file", "private_file", "publish_file", "reencrypt", "remove_file", "resolve", "version_of", "wal"]

NAME_RE: Final = re.compile(r"([0-9a-f]{32})\.v([1-9][0-9]{0,9})\.duckdb")


# -- names ------------------------------------------------------------------------------


def namespace_files(root: Path, version: int | None) -> list[Path]:
    """Namespace files in ``root`` (of ``version``, or all), by name."""
    return sorted(p for p in root.iterdir() if (m := NAME_RE.fullmatch(p.name)) is not None
                  and (version is None or int(m.group(2)) == version))


def version_of(path: Path) -> int:
    """The key version in the name of namespace file ``path``."""
    m = NAME_RE.fullmatch(path.name)
    assert m is not None
    return int(m.group(2))


def resolve(root: Path, keys: KeySet, label: bytes) -> tuple[int, str, bool]:
    """The version and file name holding ``label``'s data (current version first), and whether
    it exists; a namespace with no file gets the current version's name."""
    order = [keys.current, *(v for v in reversed(keys.versions()) if v != keys.current)]
    for version in order:
        name = sandbox.file_name(keys.key(version), label, version)
        if (root / name).exists():
            return version, name, True
    return keys.current, sandbox.file_name(keys.key(keys.current), label, keys.current), False


# -- one namespace file -------------------------------------------------------------------


def create_file(extension: Path, path: Path, key: bytearray, label: bytes) -> None:
    """Make ``path``: a new file holding only ``label``, renamed into place once complete."""
    part = path.with_name(path.name + ".new")
    remove_file(part)
    con = sandbox.attach(extension, part, key)
    try:
        with sandbox.engine():
            con.execute("CREATE SCHEMA db.mesh_meta")
            con.execute("CREATE TABLE db.mesh_meta.namespace (label BLOB NOT NULL, copied_from BIGINT)")
            con.execute("INSERT INTO db.mesh_meta.namespace VALUES (?, NULL)", [label])
            con.execute("DETACH db")
    finally:
        con.close()
    publish_file(part, path)


def open_file(extension: Path, path: Path, key: bytearray, label: bytes) -> Any:
    """The confined instance serving ``path``, after checking the label inside it is ``label``."""
    con = sandbox.attach(extension, path, key)
    try:
        con.execute("USE db")
        if sandbox.read_label(con, "db") != label:
            raise DamagedError("an analytics file holds another namespace than its name says (moved or swapped)")
        sandbox.confine(con)
    except BaseException:
        con.close()
        raise
    private_file(path)
    return con


def reencrypt(slots: Slots, extension: Path, path: Path, key: bytearray, version: int, keys: KeySet,
              replace: bool) -> tuple[Path, bool]:
    """Copy namespace file ``path`` (under ``key`` of ``version``) to its name in ``slots.root`` under
    ``keys.current`` (``.rot`` until complete, then renamed); return that name and whether it was
    written (not when it exists and ``replace`` is false)."""
    new_key = keys.key()
    con = sandbox.attach(extension, path, key, "old", read_only=True)
    try:
        with sandbox.engine():
            label = sandbox.read_label(con, "old")
            if label is None or not hmac.compare_digest(sandbox.file_name(key, label, version), path.name):
                raise DamagedError(f"{path.name} holds another namespace than its name says: not copied")
            final = slots.root / sandbox.file_name(new_key, label, keys.current)
            if final.exists() and not replace:
                return final, False
            part = final.with_name(final.name + ".rot")
            remove_file(part)
            new_file_key = sandbox.sql_text(sandbox.file_key(new_key))
            con.execute(f"ATTACH {sandbox.sql_text(str(part))} AS new (ENCRYPTION_KEY {new_file_key})")
            con.execute("COPY FROM DATABASE old TO new")
            con.execute("UPDATE new.mesh_meta.namespace SET copied_from = ?", [version])
            con.execute("DETACH new")
    finally:
        con.close()
    with slots.hold(final.name) as slot:
        # An instance on a file being replaced closes first (the next call opens the new file), and a
        # stale WAL must not be replayed onto it.
        slots.shut(slot)
        wal(final).unlink(missing_ok=True)
        publish_file(part, final)
    return final, True


def copied_from(slots: Slots, extension: Path, path: Path, key: bytearray) -> int | None:
    """The key version ``path`` was copied from by rotation or import, or None if it was made afresh
    (read under the file's slot, its serving instance closed first)."""
    with slots.hold(path.name) as slot:
        slots.shut(slot)
        con = sandbox.attach(extension, path, key)
        try:
            with sandbox.engine():
                row = con.execute("SELECT copied_from FROM db.mesh_meta.namespace").fetchone()
        finally:
            con.close()
    return None if row is None else row[0]


def check_file(extension: Path, path: Path, key: bytearray) -> None:
    """Read all of ``path``: :class:`DamagedError` if its label does not match its name or a block
    fails its GCM tag or checksum."""
    con = sandbox.attach(extension, path, key)
    try:
        with sandbox.engine():
            label = sandbox.read_label(con, "db")
            if label is None or not hmac.compare_digest(sandbox.file_name(key, label, version_of(path)), path.name):
                raise DamagedError("holds another namespace than its name says (moved or swapped)")
            tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() "
                                 "WHERE database_name = 'db'").fetchall()
            # Hashing whole rows reads (so decrypts and checks) every column of every row.
            read_all = "SELECT count(*), bit_xor(hash(x)) FROM db.{}.{} AS x"  # quoted catalog names only
            for schema, table in tables:
                con.execute(read_all.format(sandbox.quote(schema), sandbox.quote(table))).fetchall()
    finally:
        con.close()


@contextlib.contextmanager
def durable(path: Path) -> Iterator[None]:
    """Around a commit to ``path``: a WAL file that appears gets mode 0600 and its directory entry synced.
    (DuckDB fsyncs the WAL itself at every commit, but not the directory that names it.)"""
    log_file = wal(path)
    existed = log_file.exists()
    yield
    if not existed and log_file.exists():
        private_file(log_file)
        fsync_path(path.parent)


# -- any database file ----------------------------------------------------------------------


def wal(path: Path) -> Path:
    """DuckDB's write-ahead log beside ``path``."""
    return path.with_name(path.name + ".wal")


def private_file(path: Path) -> None:
    """Mode 0600 (DuckDB creates files 0644 under the usual umask; the directory is 0700 regardless)."""
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, 0o600)


def remove_file(path: Path) -> None:
    """Delete a database file and its WAL."""
    path.unlink(missing_ok=True)
    wal(path).unlink(missing_ok=True)


def publish_file(part: Path, final: Path) -> None:
    """Rename the complete ``part`` to ``final``, durably; a leftover WAL means it was not complete."""
    if wal(part).exists():
        raise StoreError(f"{final.name}: the new analytics file was left with a WAL; not published")
    private_file(part)
    fsync_path(part)
    os.replace(part, final)
    fsync_path(final.parent)


def copy_file(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` (0600), appearing only once complete and synced."""
    part = target.with_name(target.name + ".part")
    shutil.copyfile(source, part)
    private_file(part)
    fsync_path(part)
    os.replace(part, target)
    return target

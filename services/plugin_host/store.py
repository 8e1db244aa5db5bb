"""plugin-host's own database: the installed plugins, their version floors and their logs, encrypted.

One SQLCipher file, ``<home>/data/plugin-host/plugins.db``, under the ``plugins`` purpose key from
keyvault (re-keyed when it rotates: :class:`shared.keeper.DatabaseKeeper`). It holds:

- ``plugins``: each installed plugin, the manifest it was installed with, its content hash, the
  grants the operator approved, whether it is enabled, and why it was disabled;
- ``floors``: the highest version of each plugin ever installed and its content hash. A row is
  never deleted (not by ``remove`` either): it is the rollback protection. An older version, or
  the same version with other content, is refused forever;
- ``logs``: what each plugin wrote to stdout and stderr, the last ``[plugins] log_lines`` lines
  per plugin (plugins may print a person's data: the lines are encrypted at rest like the rest).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.keeper import KeyedDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS plugins (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    publisher TEXT NOT NULL,
    publisher_fp TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    manifest TEXT NOT NULL,
    directory TEXT NOT NULL,
    approved TEXT NOT NULL,
    installed_at REAL NOT NULL,
    installed_by TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    disabled_reason TEXT
);
CREATE TABLE IF NOT EXISTS floors (
    name TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    installed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    at REAL NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_name ON logs (name, id);
"""
_COLUMNS = ("name, version, publisher, publisher_fp, content_hash, manifest, directory, approved, installed_at, "
            "installed_by, enabled, disabled_reason")


@dataclass(frozen=True, slots=True)
class Installed:
    """One installed plugin as recorded (``manifest``: the TOML text it was installed with)."""

    name: str
    version: str
    publisher: str
    publisher_fp: str
    content_hash: str
    manifest: str
    directory: str
    approved: tuple[str, ...]
    installed_at: float
    installed_by: str
    enabled: bool
    disabled_reason: str | None

    @classmethod
    def of_row(cls, row: Iterable[Any]) -> Installed:
        values = list(row)
        values[7] = tuple(json.loads(values[7]))
        values[10] = bool(values[10])
        return cls(*values)


@dataclass(frozen=True, slots=True)
class Floor:
    version: str
    content_hash: str


class PluginDB(KeyedDatabase):
    """The open database (:class:`shared.keeper.KeyedDatabase`: open, re-key, transactions)."""

    SCHEMA = SCHEMA
    WHAT = "plugin database"

    def plugins(self) -> list[Installed]:
        rows = self.connection.execute(f"SELECT {_COLUMNS} FROM plugins ORDER BY name")  # noqa: S608 - constant
        return [Installed.of_row(row) for row in rows]

    def plugin(self, name: str) -> Installed | None:
        row = self.connection.execute(f"SELECT {_COLUMNS} FROM plugins WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return None if row is None else Installed.of_row(row)

    def floor(self, name: str) -> Floor | None:
        row = self.connection.execute("SELECT version, content_hash FROM floors WHERE name = ?", (name,)).fetchone()
        return None if row is None else Floor(*row)

    def install(self, plugin: Installed, *, floor_raised: bool) -> None:
        """Record ``plugin`` (replacing an older version of it) and, when it is newer than every
        version before it, raise its floor, in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM plugins WHERE name = ?", (plugin.name,))
            db.execute(f"INSERT INTO plugins ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                       (plugin.name, plugin.version, plugin.publisher, plugin.publisher_fp, plugin.content_hash,
                        plugin.manifest, plugin.directory, json.dumps(list(plugin.approved)), plugin.installed_at,
                        plugin.installed_by, int(plugin.enabled), plugin.disabled_reason))
            if floor_raised:
                db.execute("INSERT INTO floors (name, version, content_hash, installed_at) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (name) DO UPDATE SET version = excluded.version, "
                           "content_hash = excluded.content_hash, installed_at = excluded.installed_at",
                           (plugin.name, plugin.version, plugin.content_hash, plugin.installed_at))

    def set_enabled(self, name: str, enabled: bool, reason: str | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE plugins SET enabled = ?, disabled_reason = ? WHERE name = ?",
                       (int(enabled), None if enabled else reason, name))

    def remove(self, name: str) -> None:
        """Forget the plugin and its logs; its floor stays (rollback protection)."""
        with self.transaction() as db:
            db.execute("DELETE FROM plugins WHERE name = ?", (name,))
            db.execute("DELETE FROM logs WHERE name = ?", (name,))

    def add_logs(self, lines: list[tuple[str, float, str, str]], keep: int) -> None:
        """Append ``(name, at, stream, line)`` rows and keep the last ``keep`` lines of each plugin named."""
        with self.transaction() as db:
            db.executemany("INSERT INTO logs (name, at, stream, line) VALUES (?, ?, ?, ?)", lines)
            for name in {row[0] for row in lines}:
                db.execute("DELETE FROM logs WHERE name = ? AND id <= (SELECT id FROM logs WHERE name = ? "
                           "ORDER BY id DESC LIMIT 1 OFFSET ?)", (name, name, keep))

    def logs(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The last ``limit`` lines of ``name``, oldest first."""
        rows = self.connection.execute("SELECT at, stream, line FROM logs WHERE name = ? ORDER BY id DESC LIMIT ?",
                                       (name, limit)).fetchall()
        return [{"at": at, "stream": stream, "line": line} for at, stream, line in reversed(rows)]

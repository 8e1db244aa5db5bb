"""authz's own database: role assignments and consent grants, encrypted at rest.

One SQLCipher file, ``<home>/data/authz/authz.db``, keyed with the ``authz`` purpose key from
keyvault and re-keyed when it rotates (:mod:`shared.keeper`). Why not storage's records: the
decisions guarding storage must not be writable by the storage process. Every change is one
transaction; times are wall-clock seconds passed in by the caller.

Role assignments made here add to the roles services declare in mesh.toml (``roles``); consent
grants are never deleted, only revoked or left to expire, so ``meshctl consent list --all`` can
show what was allowed when.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from shared import Conflict, NotFound
from shared.keeper import KeyedDatabase

from .grants import Grant

SCHEMA = """
CREATE TABLE IF NOT EXISTS roles (
    principal TEXT NOT NULL,
    role TEXT NOT NULL,
    assigned_by TEXT NOT NULL,
    assigned_at REAL NOT NULL,
    PRIMARY KEY (principal, role)
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    grantee TEXT NOT NULL,
    categories TEXT NOT NULL,
    actions TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    granted_by TEXT NOT NULL,
    revoked REAL,
    revoked_by TEXT
);
CREATE INDEX IF NOT EXISTS grants_by_owner ON grants(owner);
"""
_COLUMNS = "id, owner, grantee, categories, actions, purpose, granted_at, expires_at, granted_by, revoked"

_SELECT = f"SELECT {_COLUMNS} FROM grants"  # noqa: S608 - constant text: no caller's value is ever spliced
#: The only listings there are, by (owner given, live only): SQL text never comes from a caller.
_LISTINGS = {
    (False, False): _SELECT + " ORDER BY granted_at, id",
    (True, False): _SELECT + " WHERE owner = ? ORDER BY granted_at, id",
    (False, True): _SELECT + " WHERE revoked IS NULL AND expires_at > ? ORDER BY granted_at, id",
    (True, True): _SELECT + " WHERE owner = ? AND revoked IS NULL AND expires_at > ? ORDER BY granted_at, id",
}


def _grant(row: Any) -> Grant:
    return Grant(row[0], row[1], row[2], tuple(json.loads(row[3])), tuple(json.loads(row[4])), row[5], row[6],
                 row[7], row[8], row[9])


class AuthzDB(KeyedDatabase):
    """The open database (:class:`shared.keeper.KeyedDatabase`: open, re-key, transactions)."""

    SCHEMA = SCHEMA
    WHAT = "authz database"

    # -- roles --------------------------------------------------------------------------------

    def roles(self) -> dict[str, list[tuple[str, str, float]]]:
        """Every assignment: principal -> [(role, assigned_by, assigned_at)]."""
        found: dict[str, list[tuple[str, str, float]]] = {}
        for principal, role, by, at in self.connection.execute(
                "SELECT principal, role, assigned_by, assigned_at FROM roles ORDER BY principal, role"):
            found.setdefault(principal, []).append((role, by, at))
        return found

    def assign(self, principal: str, role: str, by: str, now: float) -> None:
        """Give ``principal`` ``role``; :class:`Conflict` when it holds it already."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM roles WHERE principal = ? AND role = ?", (principal, role)).fetchone():
                raise Conflict(f"{principal} holds the role {role} already")
            db.execute("INSERT INTO roles (principal, role, assigned_by, assigned_at) VALUES (?, ?, ?, ?)",
                       (principal, role, by, now))

    def unassign(self, principal: str, role: str) -> None:
        """Take ``role`` from ``principal``; :class:`NotFound` when it was not assigned here."""
        with self.transaction() as db:
            if db.execute("DELETE FROM roles WHERE principal = ? AND role = ?", (principal, role)).rowcount == 0:
                raise NotFound(f"{principal} was not assigned the role {role} (meshctl roles list shows "
                               "what is assigned)")

    # -- consent grants -----------------------------------------------------------------------

    def add_grant(self, owner: str, grantee: str, categories: tuple[str, ...], actions: tuple[str, ...],
                  purpose: str, now: float, expires_at: float, granted_by: str) -> Grant:
        grant = Grant("g_" + secrets.token_hex(8), owner, grantee, categories, actions, purpose, now, expires_at,
                      granted_by)
        with self.transaction() as db:
            db.execute("INSERT INTO grants (id, owner, grantee, categories, actions, purpose, granted_at, expires_at, "
                       "granted_by, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                       (grant.id, owner, grantee, json.dumps(list(categories)), json.dumps(list(actions)), purpose,
                        now, expires_at, granted_by))
        return grant

    def grant(self, grant_id: str) -> Grant | None:
        row = self.connection.execute(_SELECT + " WHERE id = ?", (grant_id,)).fetchone()
        return None if row is None else _grant(row)

    def grants(self, owner: str | None = None, *, live_at: float | None = None) -> list[Grant]:
        """Grants, oldest first: of ``owner`` (every owner when None), only those live at ``live_at``."""
        params = [p for p in (owner, live_at) if p is not None]
        sql = _LISTINGS[(owner is not None, live_at is not None)]
        return [_grant(row) for row in self.connection.execute(sql, params)]

    def revoke(self, grant_id: str, by: str, now: float) -> Grant:
        """Revoke a grant in force; :class:`NotFound` for an unknown one, :class:`Conflict` when it
        was revoked already."""
        with self.transaction() as db:
            row = db.execute(_SELECT + " WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                raise NotFound("no such consent grant (meshctl consent list shows them)")
            if row[9] is not None:
                raise Conflict("this consent grant is revoked already")
            db.execute("UPDATE grants SET revoked = ?, revoked_by = ? WHERE id = ?", (now, by, grant_id))
        return _grant((*row[:9], now))

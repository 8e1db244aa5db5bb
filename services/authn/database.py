"""authn's own database: accounts, sessions, refresh-token digests and known devices.

One SQLCipher file, ``<home>/data/authn/accounts.db``, keyed with the raw 256-bit ``accounts`` key
from keyvault (``PRAGMA key = "x'<hex>'"``, no KDF: the key is already uniform). Its WAL and
temporary data are encrypted or kept in memory like the main file. Why an own database rather
than storage's records: authn's data (password hashes, session families) must not be readable by
the storage process, which the threat model treats as a separate compromise; and a login must be
one transaction (a kill -9 leaves the state before it or after it, never half an account).

Contracts: every method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any
exception); times are wall-clock seconds passed in by the caller (the clock is injected); nothing
secret is ever stored in the clear: password hashes are Argon2id strings, refresh tokens are kept
as keyed digests only. The methods are synchronous and short; the service calls them on its loop.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from shared import Conflict, NotFound
from shared.keeper import KeyedDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    skeleton TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    peer TEXT NOT NULL,
    peer_fp TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    auth_time REAL NOT NULL,
    amr TEXT NOT NULL,
    audience TEXT NOT NULL,
    ended REAL,
    end_reason TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user_id);
CREATE TABLE IF NOT EXISTS refresh (
    digest BLOB PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    issued REAL NOT NULL,
    spent REAL
);
CREATE INDEX IF NOT EXISTS refresh_by_session ON refresh(session_id);
CREATE TABLE IF NOT EXISTS totp (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    confirmed INTEGER NOT NULL,
    last_step INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recovery (
    digest BLOB PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    used REAL
);
CREATE TABLE IF NOT EXISTS passkeys (
    credential_id BLOB PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    public_key BLOB NOT NULL,
    sign_count INTEGER NOT NULL,
    transports TEXT NOT NULL,
    aaguid TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL
);
CREATE INDEX IF NOT EXISTS passkeys_by_user ON passkeys(user_id);
CREATE TABLE IF NOT EXISTS devices (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    peer_fp TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (user_id, peer_fp)
);
"""


@dataclass(frozen=True, slots=True)
class User:
    """An account. ``id`` is the token subject: random, never reused, never the username."""

    id: str
    username: str
    password_hash: str
    disabled: bool
    created: float
    updated: float


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in device: the peer identity and key fingerprint it is bound to, and its times."""

    id: str
    user_id: str
    peer: str
    peer_fp: str
    created: float
    last_used: float
    auth_time: float
    amr: tuple[str, ...]
    audience: str
    ended: float | None
    end_reason: str | None


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


def _session(row: Any) -> Session:
    return Session(row[0], row[1], row[2], row[3], row[4], row[5], row[6], tuple(json.loads(row[7])), row[8], row[9],
                   row[10])


#: The only clauses sessions are ended by: SQL text never comes from a caller.
_FILTERS = {"session": "id = ?", "user": "user_id = ?", "device": "peer_fp = ?"}


class AccountsDB(KeyedDatabase):
    """The open database (:class:`shared.keeper.KeyedDatabase`: open, re-key, transactions)."""

    SCHEMA = SCHEMA
    WHAT = "accounts database"

    # -- users ----------------------------------------------------------------------------------

    def add_user(self, username: str, skeleton: str, password_hash: str, now: float) -> User:
        """A new account; :class:`Conflict` when a visually equal name exists."""
        user_id = secrets.token_hex(16)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE skeleton = ?", (skeleton,)).fetchone():
                raise Conflict("a user with this name, or one that looks the same, already exists")
            db.execute("INSERT INTO users (id, username, skeleton, password_hash, disabled, created, updated) "
                       "VALUES (?, ?, ?, ?, 0, ?, ?)", (user_id, username, skeleton, password_hash, now, now))
        return User(user_id, username, password_hash, False, now, now)

    def user_by_skeleton(self, skeleton: str) -> User | None:
        row = self._db.execute("SELECT id, username, password_hash, disabled, created, updated FROM users "
                               "WHERE skeleton = ?", (skeleton,)).fetchone()
        return None if row is None else _user(row)

    def user_by_id(self, user_id: str) -> User | None:
        row = self._db.execute("SELECT id, username, password_hash, disabled, created, updated FROM users "
                               "WHERE id = ?", (user_id,)).fetchone()
        return None if row is None else _user(row)

    def users(self) -> list[User]:
        rows = self._db.execute("SELECT id, username, password_hash, disabled, created, updated "
                                "FROM users ORDER BY username")
        return [_user(r) for r in rows]

    def set_password(self, user_id: str, password_hash: str, now: float, *, end_sessions: str | None) -> int:
        """Replace the hash; with ``end_sessions`` (a reason) end every open session of the user in
        the same transaction. The number of sessions ended."""
        with self.transaction() as db:
            if db.execute("UPDATE users SET password_hash = ?, updated = ? WHERE id = ?",
                          (password_hash, now, user_id)).rowcount != 1:
                raise NotFound("no such user")
            return self._end_where(db, _FILTERS["user"], (user_id,), now, end_sessions) if end_sessions else 0

    def set_disabled(self, user_id: str, disabled: bool, now: float) -> int:
        """Disable (ending every session at once) or enable; the number of sessions ended."""
        with self.transaction() as db:
            if db.execute("UPDATE users SET disabled = ?, updated = ? WHERE id = ?",
                          (int(disabled), now, user_id)).rowcount != 1:
                raise NotFound("no such user")
            return self._end_where(db, _FILTERS["user"], (user_id,), now, "account disabled") if disabled else 0

    def delete_user(self, user_id: str) -> list[str]:
        """Delete the account with its sessions, refresh digests and devices; the session ids that
        were open (so their ends can be announced)."""
        with self.transaction() as db:
            open_ids = [r[0] for r in db.execute("SELECT id FROM sessions WHERE user_id = ? AND ended IS NULL",
                                                 (user_id,))]
            if db.execute("DELETE FROM users WHERE id = ?", (user_id,)).rowcount != 1:
                raise NotFound("no such user")
        return open_ids

    # -- sessions and refresh tokens ------------------------------------------------------------

    def start_session(self, user_id: str, peer: str, peer_fp: str, amr: list[str], audience: str, digest: bytes,
                      now: float) -> Session:
        """A new session with its first refresh digest, and the device remembered as known."""
        session_id = secrets.token_hex(16)
        with self.transaction() as db:
            db.execute("INSERT INTO sessions "
                       "(id, user_id, peer, peer_fp, created, last_used, auth_time, amr, audience, ended, end_reason) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                       (session_id, user_id, peer, peer_fp, now, now, now, json.dumps(amr), audience))
            db.execute("INSERT INTO refresh (digest, session_id, issued, spent) VALUES (?, ?, ?, NULL)",
                       (digest, session_id, now))
            db.execute("INSERT OR IGNORE INTO devices (user_id, peer_fp, first_seen) VALUES (?, ?, ?)",
                       (user_id, peer_fp, now))
        return Session(session_id, user_id, peer, peer_fp, now, now, now, tuple(amr), audience, None, None)

    def session_and_user(self, session_id: str) -> tuple[Session, User] | tuple[None, None]:
        """A session and its account in one query (the verification path), or ``(None, None)``."""
        row = self._db.execute(
            "SELECT s.id, s.user_id, s.peer, s.peer_fp, s.created, s.last_used, s.auth_time, s.amr, s.audience, "
            "s.ended, s.end_reason, u.id, u.username, u.password_hash, u.disabled, u.created, u.updated "
            "FROM sessions AS s JOIN users AS u ON u.id = s.user_id WHERE s.id = ?", (session_id,)).fetchone()
        return (None, None) if row is None else (_session(row[:11]), _user(row[11:]))

    def session(self, session_id: str) -> Session | None:
        row = self._db.execute("SELECT id, user_id, peer, peer_fp, created, last_used, auth_time, amr, audience, "
                               "ended, end_reason FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return None if row is None else _session(row)

    def sessions(self, user_id: str | None = None) -> list[Session]:
        """The open sessions, of one user or of all, oldest first."""
        if user_id is None:
            rows = self._db.execute("SELECT id, user_id, peer, peer_fp, created, last_used, auth_time, amr, "
                                    "audience, ended, end_reason FROM sessions "
                                    "WHERE ended IS NULL ORDER BY created")
        else:
            rows = self._db.execute("SELECT id, user_id, peer, peer_fp, created, last_used, auth_time, amr, "
                                    "audience, ended, end_reason FROM sessions "
                                    "WHERE ended IS NULL AND user_id = ? ORDER BY created", (user_id,))
        return [_session(r) for r in rows]

    def reauthenticated(self, session_id: str, amr: list[str], now: float) -> None:
        """The person signed in again within the session (step-up): its ``auth_time`` and ``amr``."""
        with self.transaction() as db:
            db.execute("UPDATE sessions SET auth_time = ?, amr = ?, last_used = ? WHERE id = ? AND ended IS NULL",
                       (now, json.dumps(amr), now, session_id))

    def touch(self, session_id: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sessions SET last_used = ? WHERE id = ? AND ended IS NULL", (now, session_id))

    def refresh_state(self, digest: bytes) -> tuple[Session, bool] | None:
        """The session a refresh digest belongs to and whether it was spent; None if never issued."""
        row = self._db.execute("SELECT session_id, spent FROM refresh WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return None
        session = self.session(row[0])
        return None if session is None else (session, row[1] is not None)

    def rotate_refresh(self, old: bytes, new: bytes, now: float) -> bool:
        """Spend the refresh digest ``old`` and issue ``new`` in the same session, in one transaction.
        False (and nothing changed) when ``old`` is unknown or already spent: the caller checked it
        with :meth:`refresh_state`, so that means another refresh won the race."""
        with self.transaction() as db:
            row = db.execute("SELECT session_id FROM refresh WHERE digest = ? AND spent IS NULL", (old,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE refresh SET spent = ? WHERE digest = ?", (now, old))
            db.execute("INSERT INTO refresh (digest, session_id, issued, spent) VALUES (?, ?, ?, NULL)",
                       (new, row[0], now))
            db.execute("UPDATE sessions SET last_used = ? WHERE id = ?", (now, row[0]))
        return True

    def end_sessions(self, now: float, reason: str, *, session_id: str | None = None, user_id: str | None = None,
                     peer_fp: str | None = None) -> list[str]:
        """End the open sessions matching every filter given (at least one); their ids."""
        given = [(_FILTERS[name], value) for name, value in (("session", session_id), ("user", user_id),
                                                              ("device", peer_fp)) if value is not None]
        if not given:
            raise ValueError("end_sessions needs a filter")
        where = " AND ".join(clause for clause, _ in given)
        args = tuple(value for _, value in given)
        with self.transaction() as db:
            ids = [r[0] for r in db.execute(
                f"SELECT id FROM sessions WHERE {where} AND ended IS NULL", args)]  # noqa: S608 - _FILTERS only
            self._end_where(db, where, args, now, reason)
        return ids

    @staticmethod
    def _end_where(db: Any, where: str, args: tuple[Any, ...], now: float, reason: str) -> int:
        # Ending a session spends its refresh digests too: none of them can be used again.
        # ``where`` is made of _FILTERS clauses only (never caller text); values are bound.
        db.execute("UPDATE refresh SET spent = coalesce(spent, ?) WHERE session_id IN "  # noqa: S608
                   f"(SELECT id FROM sessions WHERE {where} AND ended IS NULL)", (now, *args))
        ended: int = db.execute(
            f"UPDATE sessions SET ended = ?, end_reason = ? WHERE {where} AND ended IS NULL",  # noqa: S608
            (now, reason, *args)).rowcount
        return ended

    def ended_since(self, since: float) -> list[str]:
        """The sessions ended at ``since`` or later (what a local verifier must refuse)."""
        return [r[0] for r in self._db.execute("SELECT id FROM sessions WHERE ended >= ? ORDER BY ended", (since,))]

    def known_device(self, user_id: str, peer_fp: str) -> bool:
        """Whether the key ``peer_fp`` has signed in to this account before."""
        return self._db.execute("SELECT 1 FROM devices WHERE user_id = ? AND peer_fp = ?",
                                (user_id, peer_fp)).fetchone() is not None

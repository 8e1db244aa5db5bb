"""authn's second-factor tables: TOTP secrets and recovery-code digests, in the accounts database.

Each method is one transaction on :class:`~.database.AccountsDB`'s connection. A TOTP secret is
pending until a first valid code confirms it; ``last_step`` is the last time step whose code was
accepted, raised atomically so a code cannot be used twice even by two logins racing.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import Conflict

from .database import AccountsDB


@dataclass(frozen=True, slots=True)
class Totp:
    secret: str
    confirmed: bool
    last_step: int


class MfaStore:
    def __init__(self, db: AccountsDB) -> None:
        self.db = db

    def totp(self, user_id: str) -> Totp | None:
        row = self.db.connection.execute("SELECT secret, confirmed, last_step FROM totp WHERE user_id = ?",
                                         (user_id,)).fetchone()
        return None if row is None else Totp(row[0], bool(row[1]), row[2])

    def begin_totp(self, user_id: str, secret: str, now: float) -> None:
        """A new pending secret (replacing a pending one); ``CONFLICT`` when one is confirmed."""
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM totp WHERE user_id = ? AND confirmed = 1", (user_id,)).fetchone():
                raise Conflict("TOTP is already enrolled: turn it off first (meshctl users totp-off NAME)")
            db.execute("INSERT OR REPLACE INTO totp (user_id, secret, confirmed, last_step, created) "
                       "VALUES (?, ?, 0, -1, ?)", (user_id, secret, now))

    def confirm_totp(self, user_id: str, step: int, recovery: list[bytes]) -> None:
        """Confirm the pending secret with the step of its first code, and replace the recovery codes."""
        with self.db.transaction() as db:
            if db.execute("UPDATE totp SET confirmed = 1, last_step = ? WHERE user_id = ? AND confirmed = 0",
                          (step, user_id)).rowcount != 1:
                raise Conflict("no TOTP enrolment is waiting for a first code: start one (meshctl users totp NAME)")
            db.execute("DELETE FROM recovery WHERE user_id = ?", (user_id,))
            db.executemany("INSERT INTO recovery (digest, user_id, used) VALUES (?, ?, NULL)",
                           [(digest, user_id) for digest in recovery])

    def use_step(self, user_id: str, step: int) -> bool:
        """Accept the code of ``step`` if no code of that step or a later one was accepted before."""
        with self.db.transaction() as db:
            return bool(db.execute("UPDATE totp SET last_step = ? WHERE user_id = ? AND confirmed = 1 "
                                   "AND last_step < ?", (step, user_id, step)).rowcount == 1)

    def use_recovery(self, user_id: str, digest: bytes, now: float) -> bool:
        """Spend a recovery code of this user; False when it is not one, or was spent."""
        with self.db.transaction() as db:
            return bool(db.execute("UPDATE recovery SET used = ? WHERE digest = ? AND user_id = ? AND used IS NULL",
                                   (now, digest, user_id)).rowcount == 1)

    def recovery_left(self, user_id: str) -> int:
        row = self.db.connection.execute("SELECT count(*) FROM recovery WHERE user_id = ? AND used IS NULL",
                                         (user_id,)).fetchone()
        return int(row[0])

    def disable(self, user_id: str) -> bool:
        """Remove TOTP and the recovery codes; whether there was anything to remove."""
        with self.db.transaction() as db:
            removed = db.execute("DELETE FROM totp WHERE user_id = ?", (user_id,)).rowcount
            db.execute("DELETE FROM recovery WHERE user_id = ?", (user_id,))
        return bool(removed)

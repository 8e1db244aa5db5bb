"""authn's passkeys table: each credential's public key, signature counter and owner.

A credential id is unique across every account (a second registration of the same id is refused),
and its counter only ever rises: :meth:`PasskeyStore.used` writes the count a verified login
returned, in the same transaction as checking it still rises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared import Conflict

from .database import AccountsDB
from .passkeys import StoredCredential


@dataclass(frozen=True, slots=True)
class Passkey:
    user_id: str
    credential: StoredCredential
    created: float
    last_used: float | None


class PasskeyStore:
    def __init__(self, db: AccountsDB) -> None:
        self.db = db

    def add(self, user_id: str, credential: StoredCredential, now: float) -> None:
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM passkeys WHERE credential_id = ?", (credential.credential_id,)).fetchone():
                raise Conflict("this passkey is registered already")
            db.execute("INSERT INTO passkeys (credential_id, user_id, public_key, sign_count, transports, aaguid, "
                       "created, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                       (credential.credential_id, user_id, credential.public_key, credential.sign_count,
                        json.dumps(list(credential.transports)), credential.aaguid, now))

    def get(self, credential_id: bytes) -> Passkey | None:
        row = self.db.connection.execute(
            "SELECT credential_id, user_id, public_key, sign_count, transports, aaguid, created, last_used "
            "FROM passkeys WHERE credential_id = ?", (credential_id,)).fetchone()
        return None if row is None else _passkey(row)

    def of_user(self, user_id: str) -> list[Passkey]:
        rows = self.db.connection.execute(
            "SELECT credential_id, user_id, public_key, sign_count, transports, aaguid, created, last_used "
            "FROM passkeys WHERE user_id = ? ORDER BY created", (user_id,))
        return [_passkey(r) for r in rows]

    def used(self, credential_id: bytes, sign_count: int, now: float) -> bool:
        """Record a verified login's counter; False when another login got a higher one in between."""
        with self.db.transaction() as db:
            return bool(db.execute("UPDATE passkeys SET sign_count = ?, last_used = ? WHERE credential_id = ? "
                                   "AND (sign_count < ? OR (sign_count = 0 AND ? = 0))",
                                   (sign_count, now, credential_id, sign_count, sign_count)).rowcount == 1)

    def remove(self, user_id: str, credential_id: bytes) -> bool:
        with self.db.transaction() as db:
            return bool(db.execute("DELETE FROM passkeys WHERE credential_id = ? AND user_id = ?",
                                   (credential_id, user_id)).rowcount == 1)


def _passkey(row: Any) -> Passkey:
    credential_id, user_id, public_key, sign_count, transports, aaguid, created, last_used = row
    credential = StoredCredential(bytes(credential_id), bytes(public_key), int(sign_count),
                                  tuple(json.loads(transports)), str(aaguid))
    return Passkey(str(user_id), credential, float(created), None if last_used is None else float(last_used))

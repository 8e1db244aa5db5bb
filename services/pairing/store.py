"""pairing's own database: the devices it paired, encrypted at rest.

One SQLCipher file, ``<home>/data/pairing/pairing.db``, under the ``pairing`` purpose key from
keyvault (re-keyed when it rotates: :class:`shared.keeper.DatabaseKeeper`). The broker's allow-list
is the truth about which keys may connect; this is what the operator needs beside it: the label a
device is shown by, when and from where it paired, the client version it reported, when it was last
seen, and when and by whom it was revoked. A revoked device stays listed (``--all``) so the record
of what was once allowed is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import BadRequest, NotFound
from shared.keeper import KeyedDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    identity TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    paired_at REAL NOT NULL,
    paired_from TEXT NOT NULL,
    client_version TEXT NOT NULL,
    window TEXT NOT NULL,
    last_seen REAL,
    last_address TEXT,
    revoked_at REAL,
    revoked_by TEXT
);
"""
_COLUMNS = ("identity, label, fingerprint, public_key, paired_at, paired_from, client_version, window, "
            "last_seen, last_address, revoked_at, revoked_by")
_SELECT = f"SELECT {_COLUMNS} FROM devices"  # noqa: S608 - constant text: no caller's value is spliced


@dataclass(frozen=True, slots=True)
class Device:
    identity: str
    label: str
    fingerprint: str
    public_key: str
    paired_at: float
    paired_from: str
    client_version: str
    window: str
    last_seen: float | None
    last_address: str | None
    revoked_at: float | None
    revoked_by: str | None

    def view(self) -> dict[str, Any]:
        return {"name": self.label, "identity": self.identity, "fingerprint": self.fingerprint,
                "public_key": self.public_key, "paired_at": self.paired_at, "paired_from": self.paired_from,
                "client_version": self.client_version, "last_seen": self.last_seen,
                "address": self.last_address, "trust": "paired" if self.revoked_at is None else "revoked",
                "revoked_at": self.revoked_at, "revoked_by": self.revoked_by}


class PairingDB(KeyedDatabase):
    """The open database (:class:`shared.keeper.KeyedDatabase`: open, re-key, transactions)."""

    SCHEMA = SCHEMA
    WHAT = "pairing database"

    def add(self, device: Device) -> None:
        with self.transaction() as db:
            db.execute(f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                       (device.identity, device.label, device.fingerprint, device.public_key, device.paired_at,
                        device.paired_from, device.client_version, device.window, device.last_seen,
                        device.last_address, device.revoked_at, device.revoked_by))

    def devices(self, *, revoked: bool = False) -> list[Device]:
        """The paired devices, by label; with ``revoked``, the revoked ones too."""
        sql = _SELECT + ("" if revoked else " WHERE revoked_at IS NULL") + " ORDER BY label, identity"
        return [Device(*row) for row in self.connection.execute(sql)]

    def identities(self) -> set[str]:
        """Every identity ever given (a revoked device's identity is never given again)."""
        return {row[0] for row in self.connection.execute("SELECT identity FROM devices")}

    def find(self, ref: str) -> Device:
        """A device by label, identity, or fingerprint (a prefix of 8+ hex digits); a live device is
        preferred over a revoked one of the same label. :class:`NotFound` / :class:`BadRequest`."""
        ref = ref.strip()
        every = self.devices(revoked=True)
        for match in ([d for d in every if d.identity == ref], [d for d in every if d.label == ref]):
            live = [d for d in match if d.revoked_at is None]
            if len(live) == 1 or (not live and len(match) == 1):
                return live[0] if live else match[0]
            if len(live) > 1 or len(match) > 1:
                raise BadRequest("more than one device has that name; give its fingerprint (meshctl devices list)")
        lowered = ref.lower()
        if len(lowered) >= 8 and all(c in "0123456789abcdef" for c in lowered):
            hits = [d for d in every if d.fingerprint.startswith(lowered)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise BadRequest("fingerprint prefix is ambiguous; give more digits")
        raise NotFound("no paired device by that name or fingerprint (meshctl devices list --all)")

    def rename(self, identity: str, label: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE devices SET label = ? WHERE identity = ?", (label, identity))

    def seen(self, identity: str, when: float, address: str) -> None:
        """Remember a later sighting (an earlier one never overwrites a later one)."""
        with self.transaction() as db:
            db.execute("UPDATE devices SET last_seen = ?, last_address = ? WHERE identity = ? "
                       "AND (last_seen IS NULL OR last_seen < ?)", (when, address, identity, when))

    def revoke(self, identity: str, by: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE devices SET revoked_at = ?, revoked_by = ? WHERE identity = ? AND revoked_at IS NULL",
                       (now, by, identity))

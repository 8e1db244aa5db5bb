"""The broker's certificate store: the allow-list and the keys waiting for an operator.

Layout under ``<home>/certs`` (salt-key style)::

    allowed/<name>.key      public certificates the broker admits
    revoked/<fingerprint>.key   certificates revoked by an operator (unrevoke moves one back)
    pending/<fingerprint>.json  unknown keys that tried to connect
    rejected/<fingerprint>.json unknown keys an operator refused

Every reload builds the allow-list from scratch, so a key that is not
positively loaded from ``allowed/`` is never admitted: a removed file, a
corrupt file (reported and skipped) and anything also present in
``revoked/`` all leave the key out. Two allowed certificates claiming the
same name are both refused, so a name always means one key.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import zmq.utils.z85

from shared import BadRequest, Certificate, CertificateError, Conflict, NotFound
from shared import certs as certlib

from . import certviews
from .certviews import AllowList

__all__ = ["STATES", "AllowList", "CertStore", "PendingKey"]

STATES = ("allowed", "revoked", "pending", "rejected")


@dataclass(slots=True)
class PendingKey:
    public_key: bytes
    address: str
    first_seen: float
    last_seen: float
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"public_key": self.public_key.decode(), "address": self.address,
                "first_seen": self.first_seen, "last_seen": self.last_seen, "attempts": self.attempts}


class CertStore:
    """Loads, reloads and changes the allow-list. Not thread-safe: the broker loop owns it;
    the ZAP thread only reads :attr:`snapshot`, which is replaced atomically."""

    def __init__(self, root: Path, pending_max: int, per_address_per_minute: int) -> None:
        self.root = root
        self.pending_max = pending_max
        self.per_address_per_minute = per_address_per_minute
        for state in STATES:
            (root / state).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshot = AllowList()
        self.problems: list[tuple[str, str]] = []
        self.pending: dict[bytes, PendingKey] = {}
        self.rejected: set[bytes] = set()
        self.revoked: dict[bytes, Certificate] = {}
        self.pending_dropped = 0
        self.pending_throttled = 0
        self._recent: dict[str, collections.deque[float]] = {}
        self._signature: tuple[tuple[str, int, int], ...] = ()

    # -- loading ----------------------------------------------------------

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        for state in ("allowed", "revoked", "pending", "rejected"):
            directory = self.root / state
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                continue
            for name in names:
                try:
                    info = os.stat(directory / name, follow_symlinks=False)
                except OSError:
                    continue
                entries.append((f"{state}/{name}", info.st_mtime_ns, info.st_size))
        return tuple(entries)

    def changed(self) -> bool:
        """True if any file in the store was added, removed or modified since the last reload."""
        return self._scan() != self._signature

    def reload(self) -> list[tuple[str, str]]:
        """Rebuild everything from disk; return the (file, problem) pairs that were skipped."""
        self._signature = self._scan()
        problems: list[tuple[str, str]] = []
        revoked: dict[bytes, Certificate] = {}
        for path in sorted((self.root / "revoked").glob("*.key")):
            try:
                cert = certlib.load_certificate(path)
            except CertificateError as exc:
                problems.append((f"revoked/{path.name}", exc.message))
                continue
            revoked[cert.public_key] = cert
        loaded: dict[bytes, Certificate] = {}
        names: dict[str, list[bytes]] = collections.defaultdict(list)
        for path in sorted((self.root / "allowed").iterdir()):
            if not path.name.endswith(".key"):
                problems.append((f"allowed/{path.name}", "not a .key certificate file"))
                continue
            try:
                cert = certlib.load_certificate(path)
            except CertificateError as exc:
                problems.append((f"allowed/{path.name}", exc.message))
                continue
            if cert.public_key in revoked:
                problems.append((f"allowed/{path.name}", "key is revoked"))
                continue
            if cert.public_key in loaded and loaded[cert.public_key] != cert:
                problems.append((f"allowed/{path.name}", "same key listed with another name or role"))
                names[cert.name].append(cert.public_key)
                continue
            loaded[cert.public_key] = cert
            if cert.public_key not in names[cert.name]:
                names[cert.name].append(cert.public_key)
        for name, keys in names.items():
            if len(keys) > 1:
                problems.append((name, "name is claimed by more than one key; all refused"))
                for key in keys:
                    loaded.pop(key, None)
        self.revoked = revoked
        self.pending = self._load_json("pending")
        self.rejected = set(self._load_json("rejected"))
        self._publish(loaded)
        self.problems = problems
        return problems

    def _load_json(self, state: str) -> dict[bytes, PendingKey]:
        out: dict[bytes, PendingKey] = {}
        for path in sorted((self.root / state).glob("*.json")):
            try:
                data = json.loads(path.read_text("utf-8"))
                key = certlib.check_public_key(data["public_key"])
                out[key] = PendingKey(key, str(data.get("address", "")), float(data["first_seen"]),
                                      float(data["last_seen"]), int(data.get("attempts", 1)))
            except (OSError, ValueError, KeyError, TypeError, CertificateError):
                continue
        return out

    def _publish(self, loaded: dict[bytes, Certificate]) -> None:
        self.snapshot = AllowList(
            by_raw=MappingProxyType({zmq.utils.z85.decode(k): c for k, c in loaded.items()}),
            by_z85=MappingProxyType(dict(loaded)),
            by_name=MappingProxyType({c.name: c for c in loaded.values()}),
            by_text=MappingProxyType({k.decode(): c for k, c in loaded.items()}),
        )

    # -- unknown keys -----------------------------------------------------

    def record_unknown(self, raw: bytes, address: str, now: float) -> bool:
        """Note a refused unknown key as pending; True if it is newly pending.

        Deduplicated by key, bounded by ``pending_max``, and throttled per
        source address so one address cannot fill the list.
        """
        key = zmq.utils.z85.encode(raw)
        if key in self.snapshot.by_z85 or key in self.rejected or key in self.revoked:
            return False
        entry = self.pending.get(key)
        if entry is not None:
            entry.attempts += 1
            entry.last_seen = now
            return False
        recent = self._recent.setdefault(address, collections.deque())
        while recent and recent[0] < now - 60:
            recent.popleft()
        if len(recent) >= self.per_address_per_minute:
            self.pending_throttled += 1
            return False
        if len(self.pending) >= self.pending_max:
            self.pending_dropped += 1
            return False
        recent.append(now)
        entry = PendingKey(key, address, now, now)
        self.pending[key] = entry
        self._write_json("pending", entry)
        return True

    def _write_json(self, state: str, entry: PendingKey) -> None:
        path = self.root / state / f"{certlib.fingerprint(entry.public_key)}.json"
        tmp = path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as out:
            json.dump(entry.to_json(), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    # -- operator actions -------------------------------------------------

    def find_key(self, ref: str) -> tuple[str, bytes]:
        """Resolve ``ref`` to ``(state, key)``: see :func:`.certviews.find_key`."""
        return certviews.find_key(ref, self.snapshot, self.pending, self.rejected, self.revoked)

    def accept(self, ref: str, name: str, role: str) -> Certificate:
        """Move a pending (or rejected) key to the allow-list under ``name`` and ``role``.
        A revoked key never goes back through here: :class:`NotFound` points at :meth:`unrevoke`."""
        state, key = self.find_key(ref)
        if state == "revoked":
            raise NotFound(f"no pending key {ref.strip()!r}: that key is revoked; to let it back in, "
                           f"run meshctl certs unrevoke {ref.strip()}")
        if state not in ("pending", "rejected"):
            raise Conflict(f"that key is {state}, not pending")
        try:
            cert = Certificate(key, certlib.check_name(name), role)
            if role not in certlib.ROLES:
                raise CertificateError(f"role must be one of {', '.join(sorted(certlib.ROLES))}")
        except CertificateError as exc:
            raise BadRequest(exc.message) from None
        if name in self.snapshot.by_name or (self.root / "allowed" / f"{name}.key").exists():
            raise Conflict(f"the name {name!r} is already taken by another certificate")
        certlib.save_public(cert, self.root / "allowed" / f"{name}.key")
        self._unlink(state, key)
        self.reload()
        return cert

    def enroll(self, key: bytes, name: str, role: str) -> Certificate:
        """Put a key that is not on the allow-list there as ``name`` and ``role`` (a device that
        pairing admitted). A key the store refuses (revoked or rejected) stays refused: a device
        pairs again with a fresh key. A pending entry of the key (it tried to connect before it
        was paired) is cleared."""
        try:
            key = certlib.check_public_key(key)
            cert = Certificate(key, certlib.check_name(name), role)
        except CertificateError as exc:
            raise BadRequest(exc.message) from None
        if key in self.snapshot.by_z85:
            raise Conflict("that key is already allowed")
        if key in self.revoked or key in self.rejected:
            raise Conflict("that key was revoked or rejected; pair again with a fresh key")
        if name in self.snapshot.by_name or os.path.lexists(self.root / "allowed" / f"{name}.key"):
            raise Conflict(f"the name {name!r} is already taken by another certificate")
        certlib.save_public(cert, self.root / "allowed" / f"{name}.key")
        self._unlink("pending", key)
        self.reload()
        if key not in self.snapshot.by_z85:
            raise Conflict("the key is still refused after the reload; meshctl certs reload names the problem")
        return cert

    def reject(self, ref: str) -> bytes:
        """Refuse a pending key for good (it is no longer listed as pending)."""
        state, key = self.find_key(ref)
        if state != "pending":
            raise Conflict(f"that key is {state}, not pending")
        entry = self.pending[key]
        self._write_json("rejected", entry)
        self._unlink("pending", key)
        self.reload()
        return key

    def revoke(self, ref: str) -> Certificate:
        """Revoke an allowed certificate. The revocation is written before the allow-list
        entry is removed, so a crash between the two still leaves the key refused."""
        state, key = self.find_key(ref)
        if state != "allowed":
            raise Conflict(f"that key is {state}, not allowed")
        cert = self.snapshot.by_z85[key]
        target = self.root / "revoked" / f"{cert.fingerprint}.key"
        if not target.exists():
            certlib.save_public(cert, target)
        self._remove_files_of(key, "allowed")
        self.reload()
        return cert

    def _remove_files_of(self, key: bytes, folder: str) -> None:
        """Remove every certificate file of ``key`` from ``folder`` (``allowed`` or ``revoked``); a
        file that does not parse belongs to no key and is left for ``certs reload`` to report."""
        for path in (self.root / folder).glob("*.key"):
            try:
                if certlib.load_certificate(path).public_key == key:
                    path.unlink()
            except CertificateError:
                continue

    def unrevoke(self, ref: str) -> Certificate:
        """Let a revoked certificate back in under the name and role it had. The allow-list
        entry is written before the revocation is removed: a crash between the two leaves the
        key refused (an allowed file whose key is revoked is skipped), and calling again finishes."""
        state, key = self.find_key(ref)
        if state != "revoked":
            raise Conflict(f"that key is {state}, not revoked")
        cert = self.revoked[key]
        holder = self.snapshot.by_name.get(cert.name)
        target = self.root / "allowed" / f"{cert.name}.key"
        # Two keys under one name are both refused: never let this one take a name in use.
        if holder is not None and holder.public_key != key:
            raise Conflict(f"the name {cert.name!r} is now held by another key; revoke that one first")
        if os.path.lexists(target):
            try:
                present: Certificate | None = certlib.load_certificate(target)
            except CertificateError:
                present = None
            if present != cert:
                raise Conflict(f"allowed/{target.name} holds another certificate; remove it first")
        else:
            certlib.save_public(cert, target)
        self._remove_files_of(key, "revoked")
        self.reload()
        if key not in self.snapshot.by_z85:  # never report a key let back in that is still refused
            raise Conflict("the key is still refused after the reload; meshctl certs reload names the problem")
        return cert

    def _unlink(self, state: str, key: bytes) -> None:
        try:
            (self.root / state / f"{certlib.fingerprint(key)}.json").unlink()
        except FileNotFoundError:
            pass

    def entries(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every known key, as plain dicts for introspection (see :func:`.certviews.entries`)."""
        return certviews.entries(state, self.snapshot, self.pending, self.rejected, self.revoked)

"""How operators name and see the broker's certificates: resolving a ``ref``, listing entries.

Pure functions over the store's current state (the allow-list snapshot, the pending,
rejected and revoked keys), so :mod:`.certstore` keeps only loading and changing it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from shared import BadRequest, Certificate, NotFound
from shared import certs as certlib


@dataclass(frozen=True, slots=True)
class AllowList:
    """An immutable snapshot of the allow-list: raw key, Z85 key, name and key text to certificate."""

    by_raw: Mapping[bytes, Certificate] = field(default_factory=lambda: MappingProxyType({}))
    by_z85: Mapping[bytes, Certificate] = field(default_factory=lambda: MappingProxyType({}))
    by_name: Mapping[str, Certificate] = field(default_factory=lambda: MappingProxyType({}))
    #: Keyed by the Z85 key as text, the form libzmq hands back in ``X-Key`` message metadata.
    by_text: Mapping[str, Certificate] = field(default_factory=lambda: MappingProxyType({}))


class _Pending(Protocol):
    public_key: bytes
    address: str
    first_seen: float
    last_seen: float
    attempts: int


def find_key(ref: str, snapshot: AllowList, pending: Collection[bytes], rejected: Collection[bytes],
             revoked: Mapping[bytes, Certificate]) -> tuple[str, bytes]:
    """Resolve a name, a Z85 key or a fingerprint (or a unique prefix of at least 8 hex digits)
    to ``(state, key)``; raise :class:`NotFound` or :class:`BadRequest`.

    A name means the allowed certificate of that name; only if none is allowed, the revoked
    one (so an operator can name a revoked service as they named it before)."""
    ref = ref.strip()
    cert = snapshot.by_name.get(ref)
    if cert is not None:
        return "allowed", cert.public_key
    named = revoked_named(ref, revoked)
    if len(named) > 1:
        raise BadRequest(f"more than one revoked key was named {ref!r}; give its fingerprint "
                         f"(meshctl certs list --state revoked)")
    if named:
        return "revoked", named[0].public_key
    everything: list[tuple[str, bytes]] = [("allowed", k) for k in snapshot.by_z85]
    everything += [("pending", k) for k in pending]
    everything += [("rejected", k) for k in rejected]
    everything += [("revoked", k) for k in revoked]
    exact = [(s, k) for s, k in everything if k.decode() == ref]
    if exact:
        return exact[0]
    if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref.lower()):
        raise NotFound("no certificate with that name, key or fingerprint")
    hits = {(s, k) for s, k in everything if certlib.fingerprint(k).startswith(ref.lower())}
    if not hits:
        raise NotFound("no certificate with that name, key or fingerprint")
    if len(hits) > 1:
        raise BadRequest("fingerprint prefix is ambiguous; give more digits")
    return hits.pop()


def revoked_named(name: str, revoked: Mapping[bytes, Certificate]) -> list[Certificate]:
    """The revoked certificates that carried ``name`` (more than one if it was revoked twice)."""
    return [c for c in revoked.values() if c.name == name]


def entries(state: str | None, snapshot: AllowList, pending: Mapping[bytes, _Pending],
            rejected: Collection[bytes], revoked: Mapping[bytes, Certificate]) -> list[dict[str, Any]]:
    """Every known key (or those in ``state``), as plain dicts, sorted by state, name, fingerprint."""
    out: list[dict[str, Any]] = []
    if state in (None, "allowed"):
        out += [_cert_entry("allowed", c) for c in snapshot.by_z85.values()]
    if state in (None, "revoked"):
        out += [_cert_entry("revoked", c) for c in revoked.values()]
    if state in (None, "pending"):
        out += [{"state": "pending", "name": None, "role": None, "public_key": p.public_key.decode(),
                 "fingerprint": certlib.fingerprint(p.public_key), "address": p.address,
                 "first_seen": p.first_seen, "last_seen": p.last_seen, "attempts": p.attempts}
                for p in pending.values()]
    if state in (None, "rejected"):
        out += [{"state": "rejected", "name": None, "role": None, "public_key": k.decode(),
                 "fingerprint": certlib.fingerprint(k)} for k in rejected]
    return sorted(out, key=lambda e: (e["state"], e["name"] or "", e["fingerprint"]))


def _cert_entry(state: str, cert: Certificate) -> dict[str, Any]:
    return {"state": state, "name": cert.name, "role": cert.role,
            "public_key": cert.public_key.decode(), "fingerprint": cert.fingerprint}

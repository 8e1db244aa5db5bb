"""The details sanitiser: what a producer sends as ``details`` before it becomes part of a record.

Contract: :func:`sanitize_details` returns a new map that is safe to store forever.

- A field whose *name* looks like a secret (password, passphrase, token, key, secret, code, otp,
  pin, credential, private, cookie, session) never keeps its value: a string, bytes or number is
  replaced by ``"hmac-sha256:<hex>"``, a keyed hash, so two records can still be matched on the
  same value without the value being in the log; anything else (a map, a list) is replaced by
  ``"<dropped>"``. The hash is keyed (HMAC-SHA256 with a key derived from the audit key) rather
  than a bare SHA-256, because a bare hash of a 6-digit code or a short password is reversed by
  trying every candidate.
- Sizes are bounded: nesting depth, entries per map or list, string and bytes lengths. What is
  cut is marked, never silently changed into something that looks complete.
- Map keys that are not strings are dropped (the canonical record encoding needs string keys).

Per-event schemas come first (:data:`EVENT_SCHEMAS`): for a known event type only the listed
fields are kept, each with its treatment (``text``: a string; ``number``; ``flag``: a bool;
``counts``: a map of names to numbers; ``hash``: always the keyed hash; ``tally``: a count whose
name looks like a secret's, such as ``sessions_ended``: kept only as a non-negative integer, and
the one treatment the name-based rule below leaves alone). A value of the wrong
type is hashed when it is a scalar and dropped otherwise, so a secret smuggled into a ``count``
field does not survive. Unlisted fields are dropped and only their number is kept
(``details["dropped_fields"]``), never their names. Unknown event types get the name-based rule
only, and the name-based rule runs again over every known type's output (defence in depth).
Producers should still not send secrets at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["HASH_PREFIX", "DROPPED", "DROPPED_FIELDS", "EVENT_SCHEMAS", "MAX_DEPTH", "MAX_ENTRIES", "MAX_TEXT",
           "TALLY", "schema_for", "sanitize_details"]

HASH_PREFIX: Final = "hmac-sha256:"
DROPPED: Final = "<dropped>"
MAX_DEPTH: Final = 4         # maps and lists nested deeper are dropped
MAX_ENTRIES: Final = 64      # entries kept per map or list
MAX_TEXT: Final = 1024       # characters of a string, bytes of a bytes value
DROPPED_FIELDS: Final = "dropped_fields"  # how many fields a per-event schema dropped

TEXT, NUMBER, FLAG, COUNTS, HASH, TALLY = "text", "number", "flag", "counts", "hash", "tally"
_WHO: Final = {"subject": TEXT, "role": TEXT}    # the identity a producer reported as acting
_PROCESS: Final = {name: TEXT for name in ("process", "group", "state", "from_state", "supervisor")} | {
    name: NUMBER for name in ("pid", "tries", "serial")} | {"expected": FLAG}
_ALERT: Final = {"rule": TEXT, "subject": TEXT, "count": NUMBER, "threshold": NUMBER, "window_s": NUMBER,
                 "first_seq": NUMBER, "last_seq": NUMBER}
#: ``refused``: attempts refused while backing off after wrong passwords, since the last recorded one.
_KEYVAULT_PLAIN: Final = _WHO | {"reason": TEXT, "refused": NUMBER}
#: A trust anchor moved off the home (or a stored copy removed): which one, from where, to where.
_ANCHOR: Final = _WHO | {"anchor": TEXT, "source": TEXT, "destination": TEXT, "reason": TEXT}
#: An authn decision: who asked (the peer, its role and key fingerprint prefix), the account (the
#: record's ``target`` is the username; ``user_id`` the id), the reason code, and the session (hashed:
#: ids still pair up). Never a password, token or code: authn does not send them.
_AUTHN: Final = _WHO | {"source": TEXT, "source_role": TEXT, "source_fp": TEXT, "user_id": TEXT, "reason": TEXT,
                        "session": HASH}
#: An authz decision or change: who asked, the principal decided on, what and for what; the record's
#: ``target`` is the principal, ``on_behalf_of`` the data's owner (a user id). Ids only, no data.
_AUTHZ: Final = _WHO | {"source": TEXT, "source_role": TEXT, "source_fp": TEXT, "principal": TEXT, "action": TEXT,
                        "category": TEXT, "user": TEXT, "purpose": TEXT, "policies": TEXT, "reason": TEXT,
                        "sensitivity": NUMBER, "assigned_role": TEXT, "grant": TEXT, "grantee": TEXT,
                        "categories": TEXT, "actions": TEXT, "expires_at": NUMBER, "digest": TEXT, "error": TEXT}
#: Who acted on pairing (an operator opening a window or managing a device; nothing when an attempt
#: or the window's own end is recorded): the peer as the broker authenticated it.
_PAIRING: Final = {"source": TEXT, "source_role": TEXT, "source_fp": TEXT}
#: A paired device's report that the log is not the one it witnessed (audit.witness_report): the two
#: checkpoints as tree sizes and hex roots, whether each is signed by this mesh's audit key, and the problem.
_WITNESS: Final = {"problem": TEXT, "kept_tree_size": NUMBER, "kept_root": TEXT, "kept_signed": FLAG,
                   "seen_tree_size": NUMBER, "seen_root": TEXT, "seen_signed": FLAG}
#: plugin-host's records: which plugin (``target`` is ``plugin:<name>``), which version and package,
#: and why it was refused, stopped, disabled or denied; who acted when an operator did (``source*``).
#: Never a plugin's data, arguments or output: plugin-host does not send them.
_PLUGIN: Final = _WHO | _PAIRING | {
    "plugin": TEXT, "version": TEXT, "previous_version": TEXT, "publisher": TEXT, "publisher_fp": TEXT,
    "content_hash": TEXT, "capabilities": TEXT, "reason": TEXT, "detail": TEXT, "path": TEXT, "pid": NUMBER,
    "layers": TEXT, "failures": NUMBER, "backoff_s": NUMBER, "op": TEXT, "grant": TEXT}
#: Event type -> {field: treatment}. ``alert.*`` (other than ``alert.ack``) share ``alert.*``.
EVENT_SCHEMAS: Final[Mapping[str, Mapping[str, str]]] = {
    # broker (spooled; the acting peer arrives as ``subject``)
    "mesh.deny": _WHO | {"action": TEXT, "target": TEXT},
    "mesh.refused": {"reason": TEXT, "count": NUMBER},
    "mesh.register": _WHO | {"service": TEXT},
    "mesh.cert_pending": {"fingerprint": TEXT, "address": TEXT},
    "mesh.cert_accept": _WHO | {"name": TEXT, "cert_role": TEXT, "fingerprint": TEXT},
    "mesh.cert_reject": _WHO | {"fingerprint": TEXT},
    "mesh.cert_revoke": _WHO | {"name": TEXT, "fingerprint": TEXT},
    "mesh.cert_unrevoke": _WHO | {"name": TEXT, "cert_role": TEXT, "fingerprint": TEXT},
    "mesh.handshake_failed": {"count": NUMBER, "by_reason": COUNTS},
    "mesh.rate_limited": {"identity": TEXT, "count": NUMBER},
    "mesh.config": {"path": TEXT, "sha256": TEXT, "previous_sha256": TEXT, "changed": FLAG, "error": TEXT},
    "mesh.config_reloaded": _WHO | {"sha256": TEXT, "previous_sha256": TEXT},
    "mesh.config_refused": _WHO | {"sha256": TEXT, "error": TEXT},
    "spool.overflow": {"dropped": NUMBER},
    # meshctl service add / remove (the operator is the record's actor)
    "service.added": {"entry": TEXT, "declaration": TEXT, "fingerprint": TEXT},
    "service.removed": {"entry": TEXT, "revoked": FLAG, "files": NUMBER},
    # keyvault
    "keyvault.key_release": _WHO | {"purpose": TEXT, "version": NUMBER},
    "keyvault.key_refused": _WHO | {"purpose": TEXT, "version": NUMBER, "reason": TEXT, "audit_error": TEXT},
    "keyvault.unlock": _KEYVAULT_PLAIN,
    "keyvault.lock": _KEYVAULT_PLAIN,
    # a session id is a bearer secret: hashed, so a session's start and end still pair up
    "keyvault.session_start": _KEYVAULT_PLAIN | {"session": HASH},
    "keyvault.session_end": _KEYVAULT_PLAIN | {"session": HASH},
    "keyvault.password_change": _KEYVAULT_PLAIN,
    "keyvault.key_rotate": _WHO | {"purpose": TEXT, "version": NUMBER, "refused": NUMBER},
    "keyvault.anchor_moved": _ANCHOR,
    "keyvault.anchor_removed": _ANCHOR,
    # storage (``subject``: the operator who asked, or the caller who read)
    "storage.read": _WHO | {"category": TEXT, "bytes": NUMBER, "count": NUMBER},
    "storage.backup": _WHO | {"archive": TEXT, "sequence": NUMBER, "bytes": NUMBER, "portable": FLAG},
    "storage.restore": _WHO | {"archive": TEXT, "sequence": NUMBER, "rollback": FLAG},
    "storage.key_retired": {"purpose": TEXT, "versions": TEXT},
    "storage.anchor_moved": _ANCHOR,
    # authn (``subject`` and ``source``: the peer a person signed in through; ``account``: the user id)
    "authn.login": _AUTHN | {"method": TEXT, "known_device": FLAG},
    "authn.refresh": _AUTHN,
    "authn.reauth": _AUTHN | {"method": TEXT},
    "authn.refresh_reused": _AUTHN,
    "authn.verify": _AUTHN,
    "authn.logout": _AUTHN,
    "authn.user_added": _AUTHN,
    "authn.user_disabled": _AUTHN | {"ended": NUMBER},
    "authn.user_enabled": _AUTHN | {"ended": NUMBER},
    "authn.user_deleted": _AUTHN | {"ended": NUMBER},
    "authn.password_changed": _AUTHN | {"ended": NUMBER},
    "authn.sessions_revoked": _AUTHN | {"filter": TEXT, "count": NUMBER},
    "authn.totp_begun": _AUTHN,
    "authn.passkey_added": _AUTHN,
    "authn.passkey_removed": _AUTHN,
    "authn.passkey_cloned": _AUTHN,
    "authn.totp_confirmed": _AUTHN,
    "authn.totp_removed": _AUTHN,
    # authz (``target``: the principal; ``on_behalf_of``: the owner of the data or the grant)
    "authz.decision": _AUTHZ,
    "authz.role_assigned": _AUTHZ,
    "authz.role_revoked": _AUTHZ,
    "authz.consent_granted": _AUTHZ,
    "authz.consent_revoked": _AUTHZ,
    "authz.policy_reloaded": _AUTHZ,
    "authz.policy_refused": _AUTHZ,
    # pairing: a window opened or closed, an attempt (outcome ok or failure), a device paired, revoked
    # or renamed (the pairing service appends these); mesh.device_*: the broker's certificate side
    "pairing.window_opened": _PAIRING | {"window": TEXT, "name": TEXT, "ttl_s": NUMBER, "endpoint": TEXT},
    "pairing.window_closed": _PAIRING | {"window": TEXT, "reason": TEXT, "failures": NUMBER, "refused": NUMBER},
    "pairing.attempt": {"window": TEXT, "address": TEXT, "reason": TEXT},
    "pairing.device_paired": {"window": TEXT, "device": TEXT, "fingerprint": TEXT, "address": TEXT,
                              "client_version": TEXT},
    "pairing.device_revoked": _PAIRING | {"device": TEXT, "fingerprint": TEXT, "connections_cut": TALLY,
                                          "sessions_ended": TALLY, "grants_revoked": TALLY, "steps": TEXT,
                                          "reason": TEXT},
    "pairing.device_renamed": _PAIRING | {"device": TEXT, "old_label": TEXT, "new_label": TEXT},
    # plugin-host: installs and refusals, operators' changes, starts, failures (a quota or sandbox rule
    # broken, a crash: plugin.killed raises the plugin_faults alert) and refused requests
    **{f"plugin.{event}": _PLUGIN for event in ("installed", "install_refused", "enabled", "disabled", "removed",
                                                "started", "killed", "denied")},
    "mesh.device_enrolled": _WHO | {"name": TEXT, "fingerprint": TEXT},
    "mesh.device_revoked": _WHO | {"name": TEXT, "fingerprint": TEXT},
    # audit's own records
    "audit.anchor_moved": _ANCHOR,
    "audit.witness_mismatch": _WITNESS,
    "audit.verify_failed": {"source": TEXT, "first_bad": NUMBER, "problem": TEXT, "size": NUMBER,
                            "damaged": FLAG},
    "alert.*": _ALERT,
    "alert.ack": {"alert_id": NUMBER, "rule": TEXT, "subject": TEXT, "count": NUMBER},
    "process.crash": _PROCESS,
    "process.state": _PROCESS,
    "process.overflow": _PROCESS,
    "process.events_lost": _PROCESS,
}

# Substring match on purpose: "api_key", "mfaCode", "session_token" and "x-password" are all
# caught. Over-matching ("keyboard") costs a hashed value, under-matching leaks a secret.
_SECRET_NAME: Final = re.compile(
    r"pass(word|phrase|wd)?|token|key|secret|code|otp|pin|credential|private|cookie|session",
    re.IGNORECASE)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def _hash(value: Any, hash_key: bytes | bytearray) -> str:
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, (int, float, bool)):
        data = repr(value).encode()
    else:
        return DROPPED
    return HASH_PREFIX + hmac.new(hash_key, data, hashlib.sha256).hexdigest()


def _clean(value: Any, hash_key: bytes | bytearray, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + f"...[truncated {len(value) - MAX_TEXT}]"
    if isinstance(value, (bytes, bytearray)):
        # Binary blobs are not readable evidence and may be key material: keep only a hash of
        # long ones.
        return bytes(value) if len(value) <= MAX_TEXT else _hash(value, hash_key)
    if depth >= MAX_DEPTH:
        return DROPPED
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for name, item in list(value.items())[:MAX_ENTRIES]:
            if type(name) is not str:
                continue
            name = name[:128]
            out[name] = _hash(item, hash_key) if _is_secret_name(name) else _clean(item, hash_key, depth + 1)
        if len(value) > MAX_ENTRIES:
            out["_truncated_entries"] = len(value) - MAX_ENTRIES
        return out
    if isinstance(value, (list, tuple)):
        items = [_clean(item, hash_key, depth + 1) for item in list(value)[:MAX_ENTRIES]]
        if len(value) > MAX_ENTRIES:
            items.append(f"...[truncated {len(value) - MAX_ENTRIES}]")
        return items
    return DROPPED


def schema_for(event: str | None) -> Mapping[str, str] | None:
    """The per-event schema of ``event``, or None for an unknown type (name-based rule only)."""
    if not event:
        return None
    schema = EVENT_SCHEMAS.get(event)
    if schema is None and event.startswith("alert.") and event != "alert.ack":
        schema = EVENT_SCHEMAS["alert.*"]
    return schema


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _treat(treatment: str, value: Any, hash_key: bytes | bytearray) -> Any:
    if value is None:
        return None
    if treatment == HASH:
        return _hash(value, hash_key)
    if treatment == COUNTS:
        if not isinstance(value, dict):
            return DROPPED
        return {k[:128]: v for k, v in list(value.items())[:MAX_ENTRIES] if type(k) is str and _is_number(v)}
    if treatment == TALLY:
        fits = type(value) is int and value >= 0
    elif treatment == TEXT:
        fits = isinstance(value, str)
    elif treatment == NUMBER:
        fits = _is_number(value)
    else:
        fits = treatment == FLAG and isinstance(value, bool)
    if fits:
        return value
    # The wrong type: never kept as it is (a code sent as a "count", a token as a "reason").
    return _hash(value, hash_key)


def sanitize_details(details: dict[str, Any] | None, hash_key: bytes | bytearray,
                     event: str | None = None) -> dict[str, Any]:
    """A bounded copy of ``details`` that is safe to store (see module doc): the per-event
    schema of ``event`` when it is a known type, then the name-based rule on everything.

    ``hash_key`` keys the HMAC; it is never part of the output.
    """
    if not details:
        return {}
    schema = schema_for(event)
    if schema is None:
        cleaned = _clean(details, hash_key, 0)
        return cleaned if isinstance(cleaned, dict) else {}
    out: dict[str, Any] = {}
    hashed: set[str] = set()  # what the name-based pass leaves alone: hashed already, or a tally
    dropped = 0
    for name, value in details.items():
        treatment = schema.get(name) if type(name) is str else None
        if treatment is None:
            dropped += 1
            continue
        out[name] = _treat(treatment, value, hash_key)
        if treatment in (HASH, TALLY):  # a tally is a count kept, or a value hashed already
            hashed.add(name)
    # Second pass, defence in depth: the name-based rule and the size bounds on what was kept.
    for name, value in out.items():
        if name not in hashed:
            out[name] = _hash(value, hash_key) if _is_secret_name(name) else _clean(value, hash_key, 1)
    if dropped:
        out[DROPPED_FIELDS] = dropped
    return out

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

This is a generic, name-based schema; per-event schemas (the issue's "per-event schema") are not
written yet, so producers should still not send secrets at all: this is the safety net.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, Final

__all__ = ["HASH_PREFIX", "DROPPED", "MAX_DEPTH", "MAX_ENTRIES", "MAX_TEXT", "sanitize_details"]

HASH_PREFIX: Final = "hmac-sha256:"
DROPPED: Final = "<dropped>"
MAX_DEPTH: Final = 4         # maps and lists nested deeper are dropped
MAX_ENTRIES: Final = 64      # entries kept per map or list
MAX_TEXT: Final = 1024       # characters of a string, bytes of a bytes value

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


def sanitize_details(details: dict[str, Any] | None, hash_key: bytes | bytearray) -> dict[str, Any]:
    """A bounded copy of ``details`` with every secret-named field hashed or dropped (see module doc).

    ``hash_key`` keys the HMAC; it is never part of the output.
    """
    if not details:
        return {}
    cleaned = _clean(details, hash_key, 0)
    return cleaned if isinstance(cleaned, dict) else {}

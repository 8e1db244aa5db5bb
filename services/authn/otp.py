"""One-time codes: TOTP (RFC 6238, through ``pyotp``) and single-use recovery codes.

- A TOTP secret is 160 random bits (RFC 4226's recommended length), base32, kept in authn's
  encrypted database; enrolment hands it out once as an ``otpauth://`` URI (shown as a QR code by
  ``meshctl users totp``) and takes effect when a first valid code confirms it.
- :func:`match_code` accepts the code of the current 30-second step or of one step either side
  (clock drift), compared in constant time, and only for a step later than the last one accepted:
  each code works once, even within its own window.
- Recovery codes are ten random ``xxxxx-xxxxx`` codes (50 bits each), shown once at confirmation
  and stored only as SHA-256 digests: at 50 random bits a digest cannot be reversed by guessing,
  and each is spent on use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

import pyotp

STEP_S: Final = 30
DIGITS: Final = 6
#: Steps either side of the current one a code may come from (RFC 6238 section 5.2: at most one).
DRIFT_STEPS: Final = 1
RECOVERY_CODES: Final = 10
_ALPHABET: Final = "abcdefghijkmnpqrstuvwxyz23456789"  # 32 characters, no 0/o, 1/l look-alikes
_SECRET_BYTES: Final = 20


class WrongCode(Exception):
    """A one-time code that does not match (or was used already). The message is fixed: never the code."""

    def __init__(self) -> None:
        super().__init__("wrong one-time code")


def new_secret() -> str:
    """A fresh TOTP secret: 160 random bits, base32 without padding."""
    return pyotp.random_base32(length=32)  # 32 base32 characters = 160 bits


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps read (from a QR code)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(name=username, issuer_name=issuer)


def step_of(now: float) -> int:
    return int(now // STEP_S)


def match_code(secret: str, code: object, now: float, last_step: int) -> int:
    """The step whose code ``code`` is (current, or one either side), if that step is after
    ``last_step``; :class:`WrongCode` otherwise. The caller stores the step as the new last one."""
    if not isinstance(code, str) or len(code) != DIGITS or not code.isascii() or not code.isdigit():
        raise WrongCode()
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = step_of(now)
    matched = None
    # Every candidate is computed and compared, so the time taken does not say which one matched.
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and step > last_step:
            matched = step
    if matched is None:
        raise WrongCode()
    return matched


def new_recovery_codes() -> list[str]:
    """Ten fresh recovery codes, ``xxxxx-xxxxx`` (shown once; store their digests)."""
    return ["-".join("".join(secrets.choice(_ALPHABET) for _ in range(5)) for _ in range(2))
            for _ in range(RECOVERY_CODES)]


def normalise_recovery(code: object) -> str | None:
    """The canonical form of something typed as a recovery code (case and separators ignored),
    or None when it cannot be one."""
    if not isinstance(code, str) or len(code) > 32:
        return None
    text = "".join(c for c in code.lower() if c not in " -")
    return text if len(text) == 10 and all(c in _ALPHABET for c in text) else None


def recovery_digest(code: str) -> bytes:
    """The stored form of a normalised recovery code."""
    return hashlib.sha256(b"curvemesh authn recovery code v1:" + code.encode("ascii")).digest()

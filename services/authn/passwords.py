r"""Account passwords: the enrolment policy, and Argon2id hashing that fails closed.

Policy (:func:`check_password`): a string of 12 to 1024 characters (code points, after NFC), not
on the list of commonly used passwords, and not built from the username. Every refusal is a
:class:`~shared.BadRequest` whose one-line message says what to do and never quotes the password.

The list, ``data/common-passwords.txt``, was made once from zxcvbn's ``passwords`` frequency list
(MIT; 30000 entries, all of which were taken), keeping the entries of 8 characters or more:
shorter ones can never match a password that passed the length rule, and 8 rather than 12 keeps
the list useful should the minimum ever be lowered to NIST's 8. It was made, from the repository
root, with::

    .venv/bin/python -c "import importlib.metadata as m; from zxcvbn.frequency_lists import FREQUENCY_LISTS as F; \
    top = F['passwords'][:100000]; kept = [w for w in dict.fromkeys(w.lower() for w in top) if len(w) >= 8]; \
    print(f'# source: zxcvbn {m.version(\"zxcvbn\")} frequency_lists passwords (MIT), top {len(top)} by rank', \
    f'# kept: the {len(kept)} entries of 8 characters or more ' \
    f'(shorter ones fail any sane length rule), lowercase, in rank order', *kept, sep=chr(10))" \
    > services/authn/data/common-passwords.txt

(a shell joins the lines). Hashing (:class:`PasswordHasher`) is Argon2id from a
:class:`~shared.Argon2Profile`; verification raises :class:`WrongPassword` for every failure, a
mismatch and a hash it cannot use alike, so no caller can mistake one for success.
"""

from __future__ import annotations

import functools
import re
import secrets
import unicodedata
from importlib.resources import files
from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shared import Argon2Profile, BadRequest

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024
# A password whose letters are mostly the username's parts is the username with decoration
# ("alice.smith" -> "Alice-Smith-2024!"): what is left once the parts are removed must be at
# least this long, the length of a password that would otherwise be thought of as short.
MIN_REMAINDER: Final = 8
# Username parts shorter than this are too common inside words to count ("al", "jo").
MIN_PART: Final = 3
# NFC shrinks a string by at most 4 code points to 1, so anything longer than this cannot fit in
# MAX_LENGTH after NFC; it is refused before normalising so that huge input costs nothing.
_MAX_RAW_LENGTH: Final = 4 * MAX_LENGTH
_NOT_ALPHANUMERIC: Final = re.compile(r"[\W_]+")
_ARGON2ID_PREFIX: Final = "$argon2id$"


class WrongPassword(Exception):
    """The password does not open this hash (or the hash is unusable). Never carries input."""

    def __init__(self) -> None:
        super().__init__("wrong password")


def check_password(password: object, username: str) -> None:
    """Raise :class:`BadRequest` unless ``password`` is acceptable for the account ``username``.

    Refused, in this order: a non-string; fewer than 12 or more than 1024 characters (code points,
    after NFC); a password on the common list (compared casefolded); a password built from the
    username. The last rule: take the casefolded username and its parts (split on every run of
    characters that are not letters or digits), keep those of 3 characters or more, remove every
    occurrence of each from the casefolded password, longest first; if fewer than 8 characters
    remain, the password is refused. So for ``alice.smith``, ``alice-smith-2024!`` and
    ``SmithAlice99`` are refused and ``alice in wonderland 1865`` is accepted.
    """
    if not isinstance(password, str):
        raise BadRequest("password must be a string")
    if len(password) > _MAX_RAW_LENGTH:
        raise BadRequest(f"password too long: use at most {MAX_LENGTH} characters")
    normal = unicodedata.normalize("NFC", password)
    if len(normal) < MIN_LENGTH:
        raise BadRequest(f"password too short: use at least {MIN_LENGTH} characters")
    if len(normal) > MAX_LENGTH:
        raise BadRequest(f"password too long: use at most {MAX_LENGTH} characters")
    folded = normal.casefold()
    if folded in common_passwords():
        raise BadRequest("password is on the list of commonly used passwords: choose another")
    remainder = folded
    for part in _username_parts(username):
        remainder = remainder.replace(part, "")
    if len(remainder) < MIN_REMAINDER:
        raise BadRequest("password contains the username: choose one that does not")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The casefolded common-password list, read once from the package data."""
    text = (files("services.authn") / "data" / "common-passwords.txt").read_text(encoding="utf-8")
    return frozenset(line.casefold() for line in text.splitlines() if line and not line.startswith("#"))


def _username_parts(username: str) -> list[str]:
    """The casefolded username and its alphanumeric parts of 3 or more characters, longest first."""
    whole = unicodedata.normalize("NFC", username).casefold()
    parts = {whole, *_NOT_ALPHANUMERIC.split(whole)}
    # Longest first, so that "alice.smith" goes as a whole before "alice" can split it; ties are
    # sorted so the result never depends on set order.
    return sorted((part for part in parts if len(part) >= MIN_PART), key=lambda part: (-len(part), part))


class PasswordHasher:
    """Argon2id hashing with one cost profile; passwords are hashed and checked in NFC.

    NFC makes the same password typed on systems that compose accents differently one password.
    The profile is not checked against the OWASP floor here: the configuration checks it as it is
    parsed, and tests need tiny profiles.
    """

    def __init__(self, profile: Argon2Profile) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=profile.iterations,
            memory_cost=profile.memory_kib,
            parallelism=profile.parallelism,
            type=argon2.Type.ID,
        )
        # A hash of a random secret nobody knows, made now rather than on the first unknown
        # username, so that even the first dummy verification costs exactly one verification.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(32))

    def hash(self, password: str) -> str:
        """Return the encoded Argon2id hash (PHC string, with its own random salt)."""
        return self._hasher.hash(unicodedata.normalize("NFC", password))

    def verify(self, encoded: str, password: str) -> None:
        """Return if ``password`` opens ``encoded``; else raise :class:`WrongPassword`.

        Raised alike for a mismatch, for a hash that is malformed or not Argon2id, and for a
        password that is not a string or is longer than any accepted one.
        """
        if not isinstance(encoded, str) or not encoded.startswith(_ARGON2ID_PREFIX):
            raise WrongPassword
        if not isinstance(password, str) or len(password) > _MAX_RAW_LENGTH:
            raise WrongPassword
        try:
            self._hasher.verify(encoded, unicodedata.normalize("NFC", password))
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            # ``from None``: the argon2 error says nothing useful to a caller and must not travel.
            raise WrongPassword from None

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than this profile's.

        True for a hash this hasher cannot read: it is not what the current profile would make.
        Call it after a successful :meth:`verify`, then store :meth:`hash` of the same password.
        """
        if not isinstance(encoded, str):
            return True
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend one verification at this profile's cost, then raise :class:`WrongPassword`.

        For a login naming an unknown user: it takes as long as a real verification with the
        current profile, so the response time does not tell which usernames exist. (A user whose
        hash still has an older profile costs what that profile costs until it is rehashed.)
        """
        try:
            self.verify(self._dummy, password)
        except WrongPassword:
            pass
        raise WrongPassword

"""Account passwords: every refusal and its reason, planted passwords never echoed, the common
list read from package data, and Argon2id hashing that raises WrongPassword for every failure."""

from __future__ import annotations

import traceback
from importlib.resources import files

import pytest

from services.authn.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    MIN_REMAINDER,
    PasswordHasher,
    WrongPassword,
    check_password,
    common_passwords,
)
from shared import Argon2Profile, BadRequest

TINY = Argon2Profile(memory_kib=1024, iterations=1, parallelism=1)
GOOD = "Vq7#horse-Lamp-quartz"  # distinctive, long enough, on no list


def refusal(password: object, username: str = "alice.smith") -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        check_password(password, username)
    return caught.value


def assert_never_quoted(password: str, exc: BaseException) -> None:
    """Neither the password nor any 4-character piece of it appears anywhere in the error."""
    rendered = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for text in rendered:
        folded = text.casefold()
        assert password.casefold() not in folded
        for start in range(len(password) - 3):
            assert password[start : start + 4].casefold() not in folded, password[start : start + 4]


@pytest.mark.parametrize("password", [GOOD, "correct horse battery staple", "\u00e9t\u00e9 \u00e0 la plage 1987"])
def test_good_passwords_pass(password: str) -> None:
    check_password(password, "alice.smith")


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        (None, "password must be a string"),
        (b"Vq7#horse-Lamp-quartz", "password must be a string"),
        (123456789012, "password must be a string"),
        ("Vq7#horse-L", "password too short: use at least 12 characters"),
        ("", "password too short: use at least 12 characters"),
        # Twelve code points as typed, six once the accents are composed (NFC).
        ("e\u0301" * 6, "password too short: use at least 12 characters"),
        ("Vq7#" * 257, "password too long: use at most 1024 characters"),
        ("Vq7#" * 100_000, "password too long: use at most 1024 characters"),
        ("password1234", "password is on the list of commonly used passwords: choose another"),
        ("PassWord1234", "password is on the list of commonly used passwords: choose another"),
        ("qwerty123456", "password is on the list of commonly used passwords: choose another"),
        ("alice.smith!", "password contains the username: choose one that does not"),
        ("alice-smith-2024!", "password contains the username: choose one that does not"),
        ("SmithAlice99", "password contains the username: choose one that does not"),
        ("ALICE.SMITH.ALICE", "password contains the username: choose one that does not"),
        ("smith&smith&smith", "password contains the username: choose one that does not"),
    ],
)
def test_refusals_say_why_in_one_line(password: object, reason: str) -> None:
    message = str(refusal(password))
    assert message == reason
    assert "\n" not in message


def test_the_username_rule_counts_what_is_left() -> None:
    # For "alice": 7 characters left is too few, 8 is enough.
    assert str(refusal("alice1234567", "alice")) == "password contains the username: choose one that does not"
    check_password("alice12345678", "alice")
    assert len("12345678") == MIN_REMAINDER
    # The username itself counts however it is spelled, and so does a long one alone.
    assert "username" in str(refusal("Bartholomew.X", "bartholomew.x"))
    # Parts shorter than 3 are not removed ("al" is in too many words), the whole name is.
    check_password("alphabet soup al", "al.bo")
    assert "username" in str(refusal("jo.li-jo.li-jo.li", "jo.li"))
    # Containing the username is fine when enough else is there.
    check_password("alice in wonderland 1865", "alice.smith")


def test_the_username_is_compared_casefolded_and_in_nfc() -> None:
    assert "username" in str(refusal("JOS\u00c9-ROCHA-2024", "jose\u0301.rocha"))


@pytest.mark.parametrize(
    ("password", "username"),
    [
        ("Zq9!Xk#2", "alice"),  # too short
        ("Zq9!Xk#2vW$7" * 100, "alice"),  # too long
        ("qwerty123456", "alice"),  # on the list
        ("Zqxvw.Kjpr!9", "zqxvw.kjpr"),  # built from the username
    ],
)
def test_planted_password_is_never_quoted(password: str, username: str) -> None:
    exc = refusal(password, username)
    assert_never_quoted(password, exc)
    assert exc.__cause__ is None and exc.__context__ is None


def test_common_list_is_package_data() -> None:
    resource = files("services.authn") / "data" / "common-passwords.txt"
    lines = resource.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# source: zxcvbn 4.5.0 frequency_lists passwords (MIT), top 30000 by rank"
    entries = [line for line in lines if not line.startswith("#")]
    assert common_passwords() == frozenset(entries)
    assert len(entries) == len(common_passwords()) == 11611
    assert {"password1234", "qwerty123456", "1qaz2wsx3edc"} <= common_passwords()
    assert all(entry == entry.casefold() for entry in entries)
    # The list was cut at 8 characters: a minimum below 8 would need it regenerated.
    assert min(len(entry) for entry in entries) == 8 <= MIN_LENGTH


def test_every_list_entry_long_enough_to_matter_is_refused() -> None:
    reachable = [entry for entry in common_passwords() if MIN_LENGTH <= len(entry) <= MAX_LENGTH]
    assert len(reachable) == 229
    for entry in reachable:
        assert "commonly used" in str(refusal(entry.upper(), "zz"))


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher(TINY)


def test_hash_and_verify_round_trip(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(GOOD)
    assert encoded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert GOOD not in encoded
    hasher.verify(encoded, GOOD)
    assert hasher.hash(GOOD) != encoded  # a fresh salt every time


def test_passwords_are_hashed_in_nfc(hasher: PasswordHasher) -> None:
    hasher.verify(hasher.hash("caf\u00e9 au lait 1900"), "cafe\u0301 au lait 1900")


def test_wrong_password_raises_without_quoting_it(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(GOOD)
    planted = "Zq9!Xk#2vW$7jQ"
    with pytest.raises(WrongPassword) as caught:
        hasher.verify(encoded, planted)
    assert str(caught.value) == "wrong password"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert_never_quoted(planted, caught.value)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "garbage",
        "$argon2id$",
        "$argon2id$v=19$m=abc,t=1,p=1$AAAA$BBBB",
        "$argon2id$v=19$m=1024,t=1,p=1$$",
        "$argon2id$v=19$m=0,t=0,p=0$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        None,
    ],
)
def test_unusable_hash_raises_wrong_password(hasher: PasswordHasher, encoded: object) -> None:
    with pytest.raises(WrongPassword):
        hasher.verify(encoded, GOOD)  # type: ignore[arg-type]
    assert hasher.needs_rehash(encoded)  # type: ignore[arg-type]


def test_other_argon2_types_and_truncated_hashes_are_refused(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(GOOD)
    for unusable in (encoded.replace("$argon2id$", "$argon2i$", 1), encoded[:-4]):
        with pytest.raises(WrongPassword):
            hasher.verify(unusable, GOOD)


def test_oversized_or_non_string_password_is_just_wrong(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(GOOD)
    for password in (GOOD * 1000, None, GOOD.encode()):
        with pytest.raises(WrongPassword):
            hasher.verify(encoded, password)  # type: ignore[arg-type]


def test_needs_rehash_follows_the_profile(hasher: PasswordHasher) -> None:
    encoded = hasher.hash(GOOD)
    assert not hasher.needs_rehash(encoded)
    for changed in (
        Argon2Profile(memory_kib=2048, iterations=1, parallelism=1),
        Argon2Profile(memory_kib=1024, iterations=2, parallelism=1),
        Argon2Profile(memory_kib=1024, iterations=1, parallelism=2),
    ):
        assert PasswordHasher(changed).needs_rehash(encoded)
    assert not PasswordHasher(TINY).needs_rehash(encoded)


def test_dummy_verify_always_raises_wrong_password(hasher: PasswordHasher) -> None:
    for password in (GOOD, "", "x" * 5000):
        with pytest.raises(WrongPassword) as caught:
            hasher.dummy_verify(password)
        assert str(caught.value) == "wrong password"
    # Its hash is one of the current profile, so it costs what a current user's login costs.
    assert not hasher.needs_rehash(hasher._dummy)

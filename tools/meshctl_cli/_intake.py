"""How meshctl takes a password: asked on the terminal, read from a file, or generated.

On a terminal (``sys.stdin.isatty()``) the password is asked with ``getpass``
(no echo); a new one is asked twice and checked for strength. Without a terminal
it comes from ``--password-file F`` (its first line, the newline stripped); a
file that group or others may read is refused, as CURVE secret keys are.

Passwords are held in ``bytearray`` s so they can be wiped (:func:`wipe`) once
used. Python cannot do better than that everywhere: ``getpass`` returns a
``str``, and the wire schema (``services/keyvault/schema.py``) carries a ``str``,
so short-lived immutable copies exist and are left to the garbage collector.
Nothing here prints, logs or puts a password in an error message, except the
generated recovery passphrase, which ``meshctl init`` shows exactly once.
"""

from __future__ import annotations

import getpass
import hmac
import os
import secrets
import stat
import sys
from typing import Final

from shared import BadRequest
from shared.crypto import wipe
from shared.passwords import check_strength

from ._output import CliError

#: The keyvault schema's limit for a password field (characters).
MAX_CHARS: Final = 1024
TRIES: Final = 3
# zxcvbn refuses input longer than 72 characters (its max_length); a prefix that long
# scores at least as well as any password it starts, so scoring it is enough.
_ZXCVBN_MAX: Final = 72
# Recovery passphrases: 6 groups of 5 from 32 unambiguous characters (no 0/o, 1/l):
# 150 random bits, readable aloud and typeable.
_ALPHABET: Final = "abcdefghijkmnpqrstuvwxyz23456789"
_GROUPS: Final = 6
_GROUP_LEN: Final = 5

__all__ = ["MAX_CHARS", "ask_new", "ask_password", "on_terminal", "recovery_passphrase", "strength",
           "wipe", "wire"]


def on_terminal() -> bool:
    """True when a person can be asked (stdin is a terminal)."""
    return sys.stdin.isatty()


def _checked(password: bytearray, what: str) -> bytearray:
    """``password`` if it is usable text of an acceptable length; else wipe it and refuse."""
    try:
        length = len(password.decode("utf-8"))
    except UnicodeDecodeError:
        wipe(password)
        raise CliError(f"the {what} is not UTF-8 text") from None
    if length == 0 or length > MAX_CHARS:
        wipe(password)
        raise CliError(f"the {what} is empty" if length == 0 else f"the {what} is longer than {MAX_CHARS} characters")
    return password


def read_password_file(path: str, what: str) -> bytearray:
    """The first line of ``path`` (newline stripped) as the ``what``.

    A regular file must be private (no group or other permission bits); pipes such
    as ``<(pass show mesh)`` are accepted as they are.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CliError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
            raise CliError(f"{path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                           f"a file holding the {what} must be 0600")
        # Read into one preallocated buffer (os.readv), so no unwipeable bytes copy is made.
        buf = bytearray(4 * MAX_CHARS + 2)
        filled = 0
        while filled < len(buf) and (count := os.readv(fd, [memoryview(buf)[filled:]])):
            filled += count
            if buf.find(b"\n", filled - count, filled) >= 0:
                break
    except OSError as exc:
        raise CliError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    end = buf.find(b"\n", 0, filled)
    if end < 0:
        if filled == len(buf):
            wipe(buf)
            raise CliError(f"the {what} in {path} is longer than {MAX_CHARS} characters")
        end = filled
    if end > 0 and buf[end - 1] == 0x0D:
        end -= 1  # a file written on Windows: CR LF
    line = buf[:end]  # a bytearray slice: a new, wipeable buffer
    wipe(buf)
    return _checked(line, what)


def _ask(prompt: str) -> bytearray:
    try:
        text = getpass.getpass(prompt)
    except EOFError:
        raise CliError("no password given (end of input)") from None
    return bytearray(text.encode("utf-8"))


def strength(password: bytearray) -> None:
    """Refuse a weak new password with zxcvbn's reason (never the password itself)."""
    text = password.decode("utf-8")
    try:
        check_strength(text[:_ZXCVBN_MAX] if len(text) > _ZXCVBN_MAX else text)
    except BadRequest as exc:
        raise CliError(exc.message) from None


def ask_password(path: str | None, what: str = "master password", option: str = "--password-file") -> bytearray:
    """An existing password: from ``path`` if given, else asked once on the terminal."""
    if path is not None:
        return read_password_file(path, what)
    if not on_terminal():
        raise CliError(f"no terminal to ask for the {what}: give it with {option} FILE (mode 0600)", status=2)
    return _checked(_ask(f"{what}: "), what)


def ask_new(path: str | None, what: str = "new master password", option: str = "--password-file", *,
            checked: bool = True) -> bytearray:
    """A new password, strength-checked (unless ``checked`` is False: the receiving service applies
    a policy of its own and names what is wrong): from ``path``, or asked twice on the terminal
    (up to three tries). Without either, a usage error: the caller decides whether to
    generate one instead (``meshctl init`` does)."""
    check = strength if checked else (lambda _password: None)
    if path is not None:
        password = read_password_file(path, what)
        try:
            check(password)
        except CliError:
            wipe(password)
            raise
        return password
    if not on_terminal():
        raise CliError(f"no terminal to ask for the {what}: give it with {option} FILE (mode 0600)", status=2)
    for attempt in range(1, TRIES + 1):
        last = attempt == TRIES
        try:
            password = _checked(_ask(f"{what}: "), what)
            check(password)
        except CliError as exc:
            if last:
                raise CliError(f"{exc.message} (gave up after {TRIES} tries)") from None
            print(f"meshctl: {exc.message}; try again", file=sys.stderr)
            continue
        again = _ask(f"{what} (again): ")
        same = hmac.compare_digest(again, password)
        wipe(again)
        if same:
            return password
        wipe(password)
        if last:
            raise CliError(f"the two entries did not match (gave up after {TRIES} tries)")
        print("meshctl: the two entries did not match; try again", file=sys.stderr)
    raise AssertionError("unreachable")  # every path through the loop returns or raises


def recovery_passphrase() -> bytearray:
    """A random passphrase for a mesh set up without a person to choose one (150 bits)."""
    out = bytearray()
    for group in range(_GROUPS):
        if group:
            out += b"-"
        out += "".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_LEN)).encode("ascii")
    return out


def wire(password: bytearray) -> str:
    """The password as the keyvault request field carries it (an unwipeable ``str`` copy)."""
    return password.decode("utf-8")

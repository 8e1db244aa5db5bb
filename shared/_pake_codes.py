"""Pairing codes and offers: what a person reads off the operator's screen or scans as a QR code.

A pairing code is 8 decimal digits drawn with :mod:`secrets`, shown as ``1234-5678``. It carries
26.6 bits, which is enough only because it is used once and guessed online: SPAKE2 gives an attacker
one guess per attempt and nothing to test offline, and the pairing service ends the code after an
attempt that does not complete. An offer bundles the code with where to connect and which broker key to expect.

Every check here raises :class:`~shared.BadRequest` with a message that names what is wrong and
never repeats the input: a rejected code may be the right code mistyped by one character.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote

from ._errors import BadRequest

__all__ = [
    "CODE_DIGITS",
    "MAX_ENDPOINT_LEN",
    "OFFER_PREFIX",
    "Offer",
    "check_endpoint",
    "decode_offer",
    "encode_offer",
    "new_code",
    "normalize_code",
]

CODE_DIGITS: Final = 8
#: The scheme and protocol version every offer starts with, before ``?``.
OFFER_PREFIX: Final = "curvemesh-pair:1"
MAX_ENDPOINT_LEN: Final = 200

_CODE_MESSAGE: Final = "a pairing code is 8 digits, like 1234-5678"
# ASCII digits only: str.isdigit and \d would also take Arabic-Indic or fullwidth digits.
_CODE_RE: Final = re.compile(r"([0-9]{4})[- ]?([0-9]{4})")
_FINGERPRINT_RE: Final = re.compile(r"[0-9a-f]{64}")
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# A DNS name or an IPv4 address (both are dot-separated labels), or an IPv6 address in brackets.
# No ``*``: that is a wildcard for binding, and an offer names a place to connect to.
_ENDPOINT_RE: Final = re.compile(rf"tcp://(?:(?P<name>{_LABEL}(?:\.{_LABEL})*)|\[(?P<v6>[0-9A-Fa-f:.]{{2,45}})\])"
                                 r":(?P<port>[1-9][0-9]{0,4})")
_DOTTED_NUMBERS_RE: Final = re.compile(r"[0-9.]+")
# A generous bound on a whole offer, so a hostile QR code cannot make us parse megabytes.
_MAX_OFFER_LEN: Final = 512
_OFFER_KEYS: Final = frozenset({"e", "f", "c"})


def new_code() -> str:
    """A fresh single-use pairing code, formatted for people: ``"1234-5678"``."""
    digits = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    return f"{digits[:4]}-{digits[4:]}"


def normalize_code(text: str) -> str:
    """The 8 digits of a code typed as ``1234-5678``, ``1234 5678`` or ``12345678``.

    Anything else (other separators, surrounding spaces, non-ASCII digits, a non-string) raises
    :class:`~shared.BadRequest` with one fixed message that does not repeat the input.
    """
    match = _CODE_RE.fullmatch(text) if type(text) is str else None
    if match is None:
        raise BadRequest(_CODE_MESSAGE)
    return match.group(1) + match.group(2)


def check_endpoint(text: str) -> str:
    """Return ``text`` if it is ``tcp://host:port`` with a DNS name, an IPv4 address or a
    bracketed IPv6 address and a port from 1 to 65535, at most 200 characters; else raise
    :class:`~shared.BadRequest`."""
    match = _ENDPOINT_RE.fullmatch(text) if type(text) is str and len(text) <= MAX_ENDPOINT_LEN else None
    if match is None or int(match.group("port")) > 65535:
        raise BadRequest(f"an endpoint is tcp://host:port, at most {MAX_ENDPOINT_LEN} characters")
    name, v6 = match.group("name"), match.group("v6")
    try:
        if v6 is not None:
            ipaddress.IPv6Address(v6)
        elif _DOTTED_NUMBERS_RE.fullmatch(name):
            # All digits and dots reads as an IPv4 address (no top-level domain is numeric), so it must be one.
            ipaddress.IPv4Address(name)
    except ValueError:
        raise BadRequest("an endpoint's host is a DNS name, an IPv4 address or an IPv6 address in brackets") from None
    return text


@dataclass(frozen=True, slots=True)
class Offer:
    """What the QR code of ``meshctl pair start`` carries: where the pairing entry point listens,
    the fingerprint of the broker key the device will pin, and the code.

    Construction validates every field (:class:`~shared.BadRequest` otherwise), so an offer that
    exists can always be encoded and decoded again. The code stays out of the repr.
    """

    endpoint: str
    broker_fingerprint: str
    code: str = field(repr=False)

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)
        if type(self.broker_fingerprint) is not str or not _FINGERPRINT_RE.fullmatch(self.broker_fingerprint):
            raise BadRequest("a broker fingerprint is 64 lowercase hexadecimal characters")
        if type(self.code) is not str or len(self.code) != CODE_DIGITS or normalize_code(self.code) != self.code:
            raise BadRequest("an offer's code is 8 digits with no separator")


def encode_offer(offer: Offer) -> str:
    """``curvemesh-pair:1?e=<endpoint, percent-encoded>&f=<fingerprint>&c=<code>``."""
    return f"{OFFER_PREFIX}?e={quote(offer.endpoint, safe='')}&f={offer.broker_fingerprint}&c={offer.code}"


def decode_offer(text: str) -> Offer:
    """Parse an offer strictly: the scheme and version 1, exactly the keys ``e``, ``f`` and ``c``
    once each (in any order), and values that make a valid :class:`Offer`. Raises
    :class:`~shared.BadRequest` naming the first problem, never quoting the text."""
    if type(text) is not str or len(text) > _MAX_OFFER_LEN:
        raise BadRequest(f"a pairing offer is text of at most {_MAX_OFFER_LEN} characters")
    prefix, mark, query = text.partition("?")
    if prefix != OFFER_PREFIX:
        if prefix.startswith("curvemesh-pair:"):
            raise BadRequest("this pairing offer has a version this program does not speak (it speaks 1)")
        raise BadRequest("not a curvemesh pairing offer (it starts with curvemesh-pair:1?)")
    if not mark:
        raise BadRequest("a pairing offer has the fields e, f and c after '?'")
    values: dict[str, str] = {}
    for part in query.split("&"):
        key, equals, value = part.partition("=")
        if not equals or key not in _OFFER_KEYS or key in values:
            raise BadRequest("a pairing offer has exactly the fields e, f and c, once each")
        values[key] = value
    if values.keys() != _OFFER_KEYS:
        raise BadRequest("a pairing offer has exactly the fields e, f and c, once each")
    try:
        endpoint = unquote(values["e"], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("an endpoint is tcp://host:port") from None
    return Offer(endpoint=endpoint, broker_fingerprint=values["f"], code=values["c"])

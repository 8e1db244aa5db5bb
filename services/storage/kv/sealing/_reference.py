"""The reference implementation of sealing and opening one entry, deriving everything on each call:
what each format's module functions (:func:`.v1.seal_entry`, :func:`.v2.open_entry`, ...) are made
of, with the format's payload and tags passed in. Tests and tools use them; the store uses the
cached material (:mod:`._material`), which writes the same bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from shared import BadRequest
from shared.crypto import SEAL_OVERHEAD, IntegrityError, open_sealed, seal

from ...core.errors import DamagedError
from ...core.namespace import Namespace
from ._layout import HEADER_BYTES, Entry, describe, header, parse_entry_key

__all__ = ["open_entry", "seal_entry"]


def seal_entry(entry_format: int, key: bytes | bytearray, version: int, rocks_key: bytes, plaintext: bytes) -> bytes:
    """The value of ``entry_format`` sealing ``plaintext`` at ``rocks_key`` under key ``version``.

    ``rocks_key`` must be an entry key of this version (a mismatch is a caller bug, ``ValueError``).
    """
    if parse_entry_key(rocks_key)[0] != version:
        raise ValueError("an entry is sealed under the version its key names")
    head = header(entry_format, version)
    return head + seal(key, plaintext, head + rocks_key)


def open_entry(entry_format: int, key: bytes | bytearray, subkey: bytes | bytearray, rocks_key: bytes, blob: bytes,
               parse: Callable[[bytes], tuple[list[str], bytes, bytes]],
               namespace_tag: Callable[[bytes | bytearray, Namespace], bytes],
               name_tag: Callable[[bytes | bytearray, Namespace, bytes], bytes]) -> Entry:
    """Check and open the value ``blob`` of ``entry_format`` found at ``rocks_key``; ``parse`` splits
    the payload (``ValueError``/``TypeError`` when malformed), and ``namespace_tag`` and ``name_tag``
    are the format's tag functions.

    ``key`` and ``subkey`` are the data key and names subkey of the version the rocks key names.
    Raises :class:`DamagedError` when the key or value is malformed, the header names another
    format or version, the seal does not open (flipped byte, moved value, wrong key) or the sealed
    namespace and name do not hash to the key's tags.
    """
    version, ns_tag, tag = parse_entry_key(rocks_key)
    where = describe(rocks_key)
    head = header(entry_format, version)
    if len(blob) < HEADER_BYTES + SEAL_OVERHEAD or blob[:HEADER_BYTES] != head:
        raise DamagedError(f"{where} has a malformed header: it failed its integrity check")
    try:
        plaintext = open_sealed(key, blob[HEADER_BYTES:], head + rocks_key)
    except IntegrityError:
        raise DamagedError(f"{where} failed its integrity check") from None
    try:
        (owner, subject, category), name, value = parse(plaintext)
        ns = Namespace(owner, subject, category)
    except (ValueError, TypeError, BadRequest):
        # A payload that opens but does not decode was sealed by a buggy writer: still damage.
        raise DamagedError(f"{where} opened but does not decode as an entry") from None
    if not (hmac.compare_digest(namespace_tag(subkey, ns), ns_tag)
            and hmac.compare_digest(name_tag(subkey, ns, name), tag)):
        raise DamagedError(f"{where} holds a record of another name or namespace")
    return Entry(ns, name, value)

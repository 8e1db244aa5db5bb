"""Entry format 1: HMAC-SHA256 tags and a msgpack payload. Read, and written under a key version
whose entries are already in it; new key versions use format 2 (:mod:`.v2`).

Layout of one entry sealed under version ``v`` of the ``rocksdb`` key ``K_v``::

    names_v   = derive_subkey(K_v, "storage-kv-names")              # HKDF-SHA256
    ns_tag    = HMAC-SHA256(names_v, ns.label())[:16]
    name_tag  = HMAC-SHA256(names_v, ns.label() + name)             # 32 bytes
    rocks key = b"e" || v (u32 BE) || ns_tag || name_tag            # 53 bytes
    header    = 0x01 || v (u32 BE)                                  # 5 bytes
    value     = header || seal(K_v, msgpack([[owner, subject, category], name, value]),
                               aad = header || rocks key)

The module functions are the reference, deriving everything on each call (tests and tools);
:class:`Material` is the same bytes with everything derived once.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

import msgpack

from shared.crypto import IntegrityError, KeyedHash

from ...core.errors import DamagedError
from ...core.namespace import Namespace
from . import _reference
from ._layout import NS_TAG_BYTES, Entry, describe
from ._material import NameHash, NsMaterial, VersionMaterial

__all__ = ["FORMAT", "NAMES_LABEL", "Material", "name_tag", "namespace_tag", "open_entry", "seal_entry"]

FORMAT: Final = 0x01
#: The HKDF label of the subkey that hashes namespaces and names.
NAMES_LABEL: Final = "storage-kv-names"
_unpackb: Final = msgpack.unpackb


def namespace_tag(subkey: bytes | bytearray, ns: Namespace) -> bytes:
    """The 16-byte tag of ``ns`` under one version's names subkey."""
    return hmac.new(subkey, ns.label(), hashlib.sha256).digest()[:NS_TAG_BYTES]


def name_tag(subkey: bytes | bytearray, ns: Namespace, name: bytes) -> bytes:
    """The 32-byte tag of ``name`` in ``ns`` under one version's names subkey."""
    return hmac.new(subkey, ns.label() + name, hashlib.sha256).digest()


def seal_entry(key: bytes | bytearray, version: int, rocks_key: bytes, ns: Namespace, name: bytes,
               value: bytes) -> bytes:
    """Seal ``(ns, name, value)`` as the value stored at ``rocks_key`` under key ``version``.

    ``rocks_key`` must be an entry key of this version (a mismatch is a caller bug, ``ValueError``);
    the caller has validated name and value sizes.
    """
    plaintext = msgpack.packb([[ns.owner, ns.subject, ns.category], name, value], use_bin_type=True)
    return _reference.seal_entry(FORMAT, key, version, rocks_key, plaintext)


def open_entry(key: bytes | bytearray, subkey: bytes | bytearray, rocks_key: bytes, blob: bytes) -> Entry:
    """Check and open the value ``blob`` found at ``rocks_key`` (``key`` and ``subkey``: the data key
    and names subkey of the version the rocks key names). :class:`DamagedError` when the key or value
    is malformed, the header names another format or version, the seal does not open (flipped byte,
    moved value, wrong key) or the sealed namespace and name do not hash to the key's tags.
    """
    return _reference.open_entry(FORMAT, key, subkey, rocks_key, blob, _parse_payload, namespace_tag, name_tag)


def _parse_payload(plaintext: bytes) -> tuple[list[str], bytes, bytes]:
    """``(namespace fields, name, value)`` of a payload; ``ValueError``/``TypeError`` when malformed."""
    try:
        fields, name, value = _unpackb(plaintext, raw=False)
    except msgpack.UnpackException:
        raise ValueError("not msgpack") from None
    if not (isinstance(name, bytes) and isinstance(value, bytes) and isinstance(fields, list)):
        raise TypeError("a namespace list, and name and value bytes")
    return fields, name, value


class Material(VersionMaterial):
    """Format 1 under one key version, derived once (module notes)."""

    FORMAT = FORMAT
    NAMES_LABEL = NAMES_LABEL

    def __init__(self, version: int, key: bytearray) -> None:
        super().__init__(version, key)
        # msgpack.packb makes a Packer per call, which costs more than the packing: one, reused (the
        # store's lock serialises its callers; a pack call holds the GIL and keeps nothing between calls).
        self._pack = msgpack.Packer(use_bin_type=True).pack

    @staticmethod
    def _names_hash(subkey: bytearray) -> NameHash:
        return KeyedHash(subkey)

    def _payload(self, nsm: NsMaterial, name: bytes, value: bytes) -> bytes:
        payload: bytes = self._pack([nsm.fields, name, value])
        return payload

    def _parse(self, plaintext: bytes) -> tuple[list[str], bytes, bytes]:
        return _parse_payload(plaintext)

    def open_value(self, rocks_key: bytes, blob: bytes, nsm: NsMaterial, name: bytes) -> bytes:
        """See :meth:`VersionMaterial.open_value`. The happy path is one decryption, one msgpack
        decode and three comparisons (a name of another type, fields that are not the namespace's
        list, a value that is not bytes all compare unequal); which error it was is worked out only
        once one failed."""
        try:
            plaintext = self.sealer.open(blob, rocks_key)
        except IntegrityError:
            raise self.damage(rocks_key, blob) from None
        try:
            fields, got_name, value = _unpackb(plaintext, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry") from None
        if got_name == name and fields == nsm.fields and value.__class__ is bytes:
            return value  # type: ignore[no-any-return]
        if not (isinstance(got_name, bytes) and isinstance(value, bytes) and isinstance(fields, list)):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry")
        raise DamagedError(f"{describe(rocks_key)} holds a record of another name or namespace")

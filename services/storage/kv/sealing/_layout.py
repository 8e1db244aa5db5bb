"""What every entry format shares: the RocksDB key layout, the value header, and where an entry is
named in messages.

Every entry, whatever its format, is filed under ``b"e" || v (u32 BE) || ns_tag (16) || name_tag
(32)`` (53 bytes) and its value starts with ``format (1 byte) || v (u32 BE)``. What differs between
formats is how the tags are computed and how the sealed payload is laid out (:mod:`.v1`, :mod:`.v2`).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from ...core.errors import DamagedError
from ...core.namespace import Namespace

__all__ = [
    "ENTRY_KEY_BYTES", "ENTRY_PREFIX", "HEADER_BYTES", "MAX_CACHED_NAMESPACES", "NAME_TAG_BYTES", "NS_START",
    "NS_TAG_BYTES", "Entry", "describe", "entry_key", "header", "namespace_prefix", "parse_entry_key",
    "version_prefix",
]

#: The first byte of every RocksDB key that holds an entry (other record kinds get other letters).
ENTRY_PREFIX: Final = b"e"
NS_TAG_BYTES: Final = 16
NAME_TAG_BYTES: Final = 32
_VERSION: Final = struct.Struct(">I")
#: An entry value's header: its format byte and its key version.
HEADER_BYTES: Final = 1 + _VERSION.size
NS_START: Final = len(ENTRY_PREFIX) + _VERSION.size
_NS_END: Final = NS_START + NS_TAG_BYTES
ENTRY_KEY_BYTES: Final = _NS_END + NAME_TAG_BYTES
#: Namespaces whose material one version keeps; past that the cache is emptied and refilled (a
#: namespace's material is about 300 bytes and a keyed hash state, remade in a few microseconds).
MAX_CACHED_NAMESPACES: Final = 4096


class Entry(NamedTuple):
    """What an opened entry holds."""

    namespace: Namespace
    name: bytes
    value: bytes


def header(entry_format: int, version: int) -> bytes:
    """The 5-byte header of an entry value of ``entry_format`` under key ``version``."""
    return bytes([entry_format]) + version_prefix(version)[len(ENTRY_PREFIX):]


def version_prefix(version: int) -> bytes:
    """The key prefix shared by every entry sealed under ``version``."""
    if not 1 <= version < 2**32:
        raise ValueError("a key version is 1 to 2**32 - 1")
    return ENTRY_PREFIX + _VERSION.pack(version)


def namespace_prefix(version: int, ns_tag: bytes) -> bytes:
    """The key prefix shared by one namespace's entries under ``version``."""
    if len(ns_tag) != NS_TAG_BYTES:
        raise ValueError(f"a namespace tag is {NS_TAG_BYTES} bytes")
    return version_prefix(version) + ns_tag


def entry_key(version: int, ns_tag: bytes, name_tag: bytes) -> bytes:
    """The RocksDB key of an entry. Wrong tag lengths are a caller bug (``ValueError``)."""
    if len(name_tag) != NAME_TAG_BYTES:
        raise ValueError(f"a name tag is {NAME_TAG_BYTES} bytes")
    return namespace_prefix(version, ns_tag) + name_tag


def parse_entry_key(rocks_key: bytes) -> tuple[int, bytes, bytes]:
    """``(version, ns_tag, name_tag)`` of an entry key; :class:`DamagedError` when it is not one."""
    if len(rocks_key) != ENTRY_KEY_BYTES or not rocks_key.startswith(ENTRY_PREFIX):
        raise DamagedError(f"rocksdb holds a key that is not an entry key ({len(rocks_key)} bytes)")
    (version,) = _VERSION.unpack_from(rocks_key, len(ENTRY_PREFIX))
    if version == 0:
        raise DamagedError("rocksdb holds an entry key with key version 0")
    return version, rocks_key[NS_START:_NS_END], rocks_key[_NS_END:]


def describe(rocks_key: bytes) -> str:
    """Where an entry is, for messages: version and tag prefixes, nothing that was sealed."""
    if len(rocks_key) != ENTRY_KEY_BYTES:
        return f"rocksdb key of {len(rocks_key)} bytes"
    (version,) = _VERSION.unpack_from(rocks_key, len(ENTRY_PREFIX))
    return (f"rocksdb entry v{version} in namespace #{rocks_key[NS_START:NS_START + 4].hex()} "
            f"(name #{rocks_key[_NS_END:_NS_END + 4].hex()})")

"""Sealing of RocksDB entries: pure functions over bytes, no database.

RocksDB has no usable encrypted environment, so storage seals every entry itself (DESIGN.md
invariant 5). Record names may carry user data, so neither names nor namespaces appear on disk
in the clear: the RocksDB key is made of keyed hashes, and the name is stored sealed in the value.

Every format files an entry under ``b"e" || v (u32 BE) || ns_tag (16) || name_tag (32)`` and seals
its value as ``header || seal(K_v, payload, aad = header || rocks key)`` with ``header = format ||
v (u32 BE)`` (:mod:`._layout`). Two formats exist:

- :mod:`.v1`: HMAC-SHA256 tags and a msgpack payload, the format of every store written before
  issue 18;
- :mod:`.v2`: keyed BLAKE2b tags and a length-prefixed payload, cheaper to hash and to check.

Why each part is there, in both:

- The rocks key is associated data, so a value copied to another key (another name, namespace
  or version) fails to open. The header is associated data too and must name the same format and
  version as the key, so editing it is detected before any key is tried.
- The namespace is sealed inside the value because rotation must compute the entry's key under
  the new version, and the old key holds only a one-way tag of it.
- After decrypting, the namespace and name are checked against the key's tags: hashed again
  when the entry was found by iterating, compared for equality on a get (which computed the key
  from them a moment before): a writer bug that filed an entry under the wrong tags is reported
  instead of served.

A format belongs to a key version: all entries of one version are in one format, and a store
learns it from the version's first entries that open (:func:`format_of`). A version with no
entries yet, i.e. every version made after this code landed, is written in :data:`NEWEST_FORMAT`;
a version that already holds format-1 entries keeps writing format 1 until rotation reseals its
entries under a new version. So nothing on disk is rewritten to change format, and nothing written
before is lost.

Every failure raises :class:`~..core.errors.DamagedError` naming the entry by version and tag
prefixes (:func:`describe`, built only once a check has failed), never by its contents or any key bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shared.crypto import IntegrityError, Sealer

from . import v1, v2
from ._layout import (
    ENTRY_KEY_BYTES,
    ENTRY_PREFIX,
    HEADER_BYTES,
    NAME_TAG_BYTES,
    NS_TAG_BYTES,
    Entry,
    describe,
    entry_key,
    header,
    namespace_prefix,
    parse_entry_key,
    version_prefix,
)
from ._material import NsMaterial, Uncached, VersionMaterial, check_items

__all__ = [
    "ENTRY_KEY_BYTES", "ENTRY_PREFIX", "FORMATS", "HEADER_BYTES", "NAME_TAG_BYTES", "NEWEST_FORMAT", "NS_TAG_BYTES",
    "PROBE_ENTRIES", "Entry", "NsMaterial", "Uncached", "VersionMaterial", "check_items", "describe", "entry_key",
    "format_of", "header", "material", "namespace_prefix", "parse_entry_key", "v1", "v2", "version_prefix",
]

#: Each entry format's byte and its material.
FORMATS: Final[dict[int, type[VersionMaterial]]] = {v1.FORMAT: v1.Material, v2.FORMAT: v2.Material}
#: The format of every key version that holds no entry yet.
NEWEST_FORMAT: Final = v2.FORMAT
#: How many of a version's first entries :func:`format_of` is given to find one that opens.
PROBE_ENTRIES: Final = 8


def material(version: int, key: bytearray, entry_format: int) -> VersionMaterial:
    """The material of key ``version`` (key ``key``) in ``entry_format`` (one of :data:`FORMATS`)."""
    return FORMATS[entry_format](version, key)


def format_of(version: int, key: bytes | bytearray, first: Sequence[tuple[bytes, bytes]]) -> int:
    """The entry format of key ``version``, from ``first``: its first entries in key order (up to
    :data:`PROBE_ENTRIES`, as ``(rocks key, value)``), under its key ``key``.

    - No entry: :data:`NEWEST_FORMAT` (a new version).
    - Otherwise the format of the first entry that opens under ``key`` with the header it carries.
      The format byte is associated data, so an edited one makes that entry fail, never changes the
      answer; an entry damaged by other means is skipped the same way.
    - None opens (the key is not the one these entries were sealed under, or every probed entry is
      damaged): the format the first one's header names, when it is one we know, so reads miss or
      refuse exactly as they did before formats existed, and verify names every such entry.
      Else :data:`NEWEST_FORMAT`.
    """
    for rocks_key, blob in first:
        known = blob[:1] and blob[0] in FORMATS
        if not known:
            continue
        sealer = Sealer(key, frame=header(blob[0], version))
        try:
            sealer.open(blob, rocks_key)
        except IntegrityError:
            continue
        finally:
            sealer.close()
        return blob[0]
    if first and first[0][1][:1] and first[0][1][0] in FORMATS:
        return first[0][1][0]
    return NEWEST_FORMAT

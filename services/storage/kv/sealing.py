"""Sealing of RocksDB entries: pure functions over bytes, no database.

RocksDB has no usable encrypted environment, so storage seals every entry itself (DESIGN.md
invariant 5). Record names may carry user data, so neither names nor namespaces appear on disk
in the clear: the RocksDB key is made of keyed hashes, and the name is stored sealed in the value.

Layout of one entry sealed under version ``v`` of the ``rocksdb`` key ``K_v``::

    names_v   = derive_subkey(K_v, "storage-kv-names")              # HKDF-SHA256, cached per version
    ns_tag    = HMAC-SHA256(names_v, ns.label())[:16]
    name_tag  = HMAC-SHA256(names_v, ns.label() + name)             # 32 bytes
    rocks key = b"e" || v (u32 BE) || ns_tag || name_tag            # 53 bytes
    header    = 0x01 (entry format) || v (u32 BE)                   # 5 bytes
    value     = header || seal(K_v, msgpack([[owner, subject, category], name, value]),
                               aad = header || rocks key)

``ns.label()`` is a msgpack array and so self-delimiting: ``label + name`` is unambiguous. All of
a namespace's entries under one version share the 21-byte prefix ``b"e" || v || ns_tag``, which is
how a namespace is iterated without knowing its names.

Why each part is there:

- The rocks key is associated data, so a value copied to another key (another name, namespace
  or version) fails to open. The header is associated data too and must name the same version
  as the key, so editing it is detected before any key is tried.
- The namespace is sealed inside the value because rotation must compute the entry's key under
  the new version, and the old key holds only a one-way tag of it.
- After decrypting, the namespace and name are hashed again and compared (in constant time)
  with the tags of the key they were found under: a writer bug that filed an entry under the
  wrong tags is reported instead of served.

Every failure raises :class:`~..core.errors.DamagedError` naming the entry by version and tag prefixes
(:func:`describe`, built only once a check has failed), never by its contents or any key bytes.

Two implementations of that one format:

- the module functions (:func:`namespace_tag`, :func:`name_tag`, :func:`seal_entry`,
  :func:`open_entry`) derive everything on each call: the reference, used by tests and tools;
- :class:`VersionMaterial`, what :class:`~.store.KvStore` uses: one key version's AES-GCM context
  (:class:`~shared.crypto.Sealer`) and names HMAC (:class:`~shared.crypto.KeyedHash`), and per
  namespace its label, tag and HMAC state with the label already fed, each made once while the
  store is unsealed and dropped by :meth:`VersionMaterial.wipe` (seal, retirement, a replaced key).
  The bytes it writes are exactly the reference's (tests/test_storage_kv.py checks a fixed vector).

HMAC keys pass through ``cryptography`` and OpenSSL, which keep their own copies of the keyed state
until the context is freed (shared/_crypto.py lists the limits of wiping): the material drops its
contexts on wipe, and wipes its names subkey ``bytearray`` as soon as the HMAC context is keyed.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final, NamedTuple

import msgpack

from shared import BadRequest
from shared.crypto import SEAL_OVERHEAD, IntegrityError, KeyedHash, Sealer, derive_subkey, open_sealed, seal, wipe

from ..core.errors import DamagedError
from ..core.namespace import Namespace

__all__ = [
    "ENTRY_FORMAT", "ENTRY_KEY_BYTES", "ENTRY_PREFIX", "HEADER_BYTES", "NAMES_LABEL", "NAME_TAG_BYTES",
    "NS_TAG_BYTES", "Entry", "VersionMaterial", "describe", "entry_key", "entry_version", "name_tag",
    "namespace_prefix", "namespace_tag", "open_entry", "parse_entry_key", "seal_entry", "version_prefix",
]

#: The first byte of every RocksDB key that holds an entry (other record kinds get other letters).
ENTRY_PREFIX: Final = b"e"
#: The first byte of every entry value; a new layout takes a new byte.
ENTRY_FORMAT: Final = 0x01
#: The HKDF label of the subkey that hashes namespaces and names.
NAMES_LABEL: Final = "storage-kv-names"
NS_TAG_BYTES: Final = 16
NAME_TAG_BYTES: Final = 32
_VERSION: Final = struct.Struct(">I")
HEADER_BYTES: Final = 1 + _VERSION.size
_NS_START: Final = len(ENTRY_PREFIX) + _VERSION.size
_NS_END: Final = _NS_START + NS_TAG_BYTES
ENTRY_KEY_BYTES: Final = _NS_END + NAME_TAG_BYTES
#: Namespaces whose material one version keeps; past that the cache is emptied and refilled (a
#: namespace's material is about 300 bytes and an HMAC context, remade in a few microseconds).
MAX_CACHED_NAMESPACES: Final = 4096
_unpackb: Final = msgpack.unpackb


class Entry(NamedTuple):
    """What an opened entry holds."""

    namespace: Namespace
    name: bytes
    value: bytes


def namespace_tag(subkey: bytes | bytearray, ns: Namespace) -> bytes:
    """The 16-byte tag of ``ns`` under one version's names subkey."""
    return hmac.new(subkey, ns.label(), hashlib.sha256).digest()[:NS_TAG_BYTES]


def name_tag(subkey: bytes | bytearray, ns: Namespace, name: bytes) -> bytes:
    """The 32-byte tag of ``name`` in ``ns`` under one version's names subkey."""
    return hmac.new(subkey, ns.label() + name, hashlib.sha256).digest()


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
    return version, rocks_key[_NS_START:_NS_END], rocks_key[_NS_END:]


def describe(rocks_key: bytes) -> str:
    """Where an entry is, for messages: version and tag prefixes, nothing that was sealed."""
    if len(rocks_key) != ENTRY_KEY_BYTES:
        return f"rocksdb key of {len(rocks_key)} bytes"
    (version,) = _VERSION.unpack_from(rocks_key, len(ENTRY_PREFIX))
    return (f"rocksdb entry v{version} in namespace #{rocks_key[_NS_START:_NS_START + 4].hex()} "
            f"(name #{rocks_key[_NS_END:_NS_END + 4].hex()})")


def seal_entry(key: bytes | bytearray, version: int, rocks_key: bytes, ns: Namespace, name: bytes,
               value: bytes) -> bytes:
    """Seal ``(ns, name, value)`` as the value stored at ``rocks_key`` under key ``version``.

    ``rocks_key`` must be the :func:`entry_key` of this version (a mismatch is a caller bug,
    ``ValueError``); the caller has validated name and value sizes.
    """
    if parse_entry_key(rocks_key)[0] != version:
        raise ValueError("an entry is sealed under the version its key names")
    header = bytes([ENTRY_FORMAT]) + _VERSION.pack(version)
    plaintext = msgpack.packb([[ns.owner, ns.subject, ns.category], name, value], use_bin_type=True)
    return header + seal(key, plaintext, header + rocks_key)


def entry_version(blob: bytes) -> int:
    """The key version an entry value's header names; :class:`DamagedError` when it has none."""
    if len(blob) < HEADER_BYTES or blob[0] != ENTRY_FORMAT:
        raise DamagedError("a rocksdb entry value has no valid header")
    (version,) = _VERSION.unpack_from(blob, 1)
    return int(version)


def open_entry(key: bytes | bytearray, subkey: bytes | bytearray, rocks_key: bytes, blob: bytes) -> Entry:
    """Check and open the value ``blob`` found at ``rocks_key``.

    ``key`` and ``subkey`` are the data key and names subkey of the version the rocks key names.
    Raises :class:`DamagedError` when the key or value is malformed, the header names another
    version, the seal does not open (flipped byte, moved value, wrong key) or the sealed
    namespace and name do not hash to the key's tags.
    """
    version, ns_tag, tag = parse_entry_key(rocks_key)
    where = describe(rocks_key)
    if (len(blob) < HEADER_BYTES + SEAL_OVERHEAD or blob[0] != ENTRY_FORMAT
            or _VERSION.unpack_from(blob, 1)[0] != version):
        raise DamagedError(f"{where} has a malformed header: it failed its integrity check")
    try:
        plaintext = open_sealed(key, blob[HEADER_BYTES:], blob[:HEADER_BYTES] + rocks_key)
    except IntegrityError:
        raise DamagedError(f"{where} failed its integrity check") from None
    try:
        (owner, subject, category), name, value = msgpack.unpackb(plaintext, raw=False)
        if not (isinstance(name, bytes) and isinstance(value, bytes)):
            raise TypeError("name and value are bytes")
        ns = Namespace(owner, subject, category)
    except (ValueError, TypeError, BadRequest, msgpack.UnpackException):
        # A payload that opens but does not decode was sealed by a buggy writer: still damage.
        raise DamagedError(f"{where} opened but does not decode as an entry") from None
    if not (hmac.compare_digest(namespace_tag(subkey, ns), ns_tag)
            and hmac.compare_digest(name_tag(subkey, ns, name), tag)):
        raise DamagedError(f"{where} holds a record of another name or namespace")
    return Entry(ns, name, value)


class _NsMaterial(NamedTuple):
    """One namespace under one version: what its keys start with, the HMAC with its label fed, and
    its fields as the sealed payload holds them (a list, as msgpack decodes it)."""

    prefix: bytes
    names: KeyedHash
    fields: list[str]


class VersionMaterial:
    """Everything one key version ``version`` of key ``key`` seals and names entries with, derived
    once (module notes). Byte for byte the format of :func:`seal_entry` and :func:`open_entry`.

    ``key`` is kept only as the identity of the KeySet's ``bytearray`` it was derived from, so the
    store notices a version whose key was replaced; the material never reads it again. After
    :meth:`wipe` every method raises ``ValueError``.
    """

    def __init__(self, version: int, key: bytearray) -> None:
        self.version = version
        self.key = key
        self.header = bytes([ENTRY_FORMAT]) + _VERSION.pack(version)
        self._version_prefix = version_prefix(version)
        self.sealer = Sealer(key)
        #: The names subkey, wiped as soon as the HMAC context holds its keyed state.
        self.subkey = derive_subkey(key, NAMES_LABEL)
        try:
            self.names: KeyedHash | None = KeyedHash(self.subkey)
        finally:
            wipe(self.subkey)
        #: (owner, subject, category) -> that namespace's material: keyed by a plain tuple, whose hash
        #: is computed in C (a Namespace's is a Python call), as the get path looks it up on every call.
        self.namespaces: dict[tuple[str, str, str], _NsMaterial] = {}
        # msgpack.packb makes a Packer per call, which costs more than the packing: one, reused (the
        # store's lock serialises its callers; a pack call holds the GIL and keeps nothing between calls).
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def namespace(self, ns: Namespace) -> _NsMaterial:
        """The material of ``ns`` (made on first use)."""
        key = (ns.owner, ns.subject, ns.category)
        found = self.namespaces.get(key)
        if found is not None:
            return found
        if self.names is None:
            raise ValueError("this key version's material was wiped")
        label = ns.label()
        if len(self.namespaces) >= MAX_CACHED_NAMESPACES:
            self._drop_namespaces()
        made = _NsMaterial(self._version_prefix + self.names.digest(label)[:NS_TAG_BYTES], self.names.extend(label),
                           [ns.owner, ns.subject, ns.category])
        self.namespaces[key] = made
        return made

    def rocks_key(self, ns: Namespace, name: bytes) -> bytes:
        """:func:`entry_key` of ``name`` in ``ns`` under this version."""
        m = self.namespace(ns)
        return m.prefix + m.names.digest(name)

    def seal(self, rocks_key: bytes, ns: Namespace, name: bytes, value: bytes) -> bytes:
        """:func:`seal_entry` for ``rocks_key``, which must be :meth:`rocks_key` of ``(ns, name)``."""
        plaintext = self._pack([[ns.owner, ns.subject, ns.category], name, value])
        return self.header + self.sealer.seal(plaintext, self.header + rocks_key)

    def seal_items(self, items: list[tuple[Namespace, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``(rocks key, value)`` of each ``(ns, name, value)``: :meth:`rocks_key` and :meth:`seal`, the
        same bytes, for a whole write batch (one nonce draw for all, see :meth:`Sealer.seal_many`)."""
        header, pack = self.header, self._pack
        rocks_keys: list[bytes] = []
        payloads: list[tuple[bytes, bytes]] = []
        last: Namespace | None = None
        nsm = None
        for ns, name, value in items:
            if ns is not last or nsm is None:
                nsm, last = self.namespace(ns), ns
            rocks_key = nsm.prefix + nsm.names.digest(name)
            rocks_keys.append(rocks_key)
            payloads.append((pack([nsm.fields, name, value]), header + rocks_key))
        return [(rocks_key, header + sealed)
                for rocks_key, sealed in zip(rocks_keys, self.sealer.seal_many(payloads), strict=True)]

    def _open_payload(self, rocks_key: bytes, blob: bytes) -> tuple[list[str], bytes, bytes]:
        plaintext = self._open_plaintext(rocks_key, blob)
        try:
            fields, name, value = msgpack.unpackb(plaintext, raw=False)
            if not (isinstance(name, bytes) and isinstance(value, bytes) and isinstance(fields, list)):
                raise TypeError("name and value are bytes")
        except (ValueError, TypeError, msgpack.UnpackException):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry") from None
        return fields, name, value

    def _open_plaintext(self, rocks_key: bytes, blob: bytes) -> bytes:
        """The sealed payload of ``blob``: its header checked, then opened in place (no copy of the
        sealed part) with ``header || rocks_key`` as associated data."""
        if blob[:HEADER_BYTES] != self.header:
            raise DamagedError(f"{describe(rocks_key)} has a malformed header: it failed its integrity check")
        try:
            # The header is the same bytes as self.header (just checked): associated data as sealed.
            # A blob too short to hold a seal after the header is IntegrityError, i.e. damage, too.
            return self.sealer.open(blob, self.header + rocks_key, HEADER_BYTES)
        except IntegrityError:
            raise DamagedError(f"{describe(rocks_key)} failed its integrity check") from None

    def open_value(self, rocks_key: bytes, blob: bytes, nsm: _NsMaterial, name: bytes) -> bytes:
        """The value of the entry ``blob`` found at ``rocks_key``, which the caller computed a moment
        ago from ``nsm`` (:meth:`namespace` of ``ns``) and ``name``, as :meth:`rocks_key` does (the
        get path). :class:`DamagedError` as :func:`open_entry`.

        Why no HMAC here, where :func:`open_entry` hashes the sealed namespace and name again: the
        seal opened with ``header || rocks_key`` as associated data, so only a holder of this
        version's key wrote this value for exactly these tags; and the tags are those of
        ``(ns, name)``, computed by our caller. So the sealed namespace and name equal ``(ns, name)``
        exactly when they hash to the key's tags (barring an HMAC-SHA256 collision): comparing them
        for equality is the same check as re-hashing, without the two HMACs. A writer bug that filed
        a record under the wrong tags is still reported, never served.

        The happy path is one decryption, one msgpack decode and three comparisons (a name of
        another type, fields that are not the namespace's list, a value that is not bytes all
        compare unequal); which error it was is worked out only once one failed.
        """
        # _open_plaintext, inlined (the get path).
        header = self.header
        if blob[:HEADER_BYTES] != header:
            raise DamagedError(f"{describe(rocks_key)} has a malformed header: it failed its integrity check")
        try:
            plaintext = self.sealer.open(blob, header + rocks_key, HEADER_BYTES)
        except IntegrityError:
            raise DamagedError(f"{describe(rocks_key)} failed its integrity check") from None
        try:
            fields, got_name, value = _unpackb(plaintext, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry") from None
        if got_name == name and fields == nsm.fields and value.__class__ is bytes:
            return value
        if not (isinstance(got_name, bytes) and isinstance(value, bytes) and isinstance(fields, list)):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry")
        raise DamagedError(f"{describe(rocks_key)} holds a record of another name or namespace")

    def open(self, rocks_key: bytes, blob: bytes) -> Entry:
        """:func:`open_entry` under this version: for entries found by iterating, whose namespace and
        name are learnt from the sealed payload and so are checked against the key's tags by HMAC."""
        version, ns_tag, tag = parse_entry_key(rocks_key)
        if version != self.version:
            raise DamagedError(f"{describe(rocks_key)} has a malformed header: it failed its integrity check")
        fields, name, value = self._open_payload(rocks_key, blob)
        try:
            owner, subject, category = fields
            ns = Namespace(owner, subject, category)
        except (ValueError, TypeError, BadRequest):
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry") from None
        m = self.namespace(ns)
        if not (hmac.compare_digest(m.prefix[_NS_START:], ns_tag) and hmac.compare_digest(m.names.digest(name), tag)):
            raise DamagedError(f"{describe(rocks_key)} holds a record of another name or namespace")
        return Entry(ns, name, value)

    def _drop_namespaces(self) -> None:
        for m in self.namespaces.values():
            m.names.close()
        self.namespaces.clear()

    def wipe(self) -> None:
        """Drop every context and namespace entry, and zero the subkey (already zero). Idempotent."""
        self._drop_namespaces()
        if self.names is not None:
            self.names.close()
            self.names = None
        self.sealer.close()
        wipe(self.subkey)

    @property
    def wiped(self) -> bool:
        return self.names is None

"""What one key version seals and names entries with, derived once while storage is unsealed.

:class:`VersionMaterial` is what :class:`~..store.KvStore` uses: one key version's AES-GCM context
(a :class:`~shared.crypto.Sealer` framed by the entry header, so the header is checked and bound in
one step), its keyed names hash, and per namespace its key prefix, the hash state with the label
already fed and what that namespace's sealed payloads start with; each made once while the store is
unsealed and dropped by :meth:`VersionMaterial.wipe` (seal, retirement, a replaced key). Each format
(:mod:`.v1`, :mod:`.v2`) is a subclass that fixes the names hash and the payload layout; the bytes
each writes are exactly its reference functions' (tests/test_storage_kv.py checks fixed vectors).

Keyed hash and AES-GCM states live in ``cryptography``/OpenSSL and ``hashlib``, which keep their own
copies of the keyed state until the object is freed (shared/_crypto.py lists the limits of wiping):
the material drops its states on wipe, and wipes its names subkey ``bytearray`` as soon as the hash
state is keyed.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Protocol

from shared import BadRequest
from shared.crypto import IntegrityError, Sealer, derive_subkey, wipe

from ...core.errors import DamagedError
from ...core.namespace import Namespace
from ._layout import (
    HEADER_BYTES,
    MAX_CACHED_NAMESPACES,
    NS_START,
    NS_TAG_BYTES,
    Entry,
    describe,
    header,
    parse_entry_key,
    version_prefix,
)

__all__ = ["DbGet", "NameHash", "NsMaterial", "Reader", "Uncached", "VersionMaterial", "check_items"]


def check_items(items: list[Any], most_name: int, most_value: int) -> None:
    """Refuse a write batch (``(ns, name, value)`` items) with :class:`~shared.BadRequest` unless
    every name is 1 to ``most_name`` bytes and every value at most ``most_value`` bytes.

    It is here, compiled with the formats, because it runs once for every item a put writes: the
    interpreted loop was about a fiftieth of a synced put. ``items`` is typed ``Any`` on purpose:
    a compiled function checks the types it declares and would raise ``TypeError`` for a ``str``
    name, where a caller must get ``BadRequest``.
    """
    for item in items:
        name, value = item[1], item[2]
        if not (isinstance(name, bytes) and 0 < len(name) <= most_name):
            raise BadRequest(f"a record name is 1 to {most_name} bytes")
        if not isinstance(value, bytes) or len(value) > most_value:
            raise BadRequest(f"a record value is at most {most_value} bytes")


class Uncached(ValueError):
    """A read that may change nothing found a namespace whose material is not made yet."""


class NameHash(Protocol):
    """A keyed hash keyed once: :class:`~shared.crypto.KeyedHash` (format 1), ``v2._Names`` (format 2)."""

    def digest(self, data: bytes = b"") -> bytes: ...
    def extend(self, prefix: bytes) -> NameHash: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...


#: RocksDB's get as the material reads with it: the value at a key, or None.
DbGet = Callable[[bytes], bytes | None]
#: One namespace's get under one version (:attr:`VersionMaterial.readers`): ``read(db_get, name)``.
Reader = Callable[[DbGet, bytes], bytes | None]


class NsMaterial(NamedTuple):
    """One namespace under one version: what its keys start with, the names hash with its label fed,
    and what its sealed payloads start with (``fields``, the list msgpack decodes, for format 1;
    ``head``, the length-prefixed label, for format 2)."""

    prefix: bytes
    names: NameHash
    fields: list[str]
    head: bytes


class VersionMaterial:
    """Everything key version ``version`` of key ``key`` seals and names entries with, in one format.

    ``key`` is kept only as the identity of the KeySet's ``bytearray`` it was derived from, so the
    store notices a version whose key was replaced; the material never reads it again. After
    :meth:`wipe` every method raises ``ValueError``.
    """

    #: The entry format byte, and the HKDF label of the subkey that hashes names (set by each format).
    FORMAT: ClassVar[int]
    NAMES_LABEL: ClassVar[str]

    def __init__(self, version: int, key: bytearray) -> None:
        self.version = version
        self.key = key
        self.header = header(self.FORMAT, version)
        self._version_prefix = version_prefix(version)
        self.sealer = Sealer(key, frame=self.header)
        #: The names subkey, wiped as soon as the hash state holds its keyed state.
        self.subkey = derive_subkey(key, self.NAMES_LABEL)
        try:
            self.names: NameHash | None = self._names_hash(self.subkey)
        finally:
            wipe(self.subkey)
        #: (owner, subject, category) -> that namespace's material: keyed by a plain tuple, whose hash
        #: is computed in C (a Namespace's is a Python call), as the get path looks its reader up by
        #: the same key on every call.
        self.namespaces: dict[tuple[str, str, str], NsMaterial] = {}
        #: The same key -> that namespace's get (:meth:`_reader`), which the store's get calls directly.
        self.readers: dict[tuple[str, str, str], Reader] = {}

    # -- what a format defines -----------------------------------------------------------------

    @staticmethod
    def _names_hash(subkey: bytearray) -> NameHash:
        raise NotImplementedError

    def _payload(self, nsm: NsMaterial, name: bytes, value: bytes) -> bytes:
        """The plaintext sealed for ``(ns, name, value)``."""
        raise NotImplementedError

    def _parse(self, plaintext: bytes) -> tuple[list[str], bytes, bytes]:
        """``(namespace fields, name, value)`` of a payload; ``ValueError``/``TypeError`` when malformed."""
        raise NotImplementedError

    def open_value(self, rocks_key: bytes, blob: bytes, nsm: NsMaterial, name: bytes) -> bytes:
        """The value of the entry ``blob`` found at ``rocks_key``, which the caller computed a moment
        ago from ``nsm`` (:meth:`namespace` of ``ns``) and ``name``, as :meth:`rocks_key` does (the get
        path). :class:`DamagedError` as :meth:`open`.

        Why no keyed hash here, where :meth:`open` hashes the sealed namespace and name again: the
        seal opened with ``header || rocks_key`` as associated data, so only a holder of this
        version's key wrote this value for exactly these tags; and the tags are those of
        ``(ns, name)``, computed by our caller. So the sealed namespace and name equal ``(ns, name)``
        exactly when they hash to the key's tags (barring a collision of the keyed hash): comparing
        them for equality is the same check as re-hashing, without the hashes. A writer bug that
        filed a record under the wrong tags is still reported, never served.
        """
        raise NotImplementedError

    def read(self, db_get: DbGet, ns: Namespace, name: bytes) -> bytes | None:
        """The value of ``name`` in ``ns`` under this version, looked up with ``db_get`` (RocksDB's
        get: the value at a key, or None); None when this version holds no such entry.
        :class:`DamagedError` as :meth:`open_value`; whatever ``db_get`` raises passes through.

        A read changes nothing: the material of ``ns`` must be made already (:meth:`namespace`),
        else it raises :class:`Uncached`. So the store's lock-free get cannot change what a caller
        holding the lock reads; it makes a new namespace's material under the lock, then reads.

        The get path: the namespace's reader (:attr:`readers`, made by :meth:`_reader`)."""
        return (self.readers.get((ns.owner, ns.subject, ns.category)) or self._uncached())(db_get, name)

    def _reader(self, nsm: NsMaterial) -> Reader:
        """The get of the namespace ``nsm``: :meth:`rocks_key`, the lookup and :meth:`open_value`. A
        format may write them out in one function; whatever it makes raises ``ValueError`` once the
        material is wiped."""
        prefix, names = nsm.prefix, nsm.names
        open_value = self.open_value

        def read(db_get: DbGet, name: bytes) -> bytes | None:
            rocks_key = prefix + names.digest(name)
            blob = db_get(rocks_key)
            return None if blob is None else open_value(rocks_key, blob, nsm, name)
        return read

    @staticmethod
    def _uncached() -> Reader:
        raise Uncached("this namespace's material is not made yet")

    # -- shared by every format ----------------------------------------------------------------

    def namespace(self, ns: Namespace) -> NsMaterial:
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
        made = NsMaterial(self._version_prefix + self.names.digest(label)[:NS_TAG_BYTES], self.names.extend(label),
                          [ns.owner, ns.subject, ns.category], len(label).to_bytes(2, "big") + label)
        self.namespaces[key] = made
        self.readers[key] = self._reader(made)
        return made

    def rocks_key(self, ns: Namespace, name: bytes) -> bytes:
        """The entry key of ``name`` in ``ns`` under this version."""
        m = self.namespace(ns)
        return m.prefix + m.names.digest(name)

    def seal(self, rocks_key: bytes, ns: Namespace, name: bytes, value: bytes) -> bytes:
        """The value to store at ``rocks_key``, which must be :meth:`rocks_key` of ``(ns, name)``."""
        return self.sealer.seal(self._payload(self.namespace(ns), name, value), rocks_key)

    def seal_items(self, items: list[tuple[Namespace, bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``(rocks key, value)`` of each ``(ns, name, value)``: :meth:`rocks_key` and :meth:`seal`, the
        same bytes, for a whole write batch (one nonce draw for all, see :meth:`Sealer.seal_many`)."""
        payload = self._payload
        rocks_keys: list[bytes] = []
        payloads: list[tuple[bytes, bytes]] = []
        last: Namespace | None = None
        nsm = None
        for ns, name, value in items:
            if ns is not last or nsm is None:
                nsm, last = self.namespace(ns), ns
            rocks_key = nsm.prefix + nsm.names.digest(name)
            rocks_keys.append(rocks_key)
            payloads.append((payload(nsm, name, value), rocks_key))
        return list(zip(rocks_keys, self.sealer.seal_many(payloads), strict=True))

    def seal_into(self, put: Callable[[bytes, bytes], object], items: list[tuple[Namespace, bytes, bytes]]) -> None:
        """``put(rocks key, value)`` for each of :meth:`seal_items` (a write batch's put): the same
        bytes, which a format may make without the intermediate lists."""
        for rocks_key, blob in self.seal_items(items):
            put(rocks_key, blob)

    def damage(self, rocks_key: bytes, blob: bytes) -> DamagedError:
        """The error for a value at ``rocks_key`` that did not open: which check it failed."""
        if blob[:HEADER_BYTES] != self.header:
            return DamagedError(f"{describe(rocks_key)} has a malformed header: it failed its integrity check")
        return DamagedError(f"{describe(rocks_key)} failed its integrity check")

    def open(self, rocks_key: bytes, blob: bytes) -> Entry:
        """Check and open the value ``blob`` found at ``rocks_key``, for entries found by iterating,
        whose namespace and name are learnt from the sealed payload and so are hashed back to the
        key's tags. :class:`DamagedError` when the key or value is malformed, the header names another
        format or version, the seal does not open (flipped byte, moved value, wrong key) or the
        sealed namespace and name do not hash to the key's tags."""
        version, ns_tag, tag = parse_entry_key(rocks_key)
        if version != self.version:
            raise DamagedError(f"{describe(rocks_key)} has a malformed header: it failed its integrity check")
        try:
            plaintext = self.sealer.open(blob, rocks_key)
        except IntegrityError:
            raise self.damage(rocks_key, blob) from None
        try:
            (owner, subject, category), name, value = self._parse(plaintext)
            ns = Namespace(owner, subject, category)
        except (ValueError, TypeError, BadRequest):
            # A payload that opens but does not decode was sealed by a buggy writer: still damage.
            raise DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry") from None
        m = self.namespace(ns)
        if not (hmac.compare_digest(m.prefix[NS_START:], ns_tag) and hmac.compare_digest(m.names.digest(name), tag)):
            raise DamagedError(f"{describe(rocks_key)} holds a record of another name or namespace")
        return Entry(ns, name, value)

    def _drop_namespaces(self) -> None:
        for m in self.namespaces.values():
            m.names.close()
        self.namespaces.clear()
        self.readers.clear()

    def wipe(self) -> None:
        """Drop every state and namespace entry, and zero the subkey (already zero). Idempotent."""
        self._drop_namespaces()
        if self.names is not None:
            self.names.close()
            self.names = None
        self.sealer.close()
        wipe(self.subkey)

    @property
    def wiped(self) -> bool:
        return self.names is None

"""Entry format 2: keyed BLAKE2b tags and a length-prefixed payload. What every new key version
is written in.

Layout of one entry sealed under version ``v`` of the ``rocksdb`` key ``K_v``::

    names_v   = derive_subkey(K_v, "storage-kv-names-2")            # HKDF-SHA256
    H(m)      = BLAKE2b-256(key = names_v, person = "curvemesh/kv/2", m)
    ns_tag    = H(ns.label())[:16]
    name_tag  = H(ns.label() + name)                                # 32 bytes
    rocks key = b"e" || v (u32 BE) || ns_tag || name_tag            # 53 bytes, as in format 1
    header    = 0x02 || v (u32 BE)                                  # 5 bytes
    payload   = len(label) (u16 BE) || label || len(name) (u16 BE) || name || value
    value     = header || seal(K_v, payload, aad = header || rocks key)

What it keeps from format 1: no name or namespace on disk in the clear (keys are keyed hashes, the
namespace and name are sealed inside the value for rotation and scans), a value bound to its key
(the rocks key and header are associated data), the key version in key and header. What it changes,
for speed (issue 18): keyed BLAKE2b instead of HMAC-SHA256 (a copied BLAKE2b state costs about two
thirds of a copied OpenSSL HMAC context), and a payload a get checks with one prefix comparison and
one slice instead of a msgpack decode. ``ns.label()`` is msgpack and so self-delimiting: ``label +
name`` is unambiguous, and a namespace's tag input (the label alone) is never a name's.

The module functions are the reference, deriving everything on each call (tests and tools);
:class:`Material` is the same bytes with everything derived once.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Callable
from typing import Final

import msgpack

from shared import hazmat
from shared.crypto import SEAL_OVERHEAD, SEAL_VERSION, IntegrityError

from ...core.errors import DamagedError
from ...core.namespace import Namespace
from . import _reference
from ._layout import HEADER_BYTES, NS_TAG_BYTES, Entry, describe
from ._material import DbGet, NameHash, NsMaterial, Reader, VersionMaterial

__all__ = ["FORMAT", "NAMES_LABEL", "PERSON", "Material", "name_tag", "namespace_tag", "open_entry",
           "parse_payload", "payload", "seal_entry"]

FORMAT: Final = 0x02
#: The HKDF label of the subkey that hashes namespaces and names.
NAMES_LABEL: Final = "storage-kv-names-2"
#: BLAKE2b's personalisation for the tags: this use of the subkey and no other.
PERSON: Final = b"curvemesh/kv/2"
_U16: Final = struct.Struct(">H")
_u16: Final = _U16.pack
#: ``_u16(n)`` for every name length the store allows (1 to 1,024 bytes): an index into a tuple is a
#: few nanoseconds where the call is about fifty, on every put and get. Longer names (the format
#: allows up to 65,535 bytes) are packed on the spot.
_TABLED: Final = 1025
_NAME_LENGTHS: Final = tuple(_u16(n) for n in range(_TABLED))
# Where the nonce of a value starts and ends (after the header and the seal's version byte), and the
# shortest value that can hold a seal.
_NONCE_AT: Final = HEADER_BYTES + 1
_NONCE_END: Final = _NONCE_AT + hazmat.GCM_NONCE_BYTES
_LEAST: Final = HEADER_BYTES + SEAL_OVERHEAD


def _tag(subkey: bytes | bytearray, message: bytes) -> bytes:
    return hashlib.blake2b(message, key=subkey, digest_size=32, person=PERSON).digest()


def namespace_tag(subkey: bytes | bytearray, ns: Namespace) -> bytes:
    """The 16-byte tag of ``ns`` under one version's names subkey."""
    return _tag(subkey, ns.label())[:NS_TAG_BYTES]


def name_tag(subkey: bytes | bytearray, ns: Namespace, name: bytes) -> bytes:
    """The 32-byte tag of ``name`` in ``ns`` under one version's names subkey."""
    return _tag(subkey, ns.label() + name)


def payload(ns: Namespace, name: bytes, value: bytes) -> bytes:
    """The plaintext sealed for ``(ns, name, value)``; names are at most 65,535 bytes."""
    label = ns.label()
    return _u16(len(label)) + label + _u16(len(name)) + name + value


def parse_payload(plaintext: bytes) -> tuple[list[str], bytes, bytes]:
    """``(namespace fields, name, value)`` of a payload; ``ValueError``/``TypeError`` when malformed."""
    if len(plaintext) < 2:
        raise ValueError("a payload starts with its label's length")
    (label_len,) = _U16.unpack_from(plaintext, 0)
    name_at = 2 + label_len + 2
    if len(plaintext) < name_at:
        raise ValueError("a payload holds its label and its name's length")
    (name_len,) = _U16.unpack_from(plaintext, name_at - 2)
    if name_len == 0 or len(plaintext) < name_at + name_len:
        raise ValueError("a payload holds a name of at least one byte")
    try:
        fields = msgpack.unpackb(plaintext[2:name_at - 2], raw=False)
    except msgpack.UnpackException:
        raise ValueError("a payload's label is msgpack") from None
    if not (isinstance(fields, list) and len(fields) == 4 and fields[0] == "ns1"):
        raise ValueError("a payload's label is a namespace label")
    return fields[1:], plaintext[name_at:name_at + name_len], plaintext[name_at + name_len:]


def seal_entry(key: bytes | bytearray, version: int, rocks_key: bytes, ns: Namespace, name: bytes,
               value: bytes) -> bytes:
    """Seal ``(ns, name, value)`` as the value stored at ``rocks_key`` under key ``version``: as
    :func:`.v1.seal_entry`."""
    return _reference.seal_entry(FORMAT, key, version, rocks_key, payload(ns, name, value))


def open_entry(key: bytes | bytearray, subkey: bytes | bytearray, rocks_key: bytes, blob: bytes) -> Entry:
    """Check and open the value ``blob`` found at ``rocks_key``: as :func:`.v1.open_entry`."""
    return _reference.open_entry(FORMAT, key, subkey, rocks_key, blob, parse_payload, namespace_tag, name_tag)


class _Names:
    """Keyed BLAKE2b-256 with personalisation :data:`PERSON`, keyed once: :meth:`digest` of ``data``
    is :func:`_tag` of ``prefix + data``, by copying the state that already absorbed the key (and
    the prefix) rather than keying again. ``state`` is that state, read by the get that
    :meth:`Material._reader` makes, which inlines :meth:`digest`; :meth:`close` drops it (the notes
    of shared/_crypto.py say what dropping does and does not promise), and after it every method
    raises ``ValueError``."""

    __slots__ = ("state",)

    def __init__(self, state: hashlib.blake2b) -> None:
        self.state: hashlib.blake2b | None = state

    @classmethod
    def keyed(cls, subkey: bytearray) -> _Names:
        return cls(hashlib.blake2b(key=subkey, digest_size=32, person=PERSON))

    def _live(self) -> hashlib.blake2b:
        if self.state is None:
            raise ValueError("this key version's material was wiped")
        return self.state

    def extend(self, prefix: bytes) -> _Names:
        state = self._live().copy()
        state.update(prefix)
        return _Names(state)

    def digest(self, data: bytes = b"") -> bytes:
        state = self._live().copy()
        state.update(data)
        return state.digest()

    def close(self) -> None:
        self.state = None

    @property
    def closed(self) -> bool:
        return self.state is None


class Material(VersionMaterial):
    """Format 2 under one key version, derived once (module notes).

    Besides the :class:`~shared.crypto.Sealer` that seals single entries and opens what iteration
    finds, the two hot paths, a get (the reader :meth:`_reader` makes for each namespace) and a
    write batch (:meth:`seal_into`), use an AES-GCM context of their own from :mod:`shared.hazmat`
    with the sealer's steps written out in line: a get is a few microseconds, and the calls saved
    are a tenth of it. They do exactly what :meth:`Sealer.open` and :meth:`Sealer.seal_many` do
    (the same checks of length, header and seal version, the tag over ``0x01 || header || rocks
    key``, every nonce of a batch from one CSPRNG read), which the known-answer tests hold them to;
    :meth:`wipe` drops the context with the rest.
    """

    FORMAT = FORMAT
    NAMES_LABEL = NAMES_LABEL

    def __init__(self, version: int, key: bytearray) -> None:
        super().__init__(version, key)
        self._aead: hazmat.AESGCM | None = hazmat.aes256gcm(key)
        self._lead = self.header + bytes([SEAL_VERSION])
        self._aad_lead = bytes([SEAL_VERSION]) + self.header

    @staticmethod
    def _names_hash(subkey: bytearray) -> NameHash:
        return _Names.keyed(subkey)

    def _payload(self, nsm: NsMaterial, name: bytes, value: bytes) -> bytes:
        return nsm.head + _u16(len(name)) + name + value

    def seal_into(self, put: Callable[[bytes, bytes], object], items: list[tuple[Namespace, bytes, bytes]]) -> None:
        """See :meth:`VersionMaterial.seal_into`: rocks key, payload and seal of each item in one
        loop, straight into ``put`` (class notes)."""
        aead = self._aead
        if aead is None:
            raise ValueError("this key version's material was wiped")
        encrypt, lead, aad_lead, size = aead.encrypt, self._lead, self._aad_lead, hazmat.GCM_NONCE_BYTES
        nonces = secrets.token_bytes(size * len(items))
        at = 0
        last: Namespace | None = None
        prefix = head = b""
        copy = None
        lengths = _NAME_LENGTHS
        for ns, name, value in items:
            if ns is not last:
                # Once per run of items in one namespace: its key prefix, payload head and names state.
                nsm, last = self.namespace(ns), ns
                prefix, head = nsm.prefix, nsm.head
                names = nsm.names.state  # type: ignore[attr-defined]  # this format's names are _Names
                if names is None:
                    raise ValueError("this key version's material was wiped")
                copy = names.copy
            assert copy is not None
            state = copy()
            state.update(name)
            rocks_key = prefix + state.digest()
            nonce = nonces[at:at + size]
            at += size
            n = len(name)
            length = lengths[n] if n < _TABLED else _u16(n)
            put(rocks_key, lead + nonce + encrypt(nonce, head + length + name + value, aad_lead + rocks_key))

    def _parse(self, plaintext: bytes) -> tuple[list[str], bytes, bytes]:
        return parse_payload(plaintext)

    def open_value(self, rocks_key: bytes, blob: bytes, nsm: NsMaterial, name: bytes) -> bytes:
        """See :meth:`VersionMaterial.open_value`. The happy path is one decryption, one prefix
        comparison (the namespace's label and the name asked for, each length-prefixed) and one slice."""
        try:
            plaintext = self.sealer.open(blob, rocks_key)
        except IntegrityError:
            raise self.damage(rocks_key, blob) from None
        expect = nsm.head + _u16(len(name)) + name
        if plaintext.startswith(expect):
            return plaintext[len(expect):]
        raise self._misfiled(rocks_key, plaintext)

    def _reader(self, nsm: NsMaterial) -> Reader:
        """See :meth:`VersionMaterial._reader`: :meth:`rocks_key`, the lookup and :meth:`open_value`
        written out in one function (class notes), whose constants are its own closure's, not
        attributes and globals looked up on every get. Wiped, the names state or the AES-GCM
        context is gone and it raises ``ValueError``."""
        prefix, head, names = nsm.prefix, nsm.head, nsm.names
        if not isinstance(names, _Names):
            raise TypeError("format 2's namespaces hash with _Names")
        material, lead, aad_lead, u16, lengths = self, self._lead, self._aad_lead, _u16, _NAME_LENGTHS
        damage, misfiled, invalid = self.damage, self._misfiled, hazmat.InvalidTag

        def read(db_get: DbGet, name: bytes) -> bytes | None:
            state, aead = names.state, material._aead
            if state is None or aead is None:
                raise ValueError("this key version's material was wiped")
            state = state.copy()
            state.update(name)
            rocks_key = prefix + state.digest()
            blob = db_get(rocks_key)
            if blob is None:
                return None
            if len(blob) < _LEAST or not blob.startswith(lead):
                raise damage(rocks_key, blob)
            try:
                plaintext: bytes = aead.decrypt(blob[_NONCE_AT:_NONCE_END], blob[_NONCE_END:], aad_lead + rocks_key)
            except invalid:
                raise damage(rocks_key, blob) from None
            n = len(name)
            expect = head + (lengths[n] if n < _TABLED else u16(n)) + name
            if plaintext.startswith(expect):
                return plaintext[len(expect):]
            raise misfiled(rocks_key, plaintext)
        return read

    @staticmethod
    def _misfiled(rocks_key: bytes, plaintext: bytes) -> DamagedError:
        """Why an opened payload is not the entry asked for: it does not decode, or it is another's."""
        try:
            parse_payload(plaintext)
        except (ValueError, TypeError):
            return DamagedError(f"{describe(rocks_key)} opened but does not decode as an entry")
        return DamagedError(f"{describe(rocks_key)} holds a record of another name or namespace")

    def wipe(self) -> None:
        """See :meth:`VersionMaterial.wipe`; the get path's AES-GCM context is dropped too."""
        self._aead = None
        super().wipe()

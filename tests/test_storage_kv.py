"""The RocksDB key-value engine (services/storage/kv/store.py, sealing.py): a real RocksDB in tmp_path,
real keys from os.urandom, raw rocksdict handles to play the attacker who edits files."""

from __future__ import annotations

import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from hypothesis import given, settings
from hypothesis import strategies as st

from services.storage.core.errors import DamagedError, MissingKeyError
from services.storage.core.keys import KeySet
from services.storage.core.namespace import Namespace
from services.storage.kv import sealing
from services.storage.kv.store import MAX_NAME_BYTES, MAX_VALUE_BYTES, KvStore
from shared import BadRequest, Unavailable
from shared.crypto import derive_subkey

ROOT = Path(__file__).resolve().parents[1]
NS = Namespace("notes-app", "alice", "memories")


def keyset(raw: dict[int, bytes], current: int | None = None) -> KeySet:
    """A KeySet holding copies of ``raw`` (so a test can "restart" with the same keys)."""
    keys = KeySet("rocksdb")
    for version in sorted(raw):
        keys.add(version, bytearray(raw[version]))
    if current is not None:
        keys.add(current, bytearray(raw[current]), current=True)
    return keys


@pytest.fixture
def raw_keys() -> dict[int, bytes]:
    return {1: os.urandom(32), 2: os.urandom(32)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KvStore]:
    kv = KvStore.open(tmp_path / "kv")
    yield kv
    kv.close()


@contextmanager
def raw_db(path: Path) -> Iterator[rocksdict.Rdict]:
    """The database as an attacker with file access sees it (the store must be closed)."""
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        yield db
    finally:
        db.close()


def raw_items(path: Path) -> list[tuple[bytes, bytes]]:
    with raw_db(path) as db:
        return list(db.items())


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# -- the sealing formats ---------------------------------------------------------------------

FORMATS = [sealing.v1, sealing.v2]


@pytest.mark.parametrize("fmt", FORMATS, ids=["v1", "v2"])
def test_sealing_layout_and_round_trip(fmt: Any) -> None:
    key = bytearray(os.urandom(32))
    subkey = derive_subkey(key, fmt.NAMES_LABEL)
    ns_tag, tag = fmt.namespace_tag(subkey, NS), fmt.name_tag(subkey, NS, b"greeting")
    rocks_key = sealing.entry_key(7, ns_tag, tag)
    assert rocks_key == b"e" + (7).to_bytes(4, "big") + ns_tag + tag and len(rocks_key) == 53
    assert sealing.parse_entry_key(rocks_key) == (7, ns_tag, tag)
    blob = fmt.seal_entry(key, 7, rocks_key, NS, b"greeting", b"hello")
    assert blob[:5] == bytes([fmt.FORMAT]) + (7).to_bytes(4, "big") == sealing.header(fmt.FORMAT, 7)
    assert fmt.open_entry(key, subkey, rocks_key, blob) == (NS, b"greeting", b"hello")
    # The tags depend on the namespace, the name and the key.
    other = Namespace("notes-app", "bob", "memories")
    assert fmt.namespace_tag(subkey, other) != ns_tag
    assert fmt.name_tag(subkey, NS, b"greetinG") != tag
    assert fmt.name_tag(derive_subkey(bytearray(os.urandom(32)), fmt.NAMES_LABEL), NS, b"greeting") != tag


def test_the_formats_tag_and_seal_differently() -> None:
    """The same key and name under the two formats: different tags (another subkey and hash), and a
    value of one never opens as the other (the format byte is associated data)."""
    key = bytearray(os.urandom(32))
    sub1, sub2 = derive_subkey(key, sealing.v1.NAMES_LABEL), derive_subkey(key, sealing.v2.NAMES_LABEL)
    assert sealing.v1.name_tag(sub1, NS, b"a") != sealing.v2.name_tag(sub2, NS, b"a")
    rocks_key = sealing.entry_key(1, sealing.v2.namespace_tag(sub2, NS), sealing.v2.name_tag(sub2, NS, b"a"))
    blob = sealing.v2.seal_entry(key, 1, rocks_key, NS, b"a", b"value")
    for relabelled in (blob, b"\x01" + blob[1:]):
        with pytest.raises(DamagedError):
            sealing.v1.open_entry(key, sub1, rocks_key, relabelled)
    with pytest.raises(DamagedError, match="failed its integrity check"):
        sealing.v2.open_entry(key, sub2, rocks_key, b"\x01" + blob[1:])


@pytest.mark.parametrize("fmt", FORMATS, ids=["v1", "v2"])
def test_sealing_rejects_malformed_and_misfiled_entries(fmt: Any) -> None:
    key = bytearray(os.urandom(32))
    subkey = derive_subkey(key, fmt.NAMES_LABEL)
    rocks_key = sealing.entry_key(1, fmt.namespace_tag(subkey, NS), fmt.name_tag(subkey, NS, b"a"))
    good = fmt.seal_entry(key, 1, rocks_key, NS, b"a", b"value")
    for blob in (b"", bytes([fmt.FORMAT]) + b"\x00\x00", good[:20], bytes([fmt.FORMAT ^ 3]) + good[1:]):
        with pytest.raises(DamagedError):
            fmt.open_entry(key, subkey, rocks_key, blob)
    with pytest.raises(DamagedError, match="not an entry key"):
        fmt.open_entry(key, subkey, rocks_key[:-1], good)
    # A writer bug that files name "b" under the tag of "a" is caught after decryption.
    misfiled = fmt.seal_entry(key, 1, rocks_key, NS, b"b", b"value")
    with pytest.raises(DamagedError, match="another name or namespace"):
        fmt.open_entry(key, subkey, rocks_key, misfiled)
    with pytest.raises(ValueError, match="version its key names"):
        fmt.seal_entry(key, 2, rocks_key, NS, b"a", b"value")


# The entry of b"greeting" -> b"hello, world" in NS under version 3 of key bytes(range(32)), with the
# nonce bytes(range(100, 112)), as written by the code before the cached material (commit 6315793):
# format 1's bytes must never change under existing data.
OLD_ROCKS_KEY = bytes.fromhex("6500000003b44ad8292600d28794f2222d94c06d7febc63af1c490f12d84143d640a9986cc3311bba49"
                              "ba8eadbe888f10eec234d4d")
OLD_BLOB = bytes.fromhex("0100000003016465666768696a6b6c6d6e6fdb887708169d33ed13032f987f04069421a7ae67ee019c00ceb4"
                         "df8cf3c4d72df19d29ae2bd6976c989f1450d162bda06937fc04b8bac43a853cc81a58bf1d7fbc8648")


def _fixed_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    # Sealing draws its nonces from secrets.token_bytes: fixed here, for known answers.
    monkeypatch.setattr(secrets, "token_bytes", lambda n: bytes(range(100, 100 + n)))


def _sealed_both_ways(material: sealing.VersionMaterial, ns: Namespace, name: bytes, value: bytes) -> list[bytes]:
    """What each sealing path of ``material`` writes for one entry: seal, seal_items, seal_into."""
    rocks_key = material.rocks_key(ns, name)
    into: list[tuple[bytes, bytes]] = []
    material.seal_into(lambda k, v: into.append((k, v)), [(ns, name, value)])
    [(k1, v1)] = material.seal_items([(ns, name, value)])
    assert k1 == into[0][0] == rocks_key
    return [material.seal(rocks_key, ns, name, value), v1, into[0][1]]


def test_format_1_material_writes_and_reads_the_old_bytes_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_nonces(monkeypatch)
    key = bytearray(range(32))
    material = sealing.material(3, key, 1)
    assert isinstance(material, sealing.v1.Material)
    assert material.rocks_key(NS, b"greeting") == OLD_ROCKS_KEY
    # seal, the batch path (one nonce read for the batch, cut in order) and the fused batch path.
    assert _sealed_both_ways(material, NS, b"greeting", b"hello, world") == [OLD_BLOB] * 3
    # The reference functions agree, and each side opens what the other wrote.
    subkey = derive_subkey(key, sealing.v1.NAMES_LABEL)
    ns_tag, tag = sealing.v1.namespace_tag(subkey, NS), sealing.v1.name_tag(subkey, NS, b"greeting")
    assert sealing.entry_key(3, ns_tag, tag) == OLD_ROCKS_KEY
    assert sealing.v1.seal_entry(key, 3, OLD_ROCKS_KEY, NS, b"greeting", b"hello, world") == OLD_BLOB
    assert material.open(OLD_ROCKS_KEY, OLD_BLOB) == (NS, b"greeting", b"hello, world")
    assert material.open_value(OLD_ROCKS_KEY, OLD_BLOB, material.namespace(NS), b"greeting") == b"hello, world"
    assert material.read({OLD_ROCKS_KEY: OLD_BLOB}.get, NS, b"greeting") == b"hello, world"
    assert material.read({}.get, NS, b"greeting") is None
    assert sealing.v1.open_entry(key, subkey, OLD_ROCKS_KEY, OLD_BLOB) == (NS, b"greeting", b"hello, world")
    # The namespace prefix is what the store iterates a namespace by.
    assert material.namespace(NS).prefix == sealing.namespace_prefix(3, ns_tag)


# The same entry in format 2, pinned when format 2 was introduced (issue 18), and recomputed below
# from the primitives alone (hashlib's keyed BLAKE2b, cryptography's AES-GCM), not from our code.
V2_ROCKS_KEY = bytes.fromhex("6500000003b71150ab9e28e77ccda63fba2ce27b1353bd9a6f86e25d8b4e12c7172ddd31bbebe8a7"
                             "f62d33f7daca214f5bfcbbe633")
V2_BLOB = bytes.fromhex("0200000003016465666768696a6b6c6d6e6f48054ac5179a6737500d2b8da9480b8d32676766e20f96dacab4c1"
                        "2789cac03b94e127b22977ef6d9394105a912ea5e33b2cf7954c2e67a70e867021f989acba5f3be4b51a7c")


def test_format_2_is_its_documented_construction_byte_for_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    _fixed_nonces(monkeypatch)
    key = bytearray(range(32))
    names_key = bytes(derive_subkey(key, "storage-kv-names-2"))
    label = NS.label()

    def h(message: bytes) -> bytes:
        return hashlib.blake2b(message, key=names_key, digest_size=32, person=b"curvemesh/kv/2").digest()

    rocks_key = b"e" + (3).to_bytes(4, "big") + h(label)[:16] + h(label + b"greeting")
    header = b"\x02" + (3).to_bytes(4, "big")
    payload = len(label).to_bytes(2, "big") + label + (8).to_bytes(2, "big") + b"greeting" + b"hello, world"
    nonce = bytes(range(100, 112))
    blob = header + b"\x01" + nonce + AESGCM(bytes(key)).encrypt(nonce, payload, b"\x01" + header + rocks_key)
    assert (rocks_key, blob) == (V2_ROCKS_KEY, V2_BLOB)

    material = sealing.material(3, key, 2)
    assert isinstance(material, sealing.v2.Material) and material.rocks_key(NS, b"greeting") == V2_ROCKS_KEY
    assert _sealed_both_ways(material, NS, b"greeting", b"hello, world") == [V2_BLOB] * 3
    assert sealing.v2.seal_entry(key, 3, V2_ROCKS_KEY, NS, b"greeting", b"hello, world") == V2_BLOB
    subkey = derive_subkey(key, sealing.v2.NAMES_LABEL)
    assert sealing.v2.open_entry(key, subkey, V2_ROCKS_KEY, V2_BLOB) == (NS, b"greeting", b"hello, world")
    assert material.open(V2_ROCKS_KEY, V2_BLOB) == (NS, b"greeting", b"hello, world")
    assert material.open_value(V2_ROCKS_KEY, V2_BLOB, material.namespace(NS), b"greeting") == b"hello, world"
    assert material.read({V2_ROCKS_KEY: V2_BLOB}.get, NS, b"greeting") == b"hello, world"
    assert material.namespace(NS).prefix == sealing.namespace_prefix(3, sealing.v2.namespace_tag(subkey, NS))


@pytest.mark.parametrize("length", [1, 255, 256, 1024, 1025, 65_535])
def test_format_2_fast_paths_agree_with_the_reference_at_every_name_length(
        monkeypatch: pytest.MonkeyPatch, length: int) -> None:
    # The batch seal and the get look a name's length prefix up in a table up to the store's 1,024
    # bytes and pack longer ones (the format allows 65,535): the bytes are the reference's either way.
    _fixed_nonces(monkeypatch)
    key = bytearray(range(32))
    material = sealing.material(3, key, 2)
    name = bytes([length % 251 + 1]) * length
    rocks_key = material.rocks_key(NS, name)
    assert _sealed_both_ways(material, NS, name, b"v") == [sealing.v2.seal_entry(key, 3, rocks_key, NS, name, b"v")] * 3
    blob = sealing.v2.seal_entry(key, 3, rocks_key, NS, name, b"v")
    assert material.read({rocks_key: blob}.get, NS, name) == b"v"
    assert sealing.v2.parse_payload(material.sealer.open(blob, rocks_key))[1] == name


def _every_read(material: sealing.VersionMaterial, rocks_key: bytes, blob: bytes,
                name: bytes) -> list[Callable[[], object]]:
    """The three ways a material reads ``blob`` at ``rocks_key``: open_value and read (a get of
    ``name`` in NS), and open (iteration)."""
    return [lambda: material.open_value(rocks_key, blob, material.namespace(NS), name),
            lambda: material.read({rocks_key: blob}.get, NS, name),
            lambda: material.open(rocks_key, blob)]


def _misfiled_cases(material: sealing.VersionMaterial) -> Iterator[tuple[bytes, bytes, bytes, str]]:
    """``(rocks key, blob, name asked for, what the error says)`` of values that must never be served."""
    rocks_key = material.rocks_key(NS, b"a")
    good = material.seal(rocks_key, NS, b"a", b"value")
    other_format = bytes([material.FORMAT ^ 3])
    for blob in (b"", material.header[:3], good[:20], other_format + good[1:],
                 good[:1] + b"\x00\x00\x00\x02" + good[5:], good[:5] + b"\x02" + good[6:],
                 good[:-1] + bytes([good[-1] ^ 1])):
        yield rocks_key, blob, b"a", "integrity check"
    # A value moved to another name's key, and a writer bug that sealed "b" (or bob's "a") under a's tags.
    yield material.rocks_key(NS, b"b"), good, b"b", "integrity check"
    yield rocks_key, material.seal(rocks_key, NS, b"b", b"value"), b"a", "another name or namespace"
    yield rocks_key, material.seal(rocks_key, Namespace("notes-app", "bob", "memories"), b"a", b"v"), b"a", \
        "another name or namespace"


@pytest.mark.parametrize("fmt", [1, 2])
def test_cached_material_refuses_what_open_entry_refuses(fmt: int) -> None:
    material = sealing.material(1, bytearray(os.urandom(32)), fmt)
    for rocks_key, blob, name, says in _misfiled_cases(material):
        for opened in _every_read(material, rocks_key, blob, name):
            with pytest.raises(DamagedError, match=says):
                opened()


def test_format_1_get_refuses_a_sealed_payload_of_the_wrong_shape() -> None:
    """A writer bug that sealed something other than ``[fields, name: bytes, value: bytes]`` under the
    right key and associated data: the get path (no re-hashing) refuses it as open() does."""
    import msgpack

    material = sealing.material(1, bytearray(os.urandom(32)), 1)
    nsm = material.namespace(NS)
    rocks_key = material.rocks_key(NS, b"a")
    fields = [NS.owner, NS.subject, NS.category]

    def sealed(payload: object, *, extra: bytes = b"") -> bytes:
        return material.sealer.seal(msgpack.packb(payload, use_bin_type=True) + extra, rocks_key)

    assert material.open_value(rocks_key, sealed([fields, b"a", b"v"]), nsm, b"a") == b"v"
    for bad in (sealed([fields, "a", b"v"]),            # the name as text, equal once decoded
                sealed([fields, b"a", "v"]),            # the value as text
                sealed([fields, b"a", 7]),              # the value not bytes at all
                sealed([tuple(fields), b"a"]),          # two items
                sealed([fields, b"a", b"v", b"w"]),     # four items
                sealed({"o": 1, "n": 2, "v": 3}),       # a map of three
                sealed([fields[:2], b"a", b"v"]),       # a namespace of two fields
                sealed([[*fields[:2], "other"], b"a", b"v"]),
                sealed([fields, b"a", b"v"], extra=b"\x00"),  # trailing bytes
                material.sealer.seal(b"\xc1", rocks_key)):  # not msgpack
        with pytest.raises(DamagedError):
            material.open_value(rocks_key, bad, nsm, b"a")
        with pytest.raises(DamagedError):
            material.open(rocks_key, bad)


def test_format_2_get_refuses_a_sealed_payload_of_the_wrong_shape() -> None:
    """Format 2's payloads with lengths that do not add up, a label that is not a namespace's, or the
    right bytes in the wrong places: every path refuses them, none serves a value."""
    import msgpack

    material = sealing.material(1, bytearray(os.urandom(32)), 2)
    nsm = material.namespace(NS)
    rocks_key = material.rocks_key(NS, b"a")
    label = NS.label()

    def sealed(plaintext: bytes) -> bytes:
        return material.sealer.seal(plaintext, rocks_key)

    def u16(n: int) -> bytes:
        return n.to_bytes(2, "big")

    assert material.open_value(rocks_key, sealed(u16(len(label)) + label + u16(1) + b"a" + b"v"), nsm, b"a") == b"v"
    not_a_namespace = msgpack.packb(["ns2", NS.owner, NS.subject, NS.category])
    for bad in (b"", b"\x00", u16(len(label)) + label,                    # cut before the name
                u16(len(label)) + label + u16(0) + b"av",                 # an empty name
                u16(len(label)) + label + u16(5) + b"a",                  # a name longer than what is left
                u16(len(label) + 1) + label + u16(1) + b"a" + b"v",       # a label length one too long
                u16(len(label)) + label + u16(2) + b"av",                 # the name "av", value empty
                u16(len(not_a_namespace)) + not_a_namespace + u16(1) + b"a" + b"v",
                u16(3) + b"\xc1\xc1\xc1" + u16(1) + b"a" + b"v"):       # a label that is not msgpack
        for opened in _every_read(material, rocks_key, sealed(bad), b"a"):
            with pytest.raises(DamagedError):
                opened()


@settings(max_examples=200, deadline=None)
@given(owner=st.sampled_from(["notes-app", "mail-app"]), subject=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
       name=st.binary(min_size=1, max_size=300), value=st.binary(max_size=300), cut=st.integers(min_value=0))
def test_format_2_payloads_round_trip_and_every_cut_is_refused(owner: str, subject: str, name: bytes, value: bytes,
                                                               cut: int) -> None:
    ns = Namespace(owner, subject, "memories")
    plaintext = sealing.v2.payload(ns, name, value)
    assert sealing.v2.parse_payload(plaintext) == ([owner, subject, "memories"], name, value)
    short = plaintext[:cut % (len(plaintext) - len(value))]  # cut inside the label or the name
    with pytest.raises((ValueError, TypeError)):
        sealing.v2.parse_payload(short)


def test_format_of_a_version_is_learnt_from_its_entries() -> None:
    key = bytearray(os.urandom(32))
    assert sealing.format_of(1, key, []) == sealing.NEWEST_FORMAT == 2
    entries = {}
    for fmt in (1, 2):
        material = sealing.material(1, key, fmt)
        entries[fmt] = [(k, v) for k, v in material.seal_items([(NS, b"n%d" % i, b"v") for i in range(3)])]
    for fmt in (1, 2):
        assert sealing.format_of(1, key, entries[fmt]) == fmt
        # An edited format byte on the first entry makes it fail to open: the next one answers.
        (k0, v0), *rest = entries[fmt]
        assert sealing.format_of(1, key, [(k0, bytes([3 - fmt]) + v0[1:]), *rest]) == fmt
        assert sealing.format_of(1, key, [(k0, b"\x09" + v0[1:]), *rest]) == fmt
        # Under another key nothing opens: the first header's format stands (reads then miss, as before).
        assert sealing.format_of(1, bytearray(os.urandom(32)), entries[fmt]) == fmt
    assert sealing.format_of(1, bytearray(os.urandom(32)), [(k0, b"\x09" + v0[1:])]) == sealing.NEWEST_FORMAT


def _material_state(store: KvStore) -> list[tuple[sealing.VersionMaterial, list[object]]]:
    return [(m, list(m.namespaces.values())) for m in store._materials.values()]


def _assert_wiped(material: sealing.VersionMaterial, namespaces: list[object]) -> None:
    assert material.wiped and material.names is None and material.sealer.closed
    assert material.namespaces == {} and material.readers == {} and material.subkey == bytearray(32)
    assert namespaces and all(nsm.names.closed for nsm in namespaces)  # type: ignore[attr-defined]
    for use in (lambda: material.rocks_key(NS, b"name"), lambda: material.sealer.seal(b"x", b""),
                lambda: material.read({}.get, NS, b"name"),
                lambda: material.seal_into(lambda k, v: None, [(NS, b"name", b"value")])):
        with pytest.raises(ValueError):
            use()


def test_cached_material_is_wiped_on_seal(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset(raw_keys, current=2)
    store.put(keys, NS, b"name", b"value")
    assert store.get(keys, NS, b"name") == b"value"
    cached = _material_state(store)
    assert sorted(m.version for m, _ in cached) == [1, 2]
    store.forget_keys()  # what sealing the mesh does (KvEngine.close -> KvStore.close)
    assert store._materials == {} and store._index == {}
    for material, namespaces in cached:
        _assert_wiped(material, namespaces)
    keys.wipe()
    with pytest.raises(MissingKeyError):
        store.get(keys, NS, b"name")
    # Unsealed again: the material is derived anew from the keys fetched again.
    assert store.get(keyset(raw_keys, current=2), NS, b"name") == b"value"


def test_material_of_a_retired_or_replaced_version_is_wiped(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    store.put_many(keys, [(NS, b"n%d" % i, b"v%d" % i) for i in range(10)])
    keys.add(2, bytearray(raw_keys[2]), current=True)
    assert store.get(keys, NS, b"n1") == b"v1"  # found under version 1, material of both cached
    (v1, ns1), = [(m, n) for m, n in _material_state(store) if m.version == 1]
    while store.reseal_step(keys, 1):
        pass
    keys.retire(1)
    store.forget_versions(keys)  # what rotation does right after retiring (KvEngine.forget_retired)
    _assert_wiped(v1, ns1)
    assert set(store._materials) == {2} and all(store.get(keys, NS, b"n%d" % i) == b"v%d" % i for i in range(10))
    # A key replaced under the same version is noticed at the next request (KeySet.generation).
    (v2, ns2), = _material_state(store)
    keys.add(2, bytearray(raw_keys[1]))
    assert store.get(keys, NS, b"n1") is None
    _assert_wiped(v2, ns2)


# -- records ---------------------------------------------------------------------------------


def test_put_get_delete_round_trip(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    assert store.is_empty()
    assert store.get(keys, NS, b"k") is None
    store.put(keys, NS, b"k", b"v1")
    store.put(keys, NS, b"empty", b"")
    assert not store.is_empty()
    assert store.get(keys, NS, b"k") == b"v1" and store.get(keys, NS, b"empty") == b""
    store.put(keys, NS, b"k", b"v2")
    assert store.get(keys, NS, b"k") == b"v2" and store.count(1) == 2
    assert store.delete(keys, NS, b"k") is True
    assert store.delete(keys, NS, b"k") is False
    assert store.get(keys, NS, b"k") is None and store.count(1) == 1
    big = os.urandom(MAX_VALUE_BYTES)
    store.put(keys, NS, b"x" * MAX_NAME_BYTES, big)
    assert store.get(keys, NS, b"x" * MAX_NAME_BYTES) == big


def test_scan_pages_prefix_and_cursor(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    names = [b"a/%03d" % i for i in range(25)]
    store.put_many(keys, [(NS, n, b"value " + n) for n in reversed(names)])
    store.put_many(keys, [(NS, b"b/%d" % i, b"other") for i in range(5)])
    pages, cursor, seen = 0, None, []
    while True:
        page, cursor = store.scan(keys, NS, b"a/", cursor, 10)
        pages += 1
        seen += page
        if cursor is None:
            break
        assert cursor == page[-1][0] and len(page) == 10
    assert pages == 3 and seen == [(n, b"value " + n) for n in names]
    assert store.scan(keys, NS, b"a/", b"a/020", 100) == ([(n, b"value " + n) for n in names[21:]], None)
    assert store.scan(keys, NS, b"a/", b"a/024", 10) == ([], None)
    assert store.scan(keys, NS, b"zz", None, 10) == ([], None)
    everything, cursor = store.scan(keys, NS, b"", None, 1000)
    assert cursor is None and [n for n, _ in everything] == sorted([*names, *(b"b/%d" % i for i in range(5))])
    # The index is kept current by writes after it was built.
    store.put(keys, NS, b"a/0105", b"new")
    assert store.delete(keys, NS, b"a/000")
    page, cursor = store.scan(keys, NS, b"a/0", None, 3)
    assert [n for n, _ in page] == [b"a/001", b"a/002", b"a/003"] and cursor == b"a/003"
    assert store.scan(keys, NS, b"a/010", None, 10)[0] == [(b"a/010", b"value a/010"), (b"a/0105", b"new")]


def test_namespaces_are_isolated(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    mine, theirs = Namespace("notes-app", "alice", "memories"), Namespace("mail-app", "alice", "memories")
    store.put(keys, mine, b"same", b"mine")
    store.put(keys, theirs, b"same", b"theirs")
    assert store.get(keys, mine, b"same") == b"mine" and store.get(keys, theirs, b"same") == b"theirs"
    assert store.scan(keys, theirs, b"", None, 10) == ([(b"same", b"theirs")], None)
    assert store.delete(keys, mine, b"same")
    assert store.get(keys, theirs, b"same") == b"theirs"
    assert store.get(keys, Namespace("notes-app", "alice", "calendar"), b"same") is None


# -- encryption at rest ------------------------------------------------------------------------


def test_no_plaintext_on_disk(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    marker = b"canary" + os.urandom(12).hex().encode()
    # The scanner is sound: an unsealed RocksDB beside it does show the marker in its files.
    with raw_db(tmp_path / "control") as control:
        control[marker] = marker
    assert any(marker in data for data in file_bytes(tmp_path / "control").values())

    keys = keyset({1: raw_keys[1]})
    ns = Namespace("notes-app", marker.decode(), "memories")
    path = tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put(keys, ns, marker, marker)
        kv.put_many(keys, [(ns, marker + b"%d" % i, marker * 3) for i in range(50)])
        assert kv.get(keys, ns, marker) == marker
        assert kv.scan(keys, ns, marker, None, 1)[0] == [(marker, marker)]
        while_open = file_bytes(path)
        kv.checkpoint(tmp_path / "backup")
    after_close = file_bytes(path)
    names = set(after_close)
    assert "LOG" in names and any(n.endswith(".sst") for n in names) and any(n.startswith("MANIFEST") for n in names)
    assert any(n.endswith(".log") for n in while_open) and any(n.startswith("OPTIONS") for n in names)
    for where, data in [*while_open.items(), *after_close.items(), *file_bytes(tmp_path / "backup").items()]:
        assert marker not in data, f"plaintext marker found in {where}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_directory_and_parents_are_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "kv"
    KvStore.open(path).close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b", path):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


# -- tampering ---------------------------------------------------------------------------------


def test_value_moved_to_another_key_fails(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    keys, path = keyset({1: raw_keys[1]}), tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put(keys, NS, b"public", b"harmless")
        kv.put(keys, NS, b"secret", b"launch code 1234")
        subkey = derive_subkey(keys.key(1), sealing.v2.NAMES_LABEL)  # a new store: the newest format
    ns_tag = sealing.v2.namespace_tag(subkey, NS)
    public = sealing.entry_key(1, ns_tag, sealing.v2.name_tag(subkey, NS, b"public"))
    secret = sealing.entry_key(1, ns_tag, sealing.v2.name_tag(subkey, NS, b"secret"))
    with raw_db(path) as db:
        db[public] = db[secret]
    with KvStore.open(path) as kv:
        with pytest.raises(DamagedError, match="failed its integrity check") as err:
            kv.get(keys, NS, b"public")
        assert b"launch" not in err.value.message.encode() and "public" not in err.value.message
        assert kv.get(keys, NS, b"secret") == b"launch code 1234"


def test_values_swapped_between_keys_namespaces_or_versions_fail(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    """Swap two names' values, move a value to the same name in another namespace, and to the same
    name under another key version (header edited to match): every get refuses, never serves."""
    keys, path = keyset(raw_keys, current=2), tmp_path / "kv"
    other = Namespace("notes-app", "bob", "memories")
    with KvStore.open(path) as kv:
        kv.put(keys, NS, b"a", b"value of a")
        kv.put(keys, NS, b"b", b"value of b")
        kv.put(keys, other, b"a", b"bob's a")
        kv.put(keys, NS, b"c", b"value of c")
        material = {v: (sealing.v2.namespace_tag(sub, NS), sealing.v2.namespace_tag(sub, other), sub)
                    for v in (1, 2) for sub in [derive_subkey(keys.key(v), sealing.v2.NAMES_LABEL)]}

    def key(version: int, ns: Namespace, name: bytes) -> bytes:
        ns_tag = material[version][0 if ns == NS else 1]
        return sealing.entry_key(version, ns_tag, sealing.v2.name_tag(material[version][2], ns, name))

    with raw_db(path) as db:
        a, b, bob_a, c = key(2, NS, b"a"), key(2, NS, b"b"), key(2, other, b"a"), key(2, NS, b"c")
        db[a], db[b] = db[b], db[a]
        db[bob_a] = db[key(2, NS, b"c")]
        # c's value, filed under version 1's key for c with its header saying version 1.
        db[key(1, NS, b"c")] = db[c][:1] + (1).to_bytes(4, "big") + db[c][5:]
        del db[c]
    with KvStore.open(path) as kv:
        for ns, name in ((NS, b"a"), (NS, b"b"), (other, b"a"), (NS, b"c")):
            with pytest.raises(DamagedError):
                kv.get(keys, ns, name)
        assert len(kv.verify(keys)) == 4


@pytest.mark.parametrize("position", [0, 3, 5, 30, -1], ids=["format", "version", "seal-version", "body", "tag"])
def test_flipped_byte_is_damage(tmp_path: Path, raw_keys: dict[int, bytes], position: int) -> None:
    keys, path = keyset({1: raw_keys[1]}), tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put(keys, NS, b"name", b"some value that is long enough")
    [(rocks_key, blob)] = raw_items(path)
    flipped = bytearray(blob)
    flipped[position] ^= 0x01
    with raw_db(path) as db:
        db[rocks_key] = bytes(flipped)
    with KvStore.open(path) as kv:
        with pytest.raises(DamagedError, match=r"rocksdb entry v1 in namespace #[0-9a-f]{8}"):
            kv.get(keys, NS, b"name")


def test_edited_version_header_is_damage(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    keys, path = keyset(raw_keys, current=1), tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put(keys, NS, b"name", b"value")
    [(rocks_key, blob)] = raw_items(path)
    with raw_db(path) as db:
        db[rocks_key] = blob[:1] + (2).to_bytes(4, "big") + blob[5:]
    with KvStore.open(path) as kv:
        with pytest.raises(DamagedError, match="malformed header"):
            kv.get(keys, NS, b"name")


def test_verify_reports_positions_never_contents(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    keys, path = keyset({1: raw_keys[1]}), tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put_many(keys, [(NS, b"name%d" % i, b"value%d" % i) for i in range(20)])
        assert kv.verify(keys) == []
    rocks_key, blob = raw_items(path)[7]
    with raw_db(path) as db:
        db[rocks_key] = blob[:-1] + bytes([blob[-1] ^ 0x80])
        db[b"junk"] = b"not an entry"
    with KvStore.open(path) as kv:
        problems = kv.verify(keys)
        assert len(problems) == 2
        assert any(f"#{rocks_key[5:9].hex()}" in p and "integrity check" in p for p in problems)
        assert any("not an entry key" in p for p in problems)
        assert not any("name" + str(i) in p or "value" in p for p in problems for i in range(20))
        # Entries under a version storage no longer holds are a problem too.
        keys2 = keyset(raw_keys, current=2)
        kv.put(keys2, NS, b"fresh", b"v2")
        keys2.retire(1)
        assert "20 rocksdb entries are sealed under version 1 which storage does not hold" in kv.verify(keys2)


# -- key versions and rotation -------------------------------------------------------------------


def test_reads_fall_back_and_writes_remove_older_versions(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    store.put_many(keys, [(NS, b"old", b"sealed under 1"), (NS, b"rewritten", b"first")])
    keys.add(2, bytearray(raw_keys[2]), current=True)
    assert store.get(keys, NS, b"old") == b"sealed under 1"
    store.put(keys, NS, b"rewritten", b"second")
    assert (store.count(1), store.count(2)) == (1, 1)
    assert store.get(keys, NS, b"rewritten") == b"second"
    # Resealing never overwrites the newer entry and leaves each name once.
    assert store.reseal_step(keys, 1) == 1 and store.reseal_step(keys, 1) == 0
    assert (store.count(1), store.count(2)) == (0, 2)
    assert store.delete(keys, NS, b"old") and store.get(keys, NS, b"old") is None


def test_rotation_moves_everything(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    names = [b"item-%05d" % i for i in range(2500)]
    for start in range(0, 2500, 1000):
        store.put_many(keys, [(NS, n, n[::-1]) for n in names[start:start + 1000]])
    assert store.scan(keys, NS, b"item-0000", None, 5)[1] == b"item-00004"  # index built under v1
    keys.add(2, bytearray(raw_keys[2]), current=True)
    progress = [store.count(1)]
    while store.reseal_step(keys, 1):
        progress.append(store.count(1))
    assert progress == [2500, 1500, 500, 0] and store.count(2) == 2500
    keys.retire(1)
    assert all(store.get(keys, NS, n) == n[::-1] for n in names)
    page, cursor = store.scan(keys, NS, b"item-02", None, 1000)
    assert len(page) == 500 and cursor is None
    assert store.verify(keys) == []
    with pytest.raises(ValueError, match="other than the current"):
        store.reseal_step(keys, 2)
    with pytest.raises(MissingKeyError):
        store.reseal_step(keys, 1)


def test_rotation_resumes_after_restart(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    path, names = tmp_path / "kv", [b"n%04d" % i for i in range(1200)]
    keys = keyset({1: raw_keys[1]})
    with KvStore.open(path) as kv:
        kv.put_many(keys, [(NS, n, b"v" + n) for n in names[:1000]])
        kv.put_many(keys, [(NS, n, b"v" + n) for n in names[1000:]])
        keys.add(2, bytearray(raw_keys[2]), current=True)
        assert kv.reseal_step(keys, 1, batch=300) == 300
        assert kv.reseal_step(keys, 1, batch=300) == 300
    # A new process with the same key versions picks up where the last batch ended.
    keys = keyset(raw_keys, current=2)
    with KvStore.open(path) as kv:
        assert (kv.count(1), kv.count(2)) == (600, 600)
        moved = 0
        while step := kv.reseal_step(keys, 1, batch=250):
            moved += step
        assert moved == 600 and (kv.count(1), kv.count(2)) == (0, 1200)
        assert [n for n, _ in kv.scan(keys, NS, b"", None, 1000)[0]] == names[:1000]
        assert all(kv.get(keys, NS, n) == b"v" + n for n in names)


def test_a_store_left_in_format_1_is_read_kept_and_rotated_to_format_2(tmp_path: Path) -> None:
    """What a store written before format 2 holds: its entries read as ever, new writes under the
    same key version stay in format 1 (one format a version), and rotation moves every entry to a
    new version in format 2, with nothing lost."""
    path, key3 = tmp_path / "kv", bytes(range(32))
    subkey = derive_subkey(bytearray(key3), sealing.v1.NAMES_LABEL)
    old = {b"old-%02d" % i: b"value %d" % i for i in range(20)}
    with raw_db(path) as db:
        db[OLD_ROCKS_KEY] = OLD_BLOB
        for name, value in old.items():
            ns_tag, tag = sealing.v1.namespace_tag(subkey, NS), sealing.v1.name_tag(subkey, NS, name)
            rocks_key = sealing.entry_key(3, ns_tag, tag)
            db[rocks_key] = sealing.v1.seal_entry(bytearray(key3), 3, rocks_key, NS, name, value)
    keys = keyset({3: key3})
    with KvStore.open(path) as kv:
        assert kv.get(keys, NS, b"greeting") == b"hello, world"
        assert all(kv.get(keys, NS, name) == value for name, value in old.items())
        assert isinstance(kv._materials[3], sealing.v1.Material)
        kv.put_many(keys, [(NS, b"new-1", b"after the upgrade"), (NS, b"old-00", b"rewritten")])
        assert kv.verify(keys) == [] and kv.count(3) == 22
    assert {blob[0] for _, blob in raw_items(path)} == {1}
    keys = keyset({3: key3})
    keys.add(4, bytearray(os.urandom(32)), current=True)
    with KvStore.open(path) as kv:
        assert kv.get(keys, NS, b"old-00") == b"rewritten"
        kv.put(keys, NS, b"new-2", b"under version 4")
        assert isinstance(kv._materials[4], sealing.v2.Material)
        (v3, ns3), = [(m, n) for m, n in _material_state(kv) if m.version == 3]
        while kv.reseal_step(keys, 3):
            pass
        keys.retire(3)
        kv.forget_versions(keys)
        _assert_wiped(v3, ns3)
        assert (kv.count(3), kv.count(4)) == (0, 23) and kv.verify(keys) == []
        names = [n for n, _ in kv.scan(keys, NS, b"", None, 100)[0]]
        assert names == sorted([b"greeting", b"new-1", b"new-2", *old])
        assert kv.get(keys, NS, b"greeting") == b"hello, world" and kv.get(keys, NS, b"old-07") == b"value 7"
    assert {(k[:5], blob[:5]) for k, blob in raw_items(path)} == {(b"e\x00\x00\x00\x04", b"\x02\x00\x00\x00\x04")}


def test_an_edited_format_byte_damages_one_entry_never_the_version(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    """The format of a version is learnt from its first entries; editing the first one's format byte
    (to make the store read, and write, a version in the wrong format) only damages that entry."""
    keys, path = keyset({1: raw_keys[1]}), tmp_path / "kv"
    with KvStore.open(path) as kv:
        kv.put_many(keys, [(NS, b"n%d" % i, b"v%d" % i) for i in range(10)])
    first_key, first_blob = raw_items(path)[0]  # the first in key order: the one a store probes first
    with raw_db(path) as db:
        db[first_key] = b"\x01" + first_blob[1:]
    with KvStore.open(path) as kv:
        served = 0
        for i in range(10):
            try:
                assert kv.get(keys, NS, b"n%d" % i) == b"v%d" % i
                served += 1
            except DamagedError as exc:
                assert "integrity check" in exc.message
        assert served == 9 and isinstance(kv._materials[1], sealing.v2.Material)
        kv.put(keys, NS, b"after", b"edit")
        assert len(kv.verify(keys)) == 1
    assert sum(blob[0] == 2 for _, blob in raw_items(path)) == 10


def test_key_cache_follows_the_keyset(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    store.put(keys, NS, b"name", b"value")
    assert store.scan(keys, NS, b"", None, 10)[0] == [(b"name", b"value")]
    # Another key under the same version: the cached names subkey must not be reused.
    keys.add(1, bytearray(raw_keys[2]))
    assert store.get(keys, NS, b"name") is None
    keys.add(1, bytearray(raw_keys[1]))
    assert store.get(keys, NS, b"name") == b"value"
    store.forget_keys()
    keys.wipe()
    with pytest.raises(MissingKeyError):
        store.get(keys, NS, b"name")
    keys = keyset({1: raw_keys[1]})
    assert store.scan(keys, NS, b"", None, 10)[0] == [(b"name", b"value")]


def test_a_get_takes_no_lock_for_what_is_cached_and_the_lock_for_what_it_would_make(
        store: KvStore, raw_keys: dict[int, bytes]) -> None:
    """While another thread holds the store's lock, a get of a namespace whose material is cached
    answers at once; a get of a namespace never seen waits for the lock, because making material
    is a change, and the lock-free path changes nothing (store.py, "Threads")."""
    import threading

    keys = keyset({1: raw_keys[1]})
    store.put(keys, NS, b"a", b"value of a")
    carol = Namespace("notes-app", "carol", "memories")
    material = store._hot[0]
    with pytest.raises(sealing.Uncached):
        material.read({}.get, carol, b"x")
    assert (carol.owner, carol.subject, carol.category) not in material.namespaces
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold)
    holder.start()
    answers: list[bytes | None] = []
    waiter = threading.Thread(target=lambda: answers.append(store.get(keys, carol, b"x")))
    try:
        assert held.wait(timeout=60)
        assert store.get(keys, NS, b"a") == b"value of a"  # the lock is held elsewhere: no lock taken
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and answers == []  # carol's material would be made: it waits for the lock
    finally:
        release.set()
        holder.join(timeout=60)
        waiter.join(timeout=60)
    assert answers == [None] and (carol.owner, carol.subject, carol.category) in material.namespaces


def test_a_seal_landing_inside_a_lock_free_get_makes_it_redo_itself_locked(
        store: KvStore, raw_keys: dict[int, bytes]) -> None:
    """The interleaving the threaded test below can only hope for, made to happen: the cached
    material is wiped (forget_keys, as a seal on another thread would) just as a lock-free get looks
    up its namespace's reader. The get finds its hash state gone, redoes itself under the lock with
    material made anew from the keys, and answers the value; with the keys wiped as well it answers
    MissingKeyError, as any get after a seal does."""
    keys = keyset({1: raw_keys[1]})
    store.put(keys, NS, b"name", b"value")
    assert store.get(keys, NS, b"name") == b"value"  # material cached: the next get takes the fast path

    class SealsOnLookup(dict):  # type: ignore[type-arg]
        def __init__(self, wipe_keys: bool) -> None:
            super().__init__(material.readers)
            self.wipe_keys = wipe_keys

        def get(self, key: object, default: object = None) -> object:
            found = super().get(key, default)
            store.forget_keys()
            if self.wipe_keys:
                keys.wipe()
            return found

    for wipe_keys in (False, True):
        material = store._hot[0]
        material.readers = SealsOnLookup(wipe_keys)
        if wipe_keys:
            with pytest.raises(MissingKeyError):
                store.get(keys, NS, b"name")
        else:
            assert store.get(keys, NS, b"name") == b"value"
            assert material.wiped and store._hot[0] is not material


def test_lock_free_gets_racing_seals_and_replaced_keys_never_err_or_serve_other_data(
        store: KvStore, raw_keys: dict[int, bytes]) -> None:
    """get's fast path takes no lock (store.py, "Threads"). Another thread wipes the cached material
    over and over (forget_keys, as a seal does) and adds and retires a second key version (KeySet
    changes, after which the next check wipes and remakes material), with the interpreter switching
    threads as often as it can: every get answers its own value, never another, and never leaks the
    ValueError of a wiped material (it redoes itself under the lock).

    The current version's key is also fetched again (the same bytes: KeySet keeps the bytearray it
    holds, which the reader may be deriving from, and wipes the copy); a key replaced by other
    bytes while material is derived from it is the deterministic test below."""
    import sys
    import threading

    keys = keyset({1: raw_keys[1]})
    values = {b"n%d" % i: b"value %d" % i for i in range(50)}
    store.put_many(keys, list((NS, n, v) for n, v in values.items()))
    started, done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            if not started.wait(timeout=60):
                raise TimeoutError("the reader never started")
            for i in range(800):
                if i % 4 == 0:
                    store.forget_keys()
                elif i % 4 == 1:
                    keys.add(2, bytearray(raw_keys[2]))  # an older-than-current version fetched late
                elif i % 4 == 2:
                    keys.retire(2)
                else:
                    keys.add(1, bytearray(raw_keys[1]))  # the current version fetched again
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread, which fails the test
            failures.append(exc)
        finally:
            done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=churn)
    try:
        worker.start()
        served = 0
        while not done.is_set() or served < 1000:
            for name, value in values.items():
                assert store.get(keys, NS, name) == value
                served += 1
            started.set()
    finally:
        sys.setswitchinterval(interval)
        worker.join(timeout=60)
    assert not worker.is_alive() and failures == [] and served > 0
    assert all(store.get(keys, NS, n) == v for n, v in values.items())


def test_a_key_fetched_again_keeps_the_held_bytes_and_a_replaced_one_is_wiped_after() -> None:
    keys, raw = KeySet("rocksdb"), os.urandom(32)
    held = bytearray(raw)
    keys.add(1, held)
    again = bytearray(raw)
    keys.add(1, again)
    assert keys.key(1) is held and held == raw and again == bytearray(32)
    other, generation = bytearray(os.urandom(32)), keys.generation
    keys.add(1, other)
    assert keys.key(1) is other and held == bytearray(32) and keys.generation > generation


@pytest.mark.parametrize("change", ["replace", "wipe"])
def test_a_key_changed_while_material_is_derived_from_it_is_never_used(
        store: KvStore, raw_keys: dict[int, bytes], monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """The event loop replaces a version's key by other bytes, or wipes the set (a seal), while a
    worker derives material from the key: the bytes are zeroed under the derivation. The store's
    check sees the generation moved and derives again, so nothing is sealed with material made
    from zeros: the put lands under the new key, or is refused as no key is held."""
    keys = keyset({1: raw_keys[1]})
    made, seen = sealing.material, []

    def change_then_make(version: int, key: bytearray, entry_format: int) -> sealing.VersionMaterial:
        if not seen:
            seen.append(version)
            if change == "replace":
                keys.add(1, bytearray(raw_keys[2]))
            else:
                keys.wipe()
            assert key == bytearray(32)  # what this derivation reads now
        return made(version, key, entry_format)

    monkeypatch.setattr(sealing, "material", change_then_make)
    if change == "wipe":
        with pytest.raises(MissingKeyError):
            store.put(keys, NS, b"name", b"value")
        assert store.is_empty()
        return
    store.put(keys, NS, b"name", b"value")
    monkeypatch.undo()
    assert store.get(keyset({1: raw_keys[2]}), NS, b"name") == b"value"
    assert store.get(keyset({1: bytes(32)}), NS, b"name") is None


def test_lookup_filters_on_new_files_and_files_written_without_them_still_read(
        tmp_path: Path, raw_keys: dict[int, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """The store writes SST files with whole-key Bloom filters (hashes of the already hashed keys);
    a database whose files predate the filters (written with the engine settings alone) reads the
    same, hits and misses, under one and two key versions."""
    from services.storage.kv import settings

    keys, names = keyset(raw_keys, current=1), [b"n%d" % i for i in range(300)]
    old_path, new_path = tmp_path / "old", tmp_path / "new"
    with monkeypatch.context() as patch:
        patch.setattr(settings, "store_options", settings.options)  # the store before the filters
        with KvStore.open(old_path) as kv:
            kv.put_many(keys, [(NS, n, n + b"!") for n in names])
    with KvStore.open(new_path) as kv:
        kv.put_many(keys, [(NS, n, n + b"!") for n in names])
    # Closing flushed each memtable into an SST file, under the options each was opened with.
    filtered = {path: [b"fullfilter.rocksdb.BuiltinBloomFilter" in data
                       for name, data in file_bytes(path).items() if name.endswith(".sst")]
                for path in (old_path, new_path)}
    assert filtered == {old_path: [False], new_path: [True]}
    later = keyset(raw_keys, current=2)  # version 2 current: every get misses under 2 first, then finds under 1
    for path in (old_path, new_path):
        with KvStore.open(path) as kv:
            for k in (keys, later):
                assert [kv.get(k, NS, n) for n in names] == [n + b"!" for n in names]
                assert kv.get(k, NS, b"absent") is None
            assert kv.verify(later) == []


# -- durability, backups, boundaries ---------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from services.storage.core.keys import KeySet
from services.storage.core.namespace import Namespace
from services.storage.kv.store import KvStore
keys = KeySet("rocksdb")
keys.add(1, bytearray.fromhex(sys.stdin.readline().strip()))
store = KvStore.open(Path(sys.argv[1]))
ns = Namespace("notes-app", "alice", "memories")
i = 0
while True:
    store.put(keys, ns, b"n%07d" % i, b"v%07d" % i)
    sys.stdout.write(f"{i}\\n")
    sys.stdout.flush()
    i += 1
"""


def read_lines(proc: subprocess.Popen[bytes], want: int | None, deadline: float) -> list[bytes]:
    """Complete lines from the child until ``want`` of them (None: until EOF) or the deadline fails."""
    assert proc.stdout is not None
    out, buf = [], b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while want is None or len(out) < want:
            left = deadline - time.monotonic()
            assert left > 0, f"child gave {len(out)} lines before the deadline"
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                assert want is None, f"child exited early: {proc.stderr.read() if proc.stderr else b''!r}"
                break
            *lines, buf = (buf + chunk).split(b"\n")
            out += lines
    return out


def test_acknowledged_puts_survive_sigkill(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    path = tmp_path / "kv"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(raw_keys[1].hex().encode() + b"\n")
        proc.stdin.close()
        acked = read_lines(proc, 300, time.monotonic() + 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # Acks still in the pipe were printed after their put returned: they count too.
    acked += read_lines(proc, None, time.monotonic() + 10)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 300
    keys = keyset({1: raw_keys[1]})
    with KvStore.open(path) as kv:
        for i in map(int, acked):
            assert kv.get(keys, NS, b"n%07d" % i) == b"v%07d" % i
        assert kv.verify(keys) == []


def test_checkpoint_is_a_usable_copy(store: KvStore, tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    store.put(keys, NS, b"name", b"before")
    dest = tmp_path / "backups" / "kv-1"
    store.checkpoint(dest)
    store.put(keys, NS, b"name", b"after")
    with pytest.raises(FileExistsError):
        store.checkpoint(dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    with KvStore.open(dest) as copy:
        assert copy.get(keys, NS, b"name") == b"before" and copy.verify(keys) == []


@pytest.mark.parametrize(("call", "message"), [
    (lambda kv, k: kv.put(k, NS, b"", b"v"), "record name is 1 to 1024 bytes"),
    (lambda kv, k: kv.put(k, NS, b"n" * (MAX_NAME_BYTES + 1), b"v"), "record name is 1 to 1024 bytes"),
    (lambda kv, k: kv.put(k, NS, "text", b"v"), "record name"),
    (lambda kv, k: kv.put(k, NS, b"n", b"v" * (MAX_VALUE_BYTES + 1)), "value is at most 524288 bytes"),
    (lambda kv, k: kv.put_many(k, [(NS, b"n", b"v")] * 1001), "at most 1000 records"),
    # A bad item after good ones refuses the whole batch (the store stays empty).
    (lambda kv, k: kv.put_many(k, [(NS, b"ok", b"v"), (NS, "text", b"v")]), "record name is 1 to 1024 bytes"),
    (lambda kv, k: kv.put_many(k, [(NS, b"ok", b"v"), (NS, b"n", bytearray(b"v"))]), "value is at most 524288"),
    (lambda kv, k: kv.get(k, NS, b""), "record name"),
    (lambda kv, k: kv.delete(k, NS, b"x" * 2000), "record name"),
    (lambda kv, k: kv.scan(k, NS, b"", None, 0), "scan limit is 1 to 1000"),
    (lambda kv, k: kv.scan(k, NS, b"", None, 1001), "scan limit is 1 to 1000"),
    (lambda kv, k: kv.scan(k, NS, b"p" * 1025, None, 10), "prefix is at most 1024"),
    (lambda kv, k: kv.scan(k, NS, b"", b"", 10), "scan cursor"),
], ids=["empty-name", "long-name", "str-name", "big-value", "big-batch", "batch-str-name", "batch-bytearray", "get",
         "delete", "limit-0", "limit-big", "prefix", "cursor"])
def test_bad_input_is_refused(store: KvStore, raw_keys: dict[int, bytes],
                              call: Callable[[KvStore, KeySet], object], message: str) -> None:
    keys = keyset({1: raw_keys[1]})
    with pytest.raises(BadRequest, match=message):
        call(store, keys)
    assert store.is_empty()


def test_closed_store_and_missing_keys(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    kv = KvStore.open(tmp_path / "kv")
    with pytest.raises(MissingKeyError):
        kv.put(KeySet("rocksdb"), NS, b"n", b"v")
    with pytest.raises(Unavailable, match="cannot open"):
        KvStore.open(tmp_path / "kv")  # RocksDB's LOCK refuses a second opener
    kv.close()
    kv.close()
    with pytest.raises(Unavailable, match="closed"):
        kv.get(keyset({1: raw_keys[1]}), NS, b"n")


def test_reseal_step_bounds_the_bytes_it_holds(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    keys = keyset({1: raw_keys[1]})
    big = os.urandom(MAX_VALUE_BYTES)
    for start in range(0, 40, 10):
        store.put_many(keys, [(NS, b"big%02d" % i, big) for i in range(start, start + 10)])
    keys.add(2, bytearray(raw_keys[2]), current=True)
    # 16 MiB of sealed values per step: 32 values of 512 KiB (plus their overhead), then the rest.
    assert [store.reseal_step(keys, 1), store.reseal_step(keys, 1), store.reseal_step(keys, 1)] == [32, 8, 0]
    assert store.get(keys, NS, b"big39") == big and store.count(2) == 40


def test_index_picks_up_a_version_fetched_late(store: KvStore, raw_keys: dict[int, bytes]) -> None:
    store.put(keyset({1: raw_keys[1]}), NS, b"under-1", b"old")
    keys = keyset({2: raw_keys[2]})
    store.put(keys, NS, b"under-2", b"new")
    assert store.scan(keys, NS, b"", None, 10) == ([(b"under-2", b"new")], None)
    # Storage fetches an older version it still needs: its names join the index.
    keys.add(1, bytearray(raw_keys[1]))
    assert store.scan(keys, NS, b"", None, 10) == ([(b"under-1", b"old"), (b"under-2", b"new")], None)


def test_import_from_a_checkpoint_reseals_under_this_meshs_keys(tmp_path: Path, raw_keys: dict[int, bytes]) -> None:
    source_keys = keyset({1: raw_keys[1]})
    with KvStore.open(tmp_path / "old") as old:
        old.put_many(source_keys, [(NS, b"n%04d" % i, b"v%d" % i) for i in range(1000)])
        source_keys.add(2, bytearray(raw_keys[2]), current=True)
        old.put_many(source_keys, [(NS, b"m%04d" % i, b"w%d" % i) for i in range(500)])
        old.checkpoint(tmp_path / "snapshot")
    keys = keyset({5: os.urandom(32)})
    with KvStore.open(tmp_path / "new") as new:
        with pytest.raises(MissingKeyError):
            new.import_from(tmp_path / "snapshot", keyset({2: raw_keys[2]}), keys)
        assert new.import_from(tmp_path / "snapshot", keyset(raw_keys, current=2), keys) == 1500
        assert (new.count(5), new.get(keys, NS, b"n0999"), new.get(keys, NS, b"m0000")) == (1500, b"v999", b"w0")
        assert new.verify(keys) == []

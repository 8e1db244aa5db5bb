"""The STREAM chunk format (core/stream.py) and the encrypted file store (files/store.py): round trips, every
kind of tampering, crash recovery of uploads and rotation, names that never reach the disk."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.storage.core import stream
from services.storage.core.errors import DamagedError
from services.storage.core.keys import KeySet
from services.storage.core.namespace import Namespace
from services.storage.core.stream import StreamReader, StreamWriter, iter_plaintext, read_chunk
from services.storage.files.store import FileStore
from shared import BadRequest, NotFound

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64
KEY = bytearray(range(32))
AAD = b"namespace+name"
NS = Namespace("app", "alice", "docs")


def seal_stream(data: bytes, *, key: bytearray = KEY, aad: bytes = AAD, version: int = 1) -> bytes:
    out = io.BytesIO()
    with StreamWriter(out, key, version, aad, chunk_size=CHUNK) as writer:
        for i in range(0, len(data), 50):  # pieces that straddle chunk boundaries
            writer.write(data[i:i + 50])
    return out.getvalue()


def open_stream(blob: bytes, aad: bytes = AAD) -> bytes:
    return b"".join(iter_plaintext(io.BytesIO(blob), lambda _v: KEY, aad))


def chunk_span(index: int) -> slice:
    start = stream.HEADER_BYTES + index * (CHUNK + stream.TAG_BYTES)
    return slice(start, start + CHUNK + stream.TAG_BYTES)


DATA = bytes(range(256)) * 2  # 512 bytes: 8 full chunks


# -- STREAM --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 1000])
def test_stream_round_trip_and_length(size: int) -> None:
    data = os.urandom(size)
    blob = seal_stream(data)
    assert len(blob) == stream.stream_length(size, CHUNK)
    assert open_stream(blob) == data
    # An empty plaintext is one empty final chunk; an exact multiple has no empty chunk after it.
    assert stream.chunk_count(size, CHUNK) == max(1, -(-size // CHUNK))
    assert stream.header_of(io.BytesIO(blob)).key_version == 1


def test_stream_writer_emits_as_it_goes() -> None:
    out = io.BytesIO()
    writer = StreamWriter(out, KEY, 1, AAD, chunk_size=CHUNK)
    writer.write(bytes(10 * CHUNK))
    # Nine chunks are out; the tenth waits, since only close() knows it is the last.
    assert len(out.getvalue()) == stream.HEADER_BYTES + 9 * (CHUNK + stream.TAG_BYTES)
    writer.close()
    assert writer.chunks == 10 and writer.size == 10 * CHUNK


def test_stream_truncated_anywhere_is_refused() -> None:
    blob = seal_stream(DATA)
    for cut in range(len(blob)):
        with pytest.raises(DamagedError):
            open_stream(blob[:cut])


def test_stream_bytes_after_the_final_chunk_are_refused() -> None:
    blob = seal_stream(DATA)
    with pytest.raises(DamagedError, match="chunk 7 failed its integrity check"):
        open_stream(blob + b"\x00")
    # A whole extra chunk from the same stream appended after the end is refused as well.
    with pytest.raises(DamagedError):
        open_stream(blob + blob[chunk_span(3)])


def test_stream_reordered_or_spliced_chunks_are_refused() -> None:
    blob = bytearray(seal_stream(DATA))
    swapped = bytearray(blob)
    swapped[chunk_span(1)], swapped[chunk_span(2)] = blob[chunk_span(2)], blob[chunk_span(1)]
    with pytest.raises(DamagedError, match="chunk 1 failed"):
        open_stream(bytes(swapped))
    other = seal_stream(DATA)  # same key, aad and plaintext: only the per-stream salt and prefix differ
    spliced = bytearray(blob)
    spliced[chunk_span(2)] = other[chunk_span(2)]
    with pytest.raises(DamagedError, match="chunk 2 failed"):
        open_stream(bytes(spliced))


def test_stream_any_flipped_bit_or_wrong_binding_is_refused() -> None:
    blob = seal_stream(DATA[:200])
    for position in range(len(blob)):
        flipped = bytearray(blob)
        flipped[position] ^= 0x01
        with pytest.raises(DamagedError):
            open_stream(bytes(flipped))
    with pytest.raises(DamagedError):
        open_stream(blob, aad=b"another name")
    with pytest.raises(DamagedError):
        b"".join(iter_plaintext(io.BytesIO(blob), lambda _v: bytearray(32), AAD))


def test_stream_header_errors_are_clear() -> None:
    blob = seal_stream(b"x")
    with pytest.raises(DamagedError, match="not a curvemesh stream"):
        open_stream(b"XXXX" + blob[4:])
    with pytest.raises(DamagedError, match="unknown format version 2"):
        open_stream(blob[:4] + b"\x02" + blob[5:])
    huge = blob[:32] + (1 << 30).to_bytes(4, "big") + blob[36:]
    with pytest.raises(DamagedError, match="invalid chunk size"):
        open_stream(huge)


def test_stream_random_access() -> None:
    blob = seal_stream(DATA[:300])  # chunks 0-3 full, chunk 4 holds 44 bytes
    for index in range(5):
        plain, last = read_chunk(io.BytesIO(blob), lambda _v: KEY, AAD, index)
        assert plain == DATA[index * CHUNK:min(300, (index + 1) * CHUNK)]
        assert last == (index == 4)
    with pytest.raises(BadRequest, match="past the end"):
        read_chunk(io.BytesIO(blob), lambda _v: KEY, AAD, 5)
    cut = blob[:chunk_span(3).stop]  # cut at a chunk boundary: the final chunk is gone
    with StreamReader(io.BytesIO(cut), lambda _v: KEY, AAD) as reader:
        assert reader.read_chunk(1)[0] == DATA[CHUNK:2 * CHUNK]
        with pytest.raises(DamagedError, match="chunk 3 failed"):
            reader.read_chunk(3)
        with pytest.raises(DamagedError, match="chunk 3 failed"):
            reader.read_chunk(9)


# -- the file store ------------------------------------------------------------------------------------

@pytest.fixture
def keys() -> KeySet:
    keyset = KeySet("files")
    keyset.add(1, bytearray(os.urandom(32)))
    return keyset


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files", chunk_size=CHUNK)


def put(store: FileStore, keys: KeySet, name: str, data: bytes, ns: Namespace = NS) -> None:
    upload = store.begin(keys, ns, name, len(data))
    for i in range(0, len(data), 100):
        upload.write(data[i:i + 100])
    store.commit(upload)


def get(store: FileStore, keys: KeySet, name: str, ns: Namespace = NS, step: int = 3) -> bytes:
    out, offset = [], 0
    while offset is not None:
        data, offset = store.read(keys, ns, name, offset, step)
        out.append(data)
    return b"".join(out)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.v*") if p.is_file())


def test_round_trip_info_and_replace(store: FileStore, keys: KeySet) -> None:
    data = os.urandom(1000)
    put(store, keys, "report.pdf", data)
    info = store.info(keys, NS, "report.pdf")
    assert info is not None and (info.name, info.size, info.chunks, info.version) == ("report.pdf", 1000, 16, 1)
    assert get(store, keys, "report.pdf") == data
    assert store.read(keys, NS, "report.pdf", 15, 8) == (data[15 * CHUNK:], None)
    put(store, keys, "report.pdf", b"")  # replacing: one blob, the new content, one empty chunk
    assert get(store, keys, "report.pdf") == b"" and len(blob_files(store.root)) == 1
    assert store.info(keys, NS, "missing") is None
    with pytest.raises(NotFound):
        store.read(keys, NS, "missing", 0, 1)
    with pytest.raises(BadRequest, match="past the end"):
        store.read(keys, NS, "report.pdf", 1, 1)
    assert store.info(keys, Namespace("app", "bob", "docs"), "report.pdf") is None


def test_upload_limits_and_abort(store: FileStore, keys: KeySet) -> None:
    for bad in ["", "x" * 256, "a\x00b", "line\nbreak", "\x7f", "a\u2028b"]:
        with pytest.raises(BadRequest):
            store.begin(keys, NS, bad, None)
    upload = store.begin(keys, NS, "ünïcode 名前 🙂", 10)
    with pytest.raises(BadRequest, match="larger than its announced size"):
        upload.write(b"x" * 11)
    with pytest.raises(BadRequest, match="at most"):
        upload.write(bytes(256 * 1024 + 1))
    assert upload.write(b"12345") == 5
    store.abort(upload)
    store.abort(upload)  # idempotent
    with pytest.raises(BadRequest, match="finished"):
        upload.write(b"x")
    assert list((store.root / "tmp").iterdir()) == [] and store.is_empty()


def test_list_pages_and_delete(store: FileStore, keys: KeySet) -> None:
    names = [f"photo-{i}" for i in range(7)] + ["notes"]
    for name in names:
        put(store, keys, name, name.encode())
    put(store, keys, "photo-x", b"other namespace", Namespace("app", "bob", "docs"))
    seen, after = [], None
    while True:
        page, after = store.list(keys, NS, "photo-", after, 3)
        seen += [info.name for info in page]
        if after is None:
            break
        assert len(page) == 3
    assert seen == sorted(n for n in names if n.startswith("photo-"))
    assert [i.name for i in store.list(keys, NS, "", None, 100)[0]] == sorted(names)
    assert store.delete(keys, NS, "notes") is True
    assert store.delete(keys, NS, "notes") is False
    assert store.info(keys, NS, "notes") is None
    with pytest.raises(BadRequest):
        store.list(keys, NS, "", None, 0)


def test_names_and_content_never_reach_the_disk(store: FileStore, keys: KeySet) -> None:
    marker = "CANARY-7f3e9b1c"
    put(store, keys, marker, (marker * 100).encode())
    upload = store.begin(keys, NS, marker + "-pending", None)
    upload.write((marker * 10).encode())  # in flight: its .part file is encrypted too
    for path in store.root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert marker.encode() not in content and marker not in path.name
            assert path.stat().st_mode & 0o777 == 0o600
        else:
            assert path.stat().st_mode & 0o777 == 0o700
    store.abort(upload)


def test_moved_or_damaged_blob_is_refused(store: FileStore, keys: KeySet) -> None:
    put(store, keys, "a", b"A" * 200)
    put(store, keys, "b", b"B" * 200)
    # Put a's blob in b's place: a copy under another name must not open.
    a_blob, b_blob = store._path(keys, 1, NS, "a"), store._path(keys, 1, NS, "b")
    os.replace(a_blob, b_blob)
    with pytest.raises(DamagedError, match="failed its integrity check"):
        store.read(keys, NS, "b", 0, 1)
    problems = store.verify(keys)
    assert len(problems) == 1 and b_blob.name in problems[0]
    put(store, keys, "c", os.urandom(300))
    c_blob = store._path(keys, 1, NS, "c")
    raw = bytearray(c_blob.read_bytes())
    raw[1000] ^= 0x01  # the metadata slot's padding is checked too
    c_blob.write_bytes(raw)
    with pytest.raises(DamagedError, match="metadata failed its integrity check"):
        store.info(keys, NS, "c")
    raw[1000] ^= 0x01
    raw[-5] ^= 0x10  # inside the last chunk
    c_blob.write_bytes(raw)
    assert store.read(keys, NS, "c", 0, 1)[1] == 1  # earlier chunks still serve
    with pytest.raises(DamagedError, match="chunk 4 failed"):
        store.read(keys, NS, "c", 4, 1)
    c_blob.write_bytes(raw[:-100])  # truncated: the final chunk is gone
    assert len(store.verify(keys)) == 2


def test_leftover_part_files_are_removed_at_open(tmp_path: Path, keys: KeySet) -> None:
    store = FileStore(tmp_path / "files", chunk_size=CHUNK)
    upload = store.begin(keys, NS, "half", None)
    upload.write(b"x" * 500)  # the process "dies" here: the upload is never committed
    assert len(list((tmp_path / "files" / "tmp").iterdir())) == 1
    reopened = FileStore(tmp_path / "files", chunk_size=CHUNK)
    assert list((tmp_path / "files" / "tmp").iterdir()) == []
    assert reopened.info(keys, NS, "half") is None and reopened.is_empty()


def test_rotation_moves_every_blob(store: FileStore, keys: KeySet) -> None:
    contents = {f"f{i}": os.urandom(i * 70) for i in range(5)}
    for name, data in contents.items():
        put(store, keys, name, data)
    spanning = store.begin(keys, NS, "f1", None)  # begun under v1, committed after the rotation
    spanning.write(b"newer")
    keys.add(2, bytearray(os.urandom(32)), current=True)
    assert store.commit(spanning).version == 2
    contents["f1"] = b"newer"
    assert store.count(1) == 4
    moved = 0
    while store.rotate_step(keys, 1):
        moved += 1
    assert moved == 4 and store.count(1) == 0 and store.count(2) == 5
    keys.retire(1)
    assert {n: get(store, keys, n) for n in contents} == contents
    assert store.verify(keys) == []


CRASH = """
import os, sys
from pathlib import Path
from services.storage.files.store import FileStore
from services.storage.core.keys import KeySet
from services.storage.core.namespace import Namespace
root, mode, step, k1, k2 = sys.argv[1:6]
keys = KeySet("files")
keys.add(1, bytearray.fromhex(k1))
keys.add(2, bytearray.fromhex(k2), current=True)
def checkpoint(name):
    if name == step:
        os._exit(9)
store = FileStore(Path(root), chunk_size=64, checkpoint=checkpoint)
if mode == "rotate":
    while store.rotate_step(keys, 1):
        pass
else:
    upload = store.begin(keys, Namespace("app", "alice", "docs"), "f0", None)
    upload.write(b"new content")
    store.commit(upload)
"""


@pytest.mark.parametrize(("mode", "step"), [("rotate", "rotate-written"), ("rotate", "rotate-renamed"),
                                            ("commit", "commit-written"), ("commit", "commit-renamed")])
def test_crash_during_rotation_or_commit_loses_nothing(tmp_path: Path, keys: KeySet, mode: str, step: str) -> None:
    root = tmp_path / "files"
    store = FileStore(root, chunk_size=CHUNK)
    contents = {f"f{i}": os.urandom(150 + i) for i in range(3)}
    for name, data in contents.items():
        put(store, keys, name, data)
    k2 = bytearray(os.urandom(32))
    result = subprocess.run([sys.executable, "-c", CRASH, str(root), mode, step, keys.key(1).hex(), k2.hex()],
                            cwd=REPO, capture_output=True, timeout=60)
    assert result.returncode == 9, result.stderr.decode()
    if step.endswith("renamed"):
        assert store.count(1) == 3 and store.count(2) == 1  # both versions of one name are on disk
    keys.add(2, k2, current=True)
    store = FileStore(root, chunk_size=CHUNK)  # restart
    assert list((root / "tmp").iterdir()) == []
    if step == "commit-renamed":
        contents["f0"] = b"new content"  # acknowledged on disk before the crash: the newer content wins
    assert {n: get(store, keys, n) for n in contents} == contents
    while store.rotate_step(keys, 1):
        pass
    assert store.count(1) == 0 and {n: get(store, keys, n) for n in contents} == contents
    assert store.verify(keys) == []


def test_stale_old_version_never_wins(store: FileStore, keys: KeySet) -> None:
    put(store, keys, "doc", b"old")
    (stale,) = blob_files(store.root)
    saved = stale.read_bytes()
    keys.add(2, bytearray(os.urandom(32)), current=True)
    put(store, keys, "doc", b"new")  # commit under v2 removes the v1 blob...
    assert not stale.exists()
    stale.parent.mkdir(mode=0o700, exist_ok=True)
    stale.write_bytes(saved)  # ...and a crash (or an attacker) puts it back
    assert get(store, keys, "doc") == b"new"
    assert [i.name for i in store.list(keys, NS, "", None, 10)[0]] == ["doc"]
    assert store.rotate_step(keys, 1) == 1 and store.rotate_step(keys, 1) == 0
    assert get(store, keys, "doc") == b"new" and store.count(1) == 0


def test_snapshot_and_import_into_other_keys(tmp_path: Path, store: FileStore, keys: KeySet) -> None:
    contents = {"one": os.urandom(300), "two": b""}
    for name, data in contents.items():
        put(store, keys, name, data)
    snap = tmp_path / "snap"
    rels = store.snapshot(snap)
    assert len(rels) == 2 and all((snap / rel).read_bytes() == (store.root / rel).read_bytes() for rel in rels)
    store.delete(keys, NS, "one")
    assert (snap / rels[0]).exists() or (snap / rels[1]).exists()
    with pytest.raises(ValueError, match="empty"):
        store.snapshot(snap)
    other_keys = KeySet("files")
    other_keys.add(5, bytearray(os.urandom(32)))
    other = FileStore(tmp_path / "other", chunk_size=CHUNK)
    assert other.import_from(snap, keys, other_keys) == 2
    assert {n: get(other, other_keys, n) for n in contents} == contents
    assert other.verify(other_keys) == []


def test_concurrent_commits_and_forget_keys(store: FileStore, keys: KeySet) -> None:
    def worker(i: int) -> None:
        put(store, keys, f"t{i}", bytes([i]) * 300)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.list(keys, NS, "t", None, 100)[0]) == 8
    pending = store.begin(keys, NS, "pending", None)
    pending.write(b"x")
    store.forget_keys()  # the mesh is sealed: uploads in flight are dropped
    assert list((store.root / "tmp").iterdir()) == []
    with pytest.raises(BadRequest):
        pending.write(b"y")
    assert get(store, keys, "t3") == bytes([3]) * 300  # subkeys are derived again on the next use
    keys.add(3, bytearray(os.urandom(32)), current=True)
    keys.retire(1)
    assert any("does not hold" in p for p in store.verify(keys))

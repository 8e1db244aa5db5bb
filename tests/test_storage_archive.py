"""The backup archive container (archive/format.py, writer.py, reader.py): round trips, both
openers, and refusal of every damaged, truncated, edited or hostile archive before anything is
written."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

from services.storage.archive.format import (
    ManifestEntry,
    check_entry_name,
    open_with_backup_key,
    open_with_passphrase,
    read_header,
)
from services.storage.archive.reader import extract_archive, verify_archive
from services.storage.archive.writer import ArchiveInfo, ArchiveWriter, write_archive
from services.storage.core.errors import DamagedError, MissingKeyError
from shared import Argon2Profile, BadRequest, Unauthenticated

from .conftest import resident_bytes

REPO = Path(__file__).resolve().parent.parent
TINY = Argon2Profile(memory_kib=8, iterations=1, parallelism=1)
PASSPHRASE = b"correct horse battery staple"
BACKUP_KEY = (3, bytearray(range(32)))
META = {"mesh_id": "mesh-1", "sequence": 7, "note": "hello"}


@pytest.fixture
def source(tmp_path: Path) -> list[tuple[str, Path]]:
    root = tmp_path / "snapshot"
    (root / "files" / "ab").mkdir(parents=True)
    contents = {"records.db": os.urandom(3 << 20), "files/ab/cd.v1": os.urandom(1000),
                "files/ab/empty.v1": b"", "kv/CURRENT": b"MANIFEST-000001\n"}
    entries = []
    for name, data in contents.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append((name, path))
    return entries


def make(path: Path, files: list[tuple[str, Path]], *, passphrase: bytes | None = PASSPHRASE,
         chunk_size: int = 64 * 1024) -> ArchiveInfo:
    return write_archive(path, files, {"KEYS": b"k" * 96}, META, BACKUP_KEY,
                         bytearray(passphrase) if passphrase else None, TINY, chunk_size=chunk_size)


def key_of(path: Path) -> bytearray:
    return open_with_backup_key(read_header(path), BACKUP_KEY[1])


def assert_refused(path: Path, key: bytearray, dest: Path, match: str | None = None) -> None:
    with pytest.raises(DamagedError, match=match):
        verify_archive(path, key)
    with pytest.raises(DamagedError, match=match):
        extract_archive(path, key, dest)
    assert not dest.exists(), "nothing may be written for a refused archive"


def small(tmp_path: Path) -> list[tuple[str, Path]]:
    (tmp_path / "s").mkdir(exist_ok=True)
    entries = []
    for i in range(3):
        path = tmp_path / "s" / f"f{i}"
        path.write_bytes(os.urandom(150 * i))
        entries.append((f"dir/f{i}", path))
    return entries


def test_round_trip_with_either_opener(tmp_path: Path, source: list[tuple[str, Path]]) -> None:
    progress: list[tuple[int, int]] = []
    info = write_archive(tmp_path / "a.cmbak", source, {"KEYS": b"k" * 96}, META, BACKUP_KEY,
                         bytearray(PASSPHRASE), TINY, lambda done, total: progress.append((done, total)))
    total = sum(p.stat().st_size for _, p in source) + 96
    assert progress[-1] == (total, total) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert (tmp_path / "a.cmbak").stat().st_mode & 0o777 == 0o600 and info.size == (tmp_path / "a.cmbak").stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    header = read_header(tmp_path / "a.cmbak")
    assert (header.mesh_id, header.sequence, header.backup_key_version, header.has_passphrase) == ("mesh-1", 7, 3, True)
    by_backup = open_with_backup_key(header, lambda v: BACKUP_KEY[1] if v == 3 else bytearray(32))
    by_passphrase = open_with_passphrase(header, bytearray(PASSPHRASE), allow_test_profiles=True)
    assert by_backup == by_passphrase and len(by_backup) == 32
    manifest = verify_archive(tmp_path / "a.cmbak", by_backup)
    assert manifest.meta == META and manifest.total_bytes == total and manifest.extras == {}
    assert [e.name for e in manifest.entries] == [name for name, _ in source] + ["KEYS"]
    seen: list[tuple[int, int]] = []
    extracted = extract_archive(tmp_path / "a.cmbak", by_backup, tmp_path / "out", lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] == 2 * info.size
    assert extracted["KEYS"] == b"k" * 96 and not (tmp_path / "out" / "KEYS").exists()
    for name, path in source:
        out = tmp_path / "out" / name
        assert out.read_bytes() == path.read_bytes() and out.stat().st_mode & 0o777 == 0o600
    extracted.wipe()


def test_wrong_openers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.cmbak"
    make(path, small(tmp_path))
    header = read_header(path)
    with pytest.raises(Unauthenticated, match="passphrase does not open this archive"):
        open_with_passphrase(header, bytearray(b"wrong passphrase"), allow_test_profiles=True)
    with pytest.raises(Unauthenticated, match="backup key does not open"):
        open_with_backup_key(header, bytearray(32))
    def retired(version: int) -> bytearray:
        raise MissingKeyError(f"version {version} is retired")

    with pytest.raises(MissingKeyError):
        open_with_backup_key(header, retired)
    # A tiny profile is refused unless test profiles are allowed: an edited header cannot weaken it.
    with pytest.raises(DamagedError, match="below the minimum"):
        open_with_passphrase(header, bytearray(PASSPHRASE))
    make(tmp_path / "b.cmbak", small(tmp_path), passphrase=None)
    with pytest.raises(BadRequest, match="no passphrase"):
        open_with_passphrase(read_header(tmp_path / "b.cmbak"), bytearray(PASSPHRASE), True)
    with pytest.raises(FileExistsError):
        make(path, small(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".part") == []


def rewrite_header(path: Path, **changes: object) -> None:
    raw = path.read_bytes()
    length = struct.unpack(">I", raw[5:9])[0]
    fields = msgpack.unpackb(raw[9:9 + length], raw=False)
    fields.update(changes)
    body = msgpack.packb(fields, use_bin_type=True)
    path.write_bytes(raw[:5] + struct.pack(">I", len(body)) + body + raw[9 + length:])


def test_header_edits_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.cmbak"
    make(path, small(tmp_path))
    key = key_of(path)
    rewrite_header(path, sequence=8)  # a rollback disguised as a newer archive
    with pytest.raises(Unauthenticated):
        open_with_backup_key(read_header(path), BACKUP_KEY[1])
    assert_refused(path, key, tmp_path / "out", "archive chunk 0 failed its integrity check")
    make(tmp_path / "b.cmbak", small(tmp_path))
    header = read_header(tmp_path / "b.cmbak")
    rewrite_header(tmp_path / "b.cmbak", kdf=[64 << 20, 1, 1, header.kdf[1]])  # 64 GiB: refused before Argon2 runs
    with pytest.raises(DamagedError, match="beyond the allowed cost"):
        open_with_passphrase(read_header(tmp_path / "b.cmbak"), bytearray(PASSPHRASE), True)
    raw = path.read_bytes()
    path.write_bytes(raw[:4] + b"\x02" + raw[5:])
    with pytest.raises(DamagedError, match="format version 2 is not supported"):
        read_header(path)
    path.write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(DamagedError, match="not a curvemesh backup archive"):
        read_header(path)


def test_truncated_archive_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "a.cmbak"
    make(path, small(tmp_path), chunk_size=64)
    raw, key = path.read_bytes(), key_of(path)
    header_len = len(read_header(path).raw)
    last_chunk = len(raw) - ((len(raw) - header_len - 36) % (64 + 16) or 80)
    for cut in [0, 3, 7, header_len - 1, header_len, header_len + 36, header_len + 500, last_chunk,
                last_chunk + 1, len(raw) - 1]:
        path.write_bytes(raw[:cut])
        assert_refused(path, key, tmp_path / "out")
    path.write_bytes(raw + b"\x00")
    assert_refused(path, key, tmp_path / "out")


def test_any_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.cmbak"
    make(path, small(tmp_path), chunk_size=64)
    raw, key = path.read_bytes(), key_of(path)
    header_len = len(read_header(path).raw)
    for position in [*range(header_len + 40), *range(header_len + 40, len(raw), 7), len(raw) - 1]:
        flipped = bytearray(raw)
        flipped[position] ^= 0x04
        path.write_bytes(flipped)
        with pytest.raises(DamagedError):
            verify_archive(path, key)
    path.write_bytes(raw)
    assert_refused(path, bytearray(32), tmp_path / "out")  # the wrong archive key


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\..\\b", "a\x00b", "",
                                  "MANIFEST", "a/\n"])
def test_hostile_entry_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="archive entry name"):
        check_entry_name(name)
    path = tmp_path / "a.cmbak"
    with ArchiveWriter(path, mesh_id="m", sequence=1, backup_key=BACKUP_KEY) as writer:
        writer.add_bytes("ok", b"fine")
        # The public adders refuse such names; a hostile archive is crafted below them.
        writer._entries.append(writer._write_entry(name, "file", 4, [b"evil"]))
        writer.finish({})
    assert_refused(path, key_of(path), tmp_path / "out", "archive entry name")
    assert not (tmp_path / "evil").exists()


def test_inconsistent_entries_are_refused(tmp_path: Path) -> None:
    cases = {
        "twice": lambda w: [w._entries.append(w._write_entry("x", "file", 1, [b"1"])) for _ in range(2)],
        "not in the manifest": lambda w: w._write_entry("x", "file", 1, [b"1"]),
        "missing": lambda w: w._entries.append(ManifestEntry("x", "file", 1, bytes(32))),
        "both a file and a directory": lambda w: [w._entries.append(w._write_entry(n, "file", 1, [b"1"]))
                                                  for n in ("a", "a/b")],
        "does not match the manifest": lambda w: w._entries.append(
            ManifestEntry(w._write_entry("x", "file", 1, [b"1"]).name, "file", 1, bytes(32))),
    }
    for i, (message, craft) in enumerate(cases.items()):
        path = tmp_path / f"{i}.cmbak"
        with ArchiveWriter(path, mesh_id="m", sequence=1, backup_key=BACKUP_KEY) as writer:
            writer.add_file("first", small(tmp_path)[1][1])
            craft(writer)
            writer.finish({})
        assert_refused(path, key_of(path), tmp_path / "out", message)


def test_destination_and_sources_are_checked(tmp_path: Path) -> None:
    files = small(tmp_path)
    path = tmp_path / "a.cmbak"
    make(path, files)
    key = key_of(path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        extract_archive(path, key, tmp_path / "full")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="empty"):
        extract_archive(path, key, tmp_path / "link")
    # A source that is a symlink (here to a real, readable file) is refused by the open itself
    # (O_NOFOLLOW answers ELOOP), not by some later failure, and no archive is left behind.
    (tmp_path / "s" / "sym").symlink_to(files[1][1])
    with pytest.raises(OSError) as refused:
        make(tmp_path / "b.cmbak", [("sym", tmp_path / "s" / "sym")])
    assert refused.value.errno == errno.ELOOP and refused.value.filename == str(tmp_path / "s" / "sym")
    assert not (tmp_path / "b.cmbak").exists() and not list(tmp_path.glob(".b.cmbak*"))


MEMORY = textwrap.dedent("""
    import os, resource, sys
    from pathlib import Path
    from services.storage.archive.format import open_with_backup_key
    from services.storage.archive.reader import verify_archive
    from services.storage.archive.writer import write_archive
    from services.storage.files.store import FileStore
    from services.storage.core.keys import KeySet
    from services.storage.core.namespace import Namespace

    work = Path(sys.argv[1])
    big = work / "big"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    keys = KeySet("files")
    keys.add(1, bytearray(os.urandom(32)))
    store, ns = FileStore(work / "files"), Namespace("app", "alice", "docs")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info = write_archive(work / "a.cmbak", [("big", big)], {}, {"mesh_id": "m", "sequence": 1},
                         (1, bytearray(32)))
    manifest = verify_archive(work / "a.cmbak", open_with_backup_key(info.header, bytearray(32)))
    assert manifest.total_bytes == 64 << 20
    upload = store.begin(keys, ns, "big", None)
    with open(big, "rb") as f:
        while piece := f.read(256 * 1024):
            upload.write(piece)
    store.commit(upload)
    offset, total = 0, 0
    while offset is not None:
        data, offset = store.read(keys, ns, "big", offset, 8)
        total += len(data)
    assert total == 64 << 20 and store.verify(keys) == []
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")


def test_memory_stays_flat_for_a_64_mib_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", MEMORY, str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    growth_mib = int(result.stdout.strip())
    assert growth_mib < 24, f"peak memory grew by {growth_mib} MiB streaming a 64 MiB file"


@pytest.mark.parametrize("drop_every", [1 << 20, None])
def test_the_archive_leaves_the_page_cache_as_it_found_it(tmp_path: Path, drop_every: int | None) -> None:
    """Written every ``drop_every`` bytes, synced and dropped from the page cache, so the part being
    written keeps at most about that much cached (the default, 64 MiB, keeps all of these 8 MiB
    until the end); published, none of it is cached; and it reads back whole."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 << 20))
    path = tmp_path / "a.cmbak"
    options = {} if drop_every is None else {"drop_every": drop_every}
    with ArchiveWriter(path, mesh_id="m", sequence=1, backup_key=BACKUP_KEY, **options) as writer:
        writer.add_file("big", big)
        (part,) = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
        cached = resident_bytes(part)
        if drop_every is None:
            assert cached >= 6 << 20
        else:
            assert cached <= 3 << 20
        writer.finish({"mesh_id": "m", "sequence": 1})
    assert resident_bytes(path) == 0
    extract_archive(path, key_of(path), tmp_path / "out").wipe()
    assert (tmp_path / "out" / "big").read_bytes() == big.read_bytes()

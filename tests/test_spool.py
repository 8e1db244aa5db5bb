"""The spool (shared/_spool.py): bounded, ordered, durable, at-least-once, with acks that append a
small marker instead of rewriting the file, and compactions whose total cost stays linear.

The crash tests run ``python -m tests.test_spool PATH STEP`` (the ``main`` below), which kills
itself with ``os._exit`` at one named step, like kill -9, and then reopen the spool here.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shared import Spool

REPO = Path(__file__).resolve().parents[1]
#: An ack marker's frame at most: length, array header, the tag, a count up to 2**32.
MARKER_MAX = 4 + 1 + len("spool.ack") + 1 + 5
STEPS = ("ack-written", "ack-synced", "compact-written", "compact-renamed", "compact-synced")


def rec(n: int, pad: int = 0) -> dict[str, Any]:
    return {"type": "test.event", "n": n, "pad": "x" * pad}


def frame(item: object) -> bytes:
    data: bytes = msgpack.packb(item, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def numbers(records: Iterable[dict[str, Any]]) -> list[int]:
    return [r["n"] for r in records]


def reopened(path: Path, max_records: int = 100_000) -> list[int]:
    spool = Spool(path, max_records)
    try:
        return numbers(spool.pending(len(spool)))
    finally:
        spool.close()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_records_round_trip_in_order_through_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 100)
    assert all(spool.append(rec(n)) for n in range(10))
    assert len(spool) == 10 and numbers(spool.pending(3)) == [0, 1, 2]
    spool.close()
    spool.close()  # closing twice is harmless
    again = Spool(path, 100)
    assert again.pending(100) == [rec(n) for n in range(10)]
    again.close()


def test_acked_records_are_not_delivered_again_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 100)
    for n in range(10):
        spool.append(rec(n))
    spool.ack(0)
    spool.ack(-3)  # nothing to forget
    spool.ack(4)
    assert numbers(spool.pending(100)) == [4, 5, 6, 7, 8, 9]
    spool.close()
    assert reopened(path) == [4, 5, 6, 7, 8, 9]
    spool = Spool(path, 100)
    spool.ack(1_000)  # more than pending: everything
    assert len(spool) == 0
    spool.append(rec(10))
    spool.close()
    assert reopened(path) == [10]


def test_an_ack_appends_a_small_marker_instead_of_rewriting_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 1_000)
    for n in range(500):
        spool.append(rec(n, 100))
    spool.sync()
    inode, size = path.stat().st_ino, path.stat().st_size
    for _ in range(5):
        spool.ack(100)
        grown = path.stat().st_size - size
        assert 0 < grown <= MARKER_MAX and path.stat().st_ino == inode
        size += grown
    spool.close()
    assert reopened(path) == []


def test_draining_a_long_outage_writes_bytes_linear_in_the_data(tmp_path: Path) -> None:
    # 20,000 records drained 100 per ack, as the shippers do. The file only grows except at a
    # compaction, which writes the new (smaller) file once: the bytes written are the appends,
    # the markers and the sizes right after each shrink. A rewrite per ack would be ~100x the data.
    path = tmp_path / "s.spool"
    spool = Spool(path, 1_000_000)
    for n in range(20_000):
        spool.append(rec(n, 100))
    spool.sync()
    appended = path.stat().st_size
    delivered: list[int] = []
    rewritten = markers = compactions = 0
    while len(spool):
        batch = spool.pending(100)
        delivered += numbers(batch)
        before = path.stat().st_size
        spool.ack(len(batch))
        after = path.stat().st_size
        if after < before:
            compactions += 1
            rewritten += after
        else:
            markers += after - before
    assert delivered == list(range(20_000))
    assert compactions >= 1 and rewritten <= appended
    assert markers <= MARKER_MAX * 200
    spool.close()
    assert reopened(path) == []


def test_steady_appends_and_acks_compact_often_at_a_linear_total_cost(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 1_000, compact_bytes=4096)
    appended = rewritten = compactions = 0
    delivered: list[int] = []
    for batch in range(200):
        before = path.stat().st_size
        for n in range(batch * 100, batch * 100 + 100):
            spool.append(rec(n, 20))
        appended += path.stat().st_size - before
        for _ in range(2):
            pending = spool.pending(50)
            delivered += numbers(pending)
            before = path.stat().st_size
            spool.ack(len(pending))
            if path.stat().st_size < before:
                compactions += 1
                rewritten += path.stat().st_size
    assert delivered == list(range(20_000)) and len(spool) == 0
    assert compactions >= 50 and rewritten <= appended
    spool.close()
    assert reopened(path) == []


def test_a_compaction_keeps_the_pending_records_and_appends_go_on_in_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 1_000, compact_bytes=1024)
    for n in range(100):
        spool.append(rec(n, 20))
    inode, size = path.stat().st_ino, path.stat().st_size
    spool.ack(60)
    assert path.stat().st_ino != inode and path.stat().st_size < size  # compacted
    assert mode(path) == 0o600 and sorted(os.listdir(tmp_path)) == ["s.spool"]
    spool.append(rec(100))
    spool.close()
    assert reopened(path) == list(range(60, 101))


def crash_run(path: Path, step: str) -> None:
    """The child of the crash tests: append and ack in rounds, printing before each ack what was
    acked and appended so far, until the process dies at ``step``."""

    def checkpoint(reached: str) -> None:
        if reached == step:
            os._exit(137)  # no cleanup, no flush: what kill -9 leaves behind

    spool = Spool(path, 10_000, compact_bytes=2048, checkpoint=checkpoint)
    appended = acked = 0
    for _ in range(100):
        spool.append(rec(appended, 20))
        appended += 1
    spool.sync()
    for _ in range(200):
        for _ in range(10):  # not synced before the ack: the ack's fsync covers them
            spool.append(rec(appended, 20))
            appended += 1
        print(acked, appended, flush=True)
        spool.ack(10)
        acked += 10
    os._exit(3)  # the step was never reached


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_of_an_ack_loses_no_pending_record(tmp_path: Path, step: str) -> None:
    path = tmp_path / "s.spool"
    result = subprocess.run([sys.executable, "-m", "tests.test_spool", str(path), step], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 137, result.stderr
    acked, appended = map(int, result.stdout.split()[-2:])
    pending = reopened(path)
    # Exactly a suffix, in order: every record the crashed ack did not cover is there, and of
    # the acked ones at most that ack's own ten come back (its durable predecessors hold).
    assert pending and pending[-1] == appended - 1
    first = pending[0]
    assert pending == list(range(first, appended))
    assert acked <= first <= acked + 10
    assert sorted(os.listdir(tmp_path)) == ["s.spool"] and mode(path) == 0o600  # no leftover copy
    spool = Spool(path, 10_000)
    spool.ack(len(spool))
    spool.append(rec(appended))
    spool.close()
    assert reopened(path) == [appended]


def test_a_torn_record_at_the_tail_is_cut_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 100)
    for n in range(3):
        spool.append(rec(n))
    spool.close()
    whole = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(frame(rec(3, 200))[:40])  # a crash mid-append
    assert reopened(path) == [0, 1, 2]
    assert path.stat().st_size == whole
    spool = Spool(path, 100)
    spool.append(rec(3))
    spool.close()
    assert reopened(path) == [0, 1, 2, 3]


def test_a_torn_ack_marker_only_means_delivering_again(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 100)
    for n in range(5):
        spool.append(rec(n))
    spool.sync()
    records_only = path.stat().st_size
    spool.ack(2)
    spool.close()
    os.truncate(path, path.stat().st_size - 3)  # a crash mid-marker
    assert reopened(path) == [0, 1, 2, 3, 4]
    assert path.stat().st_size == records_only


def test_a_file_of_the_former_format_loads_with_every_record_pending(tmp_path: Path) -> None:
    # Before ack markers, a spool file was only framed records (acks rewrote it).
    path = tmp_path / "s.spool"
    old = b"".join(frame(rec(n)) for n in range(5))
    path.write_bytes(old)
    path.chmod(0o600)
    spool = Spool(path, 100)
    assert spool.pending(100) == [rec(n) for n in range(5)]
    spool.ack(2)
    spool.close()
    assert path.read_bytes().startswith(old)  # acked in place, not rewritten
    assert reopened(path) == [2, 3, 4]


def test_markers_that_do_not_fit_the_file_are_ignored_in_favour_of_delivering_again(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    path.write_bytes(b"".join([
        frame(rec(0)), frame(rec(1)),
        frame(["spool.ack", 5]),   # more records than precede it: ignored
        frame(rec(2)),
        frame(["spool.ack", 1]),   # valid
        frame(["spool.ack", 0]),   # goes backwards: ignored
        frame(["spool.ack", True]),  # not a count: ignored
        frame(["something", "else"]), frame(7),  # other frames are skipped, as always
        frame(rec(3)),
    ]))
    assert reopened(path) == [1, 2, 3]


def test_a_full_spool_counts_drops_and_spools_the_overflow_when_there_is_room(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 3)
    assert [spool.append(rec(n)) for n in range(5)] == [True, True, True, False, False]
    assert spool.dropped == 2 and len(spool) == 3
    spool.ack(1)
    assert spool.append(rec(5)) is False  # the overflow record takes the one free place
    assert spool.dropped == 1
    assert spool.pending(10) == [rec(1), rec(2), {"type": "spool.overflow", "dropped": 2}]
    spool.ack(3)
    assert spool.append(rec(6)) is True and spool.dropped == 0
    assert spool.pending(10) == [{"type": "spool.overflow", "dropped": 1}, rec(6)]
    spool.close()
    again = Spool(path, 3)
    assert again.pending(10) == [{"type": "spool.overflow", "dropped": 1}, rec(6)]
    assert again.dropped == 0
    again.close()


def test_a_record_too_large_is_refused_without_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path, 10)
    spool.append(rec(0))
    size = path.stat().st_size
    with pytest.raises(ValueError, match="too large"):
        spool.append(rec(1, 70_000))
    assert path.stat().st_size == size and len(spool) == 1
    spool.close()
    assert reopened(path) == [0]


def test_spool_files_are_private_and_a_symlink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    stale = tmp_path / ".s.spool.compact"
    stale.write_bytes(frame(rec(99)))  # left by a crash before a compaction's rename
    stale.chmod(0o644)
    umask = os.umask(0)
    try:
        spool = Spool(path, 100, compact_bytes=64)
        assert mode(path) == 0o600 and not stale.exists()
        for n in range(10):
            spool.append(rec(n))
        spool.ack(8)  # compacts
        assert mode(path) == 0o600
        spool.close()
    finally:
        os.umask(umask)
    assert reopened(path) == [8, 9]
    link = tmp_path / "link.spool"
    link.symlink_to(path)
    before = path.read_bytes()
    # The open itself refuses the link (O_NOFOLLOW answers ELOOP), before anything is read or written
    # through it; a spool that followed it and failed later for another reason would not be this.
    with pytest.raises(OSError) as refused:
        Spool(link, 100)
    assert refused.value.errno == errno.ELOOP and refused.value.filename == str(link)
    assert path.read_bytes() == before and link.is_symlink()


def test_a_sync_job_takes_the_fsyncs_off_the_spool_and_runs_on_another_thread(tmp_path: Path) -> None:
    """What the broker's routing loop relies on: the job is the whole of the fsync work (the spool
    has none left), it runs on the thread that runs it, and an ack can leave its fsync to it."""
    steps: list[tuple[str, str]] = []
    path = tmp_path / "s.spool"
    spool = Spool(path, 100, checkpoint=lambda step: steps.append((step, threading.current_thread().name)))
    first = spool.sync_job()  # a new file: only its directory entry is not durable yet
    assert first is not None and first.directory == tmp_path
    first.run()
    assert spool.sync_job() is None and steps == []  # nothing appended, so no fsync of the file
    for n in range(5):
        spool.append(rec(n))
    job = spool.sync_job()
    assert job is not None and spool.sync_job() is None
    spool.sync()  # nothing left for the spool itself: the job holds it
    assert steps == []
    runner = threading.Thread(target=job.run, name="flusher")
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive() and steps == [("fsync", "flusher")]
    steps.clear()
    spool.ack(2, sync=False)
    assert ("ack-written", "MainThread") in steps and not any(step == "ack-synced" for step, _ in steps)
    later = spool.sync_job()
    assert later is not None  # the marker waits for the owner's next sync
    later.run()
    spool.close()
    assert reopened(path) == [2, 3, 4]


def test_a_sync_job_outlives_a_compaction_that_closes_the_spools_file(tmp_path: Path) -> None:
    """The job holds its own descriptor: a compaction in between replaces and closes the spool's, and
    the job still fsyncs a file (not EBADF, and not whatever a reused descriptor number is now)."""
    path = tmp_path / "s.spool"
    spool = Spool(path, 100, compact_bytes=64)
    for n in range(10):
        spool.append(rec(n, 20))
    older = spool.sync_job()
    assert older is not None
    inode = path.stat().st_ino
    spool.ack(8, sync=False)  # compacts: the spool's descriptor is now the new file's
    assert path.stat().st_ino != inode
    newer = spool.sync_job()  # the new file's directory entry; its data was fsynced by the compaction
    assert newer is not None and newer.directory == tmp_path
    newer.absorb(older)  # keeps older's descriptor (newer has none) and runs it
    newer.run()
    older.run()  # discarded by the absorb: a no-op, not a second close of the descriptor
    spool.append(rec(10))
    spool.close()
    assert reopened(path) == [8, 9, 10]


if __name__ == "__main__":
    crash_run(Path(sys.argv[1]), sys.argv[2])

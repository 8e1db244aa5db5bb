"""The audit log at scale: verification streams the database in batches, export pages after the
first read only their own records, tampering deep inside a large log is still named exactly, and
a child process's peak memory stays far below holding the log (``/proc/self/status`` VmHWM)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlcipher3

from services.audit import chain
from services.audit.alert_engine import AlertEngine
from services.audit.chain import LogEntry, LogHead, public_key_of, sign_checkpoint
from services.audit.errors import TamperError
from services.audit.export import export_page
from services.audit.pages import TREES, PackedTree
from services.audit.proofs import (
    decode_checkpoint,
    decode_record,
    encode_checkpoint,
    export_bundle,
    pack_export,
    verify_bundle,
    verify_export,
)
from services.audit.scan import verify_report, verify_store
from services.audit.seal import SealMixin
from services.audit.store import BATCH_ROWS, AuditStore
from shared import AuditConfig
from shared.keystore import FileKeystore

N = 20_000                      # two batches of BATCH_ROWS: the boundary is crossed
EVERY = 100                     # a checkpoint per 100 records, as the service signs them
DB_KEY = bytes(range(32))
SIGN_KEY = bytes(range(32, 64))
PUBLIC = public_key_of(SIGN_KEY)
T0 = 1_700_000_000.0
PAGE = 2000
NO_LIMIT = 1 << 24              # max_bytes: no page is shrunk


@dataclasses.dataclass
class Log:
    root: Path
    path: Path
    slot: FileKeystore


def build(root: Path, n: int = N, pad: int = 600) -> Log:
    """A log of ``n`` records written as the service writes it (a checkpoint in every hundredth
    record's transaction), and its trusted latest checkpoint in a file slot."""
    root.mkdir(parents=True)
    head, path = LogHead(), root / "audit.db"
    with AuditStore.open(path, DB_KEY) as store:
        batch: list[LogEntry] = []
        for i in range(n):
            batch.append(head.append(time=T0 + i, actor="storage", event="test.event", outcome="ok",
                                     target=f"t{i}", details={"i": i, "note": "n" * pad}))
            if len(batch) == EVERY or i == n - 1:
                latest = head.checkpoint(SIGN_KEY, T0 + i + 0.5)
                store.append(batch, latest)
                batch = []
    slot = FileKeystore(root / "trusted")
    slot.put(bytearray(encode_checkpoint(latest)))
    return Log(root, path, slot)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Log:
    assert BATCH_ROWS < N
    return build(tmp_path_factory.mktemp("scale") / "log")


def copy_of(log: Log, root: Path) -> Log:
    root.mkdir(parents=True)
    shutil.copy2(log.path, root / "audit.db")  # closed cleanly: the WAL is folded into the file
    shutil.copy2(log.root / "trusted", root / "trusted")
    return Log(root, root / "audit.db", FileKeystore(root / "trusted"))


def raw(path: Path) -> sqlcipher3.Connection:
    db = sqlcipher3.connect(str(path), isolation_level=None)
    db.execute(f"PRAGMA key = \"x'{DB_KEY.hex()}'\"")
    return db


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the record rows read from the database (every read of records goes through
    :meth:`AuditStore.entries`); the test reads and clears the one-element list."""
    count = [0]
    original = AuditStore.entries

    def counting(self: AuditStore, *args: Any, **kwargs: Any) -> Iterator[LogEntry]:
        for entry in original(self, *args, **kwargs):
            count[0] += 1
            yield entry
    monkeypatch.setattr(AuditStore, "entries", counting)
    return count


# -- verification streams ----------------------------------------------------------------------


def test_entries_stream_every_row_once_across_batches(big: Log) -> None:
    with AuditStore.open(big.path, DB_KEY) as store, store.snapshot():
        assert [e.record.seq for e in store.entries(9990, 10_013, batch=7)] == list(range(9990, 10_013))
        seqs = [e.record.seq for e in store.entries(batch=3000)]
        assert seqs == list(range(N))
        assert [e.record.seq for e in store.entries(N - 2)] == [N - 2, N - 1]
        assert list(store.entries(N)) == []


def test_a_large_log_verifies_in_one_streamed_pass(big: Log, rows_read: list[int]) -> None:
    assert verify_report(big.path, DB_KEY, PUBLIC, big.slot) == {"ok": True, "size": N, "checkpoint_size": N}
    assert rows_read[0] == N  # each record read exactly once
    rows_read[0] = 0
    with AuditStore.open(big.path, DB_KEY) as store:
        head, latest, trusted, entries = verify_store(store, PUBLIC, big.slot)  # the in-memory form agrees
    assert head.size == len(entries) == N and latest == trusted and latest is not None
    assert head.frontier.root() == latest.root and rows_read[0] == N


# -- export pages -----------------------------------------------------------------------------


def test_export_pages_after_the_first_read_only_their_own_records(big: Log, rows_read: list[int]) -> None:
    TREES.forget(big.path)
    bundles, reads, seq, tree_size = [], [], 0, None
    while tree_size is None or seq < tree_size:
        rows_read[0] = 0
        bundle, checkpoint, count = export_page(big.path, DB_KEY, PUBLIC, big.slot, seq, PAGE, tree_size, NO_LIMIT)
        reads.append(rows_read[0])
        bundles.append(bundle)
        tree_size, seq = checkpoint.tree_size, seq + count
    assert tree_size == N and len(bundles) == N // PAGE
    assert reads[0] == N + PAGE  # the first page verifies the whole log, then reads its page
    assert reads[1:] == [PAGE] * (len(bundles) - 1)  # every later page: its own records only
    assert N in TREES.sizes()
    proven = verify_export(pack_export(bundles), PUBLIC)
    assert [r.seq for r in proven.records] == list(range(N)) and proven.records[12_345].target == "t12345"
    # The bundle format did not change: byte for byte what proofs.export_bundle makes of the whole log.
    with AuditStore.open(big.path, DB_KEY) as store:
        records = [e.record for e in store.load()[0]]
    assert bundles[3] == export_bundle(records, proven.checkpoint, only=range(3 * PAGE, 4 * PAGE))


def test_a_page_too_big_is_shrunk_from_the_cached_tree(big: Log, rows_read: list[int]) -> None:
    first, _, _ = export_page(big.path, DB_KEY, PUBLIC, big.slot, 0, 1, None, NO_LIMIT)
    rows_read[0] = 0
    small, _, count = export_page(big.path, DB_KEY, PUBLIC, big.slot, 500, 100, N, len(first) * 20)
    assert 1 <= count < 100 and len(small) <= len(first) * 20 and rows_read[0] == 100
    assert [r.seq for r in verify_bundle(small, PUBLIC).records] == list(range(500, 500 + count))


def test_the_packed_tree_is_the_merkle_tree(big: Log) -> None:
    from services.audit.merkle import MerkleTree, leaf_hash
    for n in (1, 2, 3, 5, 8, 13, 100, 1000):
        leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
        packed, plain = PackedTree(b"".join(leaves)), MerkleTree(leaves)
        assert packed.size == n and packed.root() == plain.root() and packed.leaf(n - 1) == leaves[-1]
        assert all(packed.inclusion_proof(i) == plain.inclusion_proof(i) for i in range(0, n, max(1, n // 50)))


def test_a_record_changed_between_pages_is_named_and_the_tree_dropped(big: Log, tmp_path: Path,
                                                                      rows_read: list[int]) -> None:
    log = copy_of(big, tmp_path / "h")
    export_page(log.path, DB_KEY, PUBLIC, log.slot, 0, PAGE, None, NO_LIMIT)
    edit(log.path, 5000)
    with pytest.raises(TamperError) as caught:  # the page holding it compares it with its verified leaf
        export_page(log.path, DB_KEY, PUBLIC, log.slot, 4000, PAGE, N, NO_LIMIT)
    assert caught.value.sequence == 5000 and "modified" in caught.value.message
    assert N not in TREES.sizes() or TREES.get(log.path, PUBLIC, N) is None
    rows_read[0] = 0
    with pytest.raises(TamperError) as caught:  # so any next page verifies the whole log again
        export_page(log.path, DB_KEY, PUBLIC, log.slot, 8000, PAGE, N, NO_LIMIT)
    assert caught.value.sequence == 5000 and rows_read[0] > PAGE


def test_a_replaced_checkpoint_makes_the_next_page_verify_again(big: Log, tmp_path: Path,
                                                                rows_read: list[int]) -> None:
    log = copy_of(big, tmp_path / "h")
    _, first, _ = export_page(log.path, DB_KEY, PUBLIC, log.slot, 0, PAGE, None, NO_LIMIT)
    resigned = sign_checkpoint(SIGN_KEY, tree_size=N, root=first.root, chain_head=first.chain_head,
                               time=first.time + 1)
    db = raw(log.path)
    db.execute("UPDATE checkpoints SET blob = ? WHERE tree_size = ?", (encode_checkpoint(resigned), N))
    db.close()
    rows_read[0] = 0
    bundle, checkpoint, _ = export_page(log.path, DB_KEY, PUBLIC, log.slot, PAGE, PAGE, N, NO_LIMIT)
    assert checkpoint == resigned and rows_read[0] == N + PAGE  # not the cached tree: verified again
    assert verify_bundle(bundle, PUBLIC).checkpoint == resigned


# -- tampering deep inside a large log is named exactly ----------------------------------------


def edit(path: Path, seq: int, *, rechain: bool = False) -> None:
    """Change record ``seq``'s outcome; with ``rechain``, also rewrite every later chain hash (what
    an attacker with the database key but not the signing key can do)."""
    db = raw(path)
    blob, = db.execute("SELECT record FROM records WHERE seq = ?", (seq,)).fetchone()
    record = dataclasses.replace(decode_record(bytes(blob)), outcome="denied")
    db.execute("UPDATE records SET record = ? WHERE seq = ?", (chain.encode_record(record), seq))
    if rechain:
        prev = bytes(db.execute("SELECT chain_hash FROM records WHERE seq = ?", (seq - 1,)).fetchone()[0])
        db.execute("BEGIN")
        for row_seq, row in db.execute("SELECT seq, record FROM records WHERE seq >= ? ORDER BY seq",
                                       (seq,)).fetchall():
            prev = chain.chain_hash(prev, bytes(row))
            db.execute("UPDATE records SET chain_hash = ? WHERE seq = ?", (prev, row_seq))
        db.execute("COMMIT")
    db.close()


def swap(path: Path, a: int, b: int) -> None:
    db = raw(path)
    one = db.execute("SELECT record, chain_hash FROM records WHERE seq = ?", (a,)).fetchone()
    two = db.execute("SELECT record, chain_hash FROM records WHERE seq = ?", (b,)).fetchone()
    db.execute("UPDATE records SET record = ?, chain_hash = ? WHERE seq = ?", (*two, a))
    db.execute("UPDATE records SET record = ?, chain_hash = ? WHERE seq = ?", (*one, b))
    db.close()


def sql(*statements: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        db = raw(path)
        for statement in statements:
            db.execute(statement)
        db.close()
    return run


def resign_backwards(path: Path) -> None:
    """Checkpoint 15000 re-signed (with the real key) at a time before checkpoint 14900's."""
    db = raw(path)
    blob, = db.execute("SELECT blob FROM checkpoints WHERE tree_size = 15000").fetchone()
    cp = decode_checkpoint(bytes(blob))
    back = sign_checkpoint(SIGN_KEY, tree_size=cp.tree_size, root=cp.root, chain_head=cp.chain_head, time=T0)
    db.execute("UPDATE checkpoints SET blob = ? WHERE tree_size = 15000", (encode_checkpoint(back),))
    db.close()


def forge_signature(path: Path) -> None:
    db = raw(path)
    blob, = db.execute("SELECT blob FROM checkpoints WHERE tree_size = 15000").fetchone()
    cp = decode_checkpoint(bytes(blob))
    forged = dataclasses.replace(cp, signature=bytes(64))
    db.execute("UPDATE checkpoints SET blob = ? WHERE tree_size = 15000", (encode_checkpoint(forged),))
    db.close()


ATTACKS: dict[str, tuple[Callable[[Path], None], int | None, str]] = {
    "edit": (lambda p: edit(p, 12_345), 12_345, "record 12345 does not match its chain hash"),
    "edit-and-rechain": (lambda p: edit(p, 12_345, rechain=True), 12_300,
                         "records 12300 to 12399 do not match the signed checkpoint"),
    "delete": (sql("DELETE FROM records WHERE seq = 12345"), 12_345, "record 12345 is missing: it was deleted"),
    "delete-at-the-batch-boundary": (sql(f"DELETE FROM records WHERE seq = {BATCH_ROWS}"), BATCH_ROWS,
                                     f"record {BATCH_ROWS} is missing"),
    "swap": (lambda p: swap(p, 12_345, 12_346), 12_345, "record 12345 is out of place"),
    "swap-across-the-batch-boundary": (lambda p: swap(p, BATCH_ROWS - 1, BATCH_ROWS), BATCH_ROWS - 1,
                                       f"record {BATCH_ROWS - 1} is out of place"),
    "corrupt-row": (sql("UPDATE records SET record = x'c0' WHERE seq = 12345"), 12_345, "record 12345 is corrupt"),
    "cut-off-the-tail": (sql("DELETE FROM records WHERE seq >= 15000",
                             "DELETE FROM checkpoints WHERE tree_size > 15000"),
                         15_000, "has 15000 records but the trusted latest checkpoint covers 20000"),
    "forged-signature": (forge_signature, None, "tree size 15000 has a bad signature"),
    "checkpoint-time-backwards": (resign_backwards, None, "tree size 15000 follows one at tree size 14900"),
}


@pytest.mark.parametrize("attack", ATTACKS)
def test_tampering_in_a_large_log_is_located(big: Log, tmp_path: Path, attack: str) -> None:
    log = copy_of(big, tmp_path / "h")
    tamper, first_bad, message = ATTACKS[attack]
    tamper(log.path)
    report = verify_report(log.path, DB_KEY, PUBLIC, log.slot)
    assert report["ok"] is False and report["first_bad"] == first_bad and message in str(report["error"]), report
    with pytest.raises(TamperError) as caught:  # an export refuses it the same way
        export_page(log.path, DB_KEY, PUBLIC, log.slot, 0, PAGE, None, NO_LIMIT)
    assert caught.value.sequence == first_bad


# -- the alert rebuild at unseal reads the verification stream ---------------------------------


class Recording:
    """An alert engine's rebuild that records what it was shown, optionally failing part-way."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.seen: list[int] = []
        self.fail_after = fail_after

    def rebuild(self, records: Iterator[chain.Record]) -> int:
        for record in records:
            if self.fail_after is not None and len(self.seen) == self.fail_after:
                raise RuntimeError("a rule failed")
            self.seen.append(record.seq)
        return 0


def unseal_verify(log: Log, engine: Any) -> tuple[LogHead, Any, Any]:
    fake = SimpleNamespace(public_key=PUBLIC, slot=log.slot, alerts=SimpleNamespace(engine=engine))
    with AuditStore.open(log.path, DB_KEY) as store:
        return SealMixin._verify(fake, store)  # type: ignore[arg-type]


def test_unseal_rebuilds_alerts_from_the_one_verification_pass(big: Log, rows_read: list[int]) -> None:
    engine = Recording()
    head, latest, _ = unseal_verify(big, engine)
    assert engine.seen == list(range(N)) and head.size == N and latest is not None and rows_read[0] == N
    rows_read[0] = 0
    failing = Recording(fail_after=10)  # a rebuild that fails does not cut verification short
    head, _, _ = unseal_verify(big, failing)
    assert failing.seen == list(range(10)) and head.size == N and rows_read[0] == N


def test_a_tampered_log_rebuilds_no_alerts(big: Log, tmp_path: Path) -> None:
    log = copy_of(big, tmp_path / "h")
    sql("DELETE FROM records WHERE seq >= 15000", "DELETE FROM checkpoints WHERE tree_size > 15000")(log.path)
    engine = AlertEngine(AuditConfig())
    before = engine.open_alerts()
    with pytest.raises(TamperError) as caught:  # raised at the end of the stream, before the rebuild commits
        unseal_verify(log, engine)
    assert caught.value.sequence == 15_000 and engine.open_alerts() == before
    failing = Recording(fail_after=10)
    with pytest.raises(TamperError):  # the rebuild failed first; the rest of the log is still judged
        unseal_verify(log, failing)
    assert failing.seen == list(range(10))


# -- memory: a child process's peak resident set ------------------------------------------------

CHILD = r"""
import json, sys
from pathlib import Path
from services.audit.chain import public_key_of
from services.audit.export import export_page
from services.audit.scan import verify_report
from services.audit.store import AuditStore
from shared.keystore import FileKeystore

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

root, mode = Path(sys.argv[1]), sys.argv[2]
key, public = bytes(range(32)), public_key_of(bytes(range(32, 64)))
slot, path = FileKeystore(root / "trusted"), root / "audit.db"
with AuditStore.open(path, key) as store:  # imports, SQLCipher and its allocator warmed up
    store.size()
if mode == "page":  # the first page verifies and caches; measured: a later page
    _, checkpoint, _ = export_page(path, key, public, slot, 0, 2000, None, 1 << 24)
try:
    Path("/proc/self/clear_refs").write_text("5")  # restart VmHWM from the current RSS
except OSError:
    print(json.dumps({"reset": False}))
    sys.exit(0)
before = kib("VmRSS")
if mode == "load":  # what every verify and export page held before: the whole log
    with AuditStore.open(path, key) as store:
        held = store.load()
elif mode == "verify":
    assert verify_report(path, key, public, slot)["ok"]
elif mode == "export-first":
    export_page(path, key, public, slot, 0, 2000, None, 1 << 24)
else:
    export_page(path, key, public, slot, 2000, 2000, checkpoint.tree_size, 1 << 24)
print(json.dumps({"reset": True, "peak_kib": kib("VmHWM") - before}))
"""


def peak_kib(log: Log, mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(log.root), mode], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent, timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["reset"]:
        pytest.skip("this kernel does not let a process reset its VmHWM (/proc/self/clear_refs)")
    return int(result["peak_kib"])


def test_peak_memory_stays_far_below_holding_the_log(big: Log) -> None:
    held = peak_kib(big, "load")          # about 37 MiB for these 20,000 records of ~700 bytes
    verify = peak_kib(big, "verify")      # about 8 MiB: SQLCipher's cache, no records held
    first = peak_kib(big, "export-first")  # the leaf hashes and tree (1.9 MiB) and one page
    page = peak_kib(big, "page")          # one page of 2,000 records and its proofs
    assert held > 20_000, held            # the yardstick is real: the log does not fit in "small"
    assert verify * 3 < held and page * 6 < held and first < held, (held, verify, first, page)

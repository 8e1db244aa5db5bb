"""A paired device as a witness of the audit log, without a mesh: :class:`shared.transparency.Witness`
against hostile checkpoints and proofs (shrunk, forked, forged, another key, a corrupt witness file,
a failed write), and audit's :class:`~services.audit.witness_tree.WitnessTree` against the full
:class:`~services.audit.merkle.MerkleTree` it stands in for."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.audit import errors as audit_errors
from services.audit.chain import LogHead, encode_record, public_key_of
from services.audit.merkle import MerkleTree, leaf_hash
from services.audit.witness_tree import WitnessTree
from shared import BadRequest, MeshError, StateError
from shared.transparency import (
    Checkpoint,
    TamperError,
    Witness,
    WitnessMismatch,
    encode_checkpoint,
    verify_checkpoint,
    verify_consistency,
)

SEED = bytes(range(32))
PUBLIC = public_key_of(SEED)
OTHER_SEED = bytes(range(1, 33))


class Log:
    """A signed log in memory: its records' leaf hashes and its head, records tagged per log."""

    def __init__(self, seed: bytes = SEED) -> None:
        self.head, self.leaves, self.seed = LogHead(), [], seed

    def grow(self, count: int, tag: str = "a") -> Log:
        for _ in range(count):
            entry = self.head.append(time=1000.0 + self.head.size, actor="storage", event="test.event",
                                     outcome="ok", target=f"{tag}{self.head.size}")
            self.leaves.append(leaf_hash(encode_record(entry.record)))
        return self

    def checkpoint(self) -> Checkpoint:
        return self.head.checkpoint(self.seed, 2000.0 + self.head.size)

    def signed(self) -> bytes:
        return encode_checkpoint(self.checkpoint())

    def proof(self, since: int) -> list[bytes]:
        return MerkleTree(self.leaves).consistency_proof(since)


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness(tmp_path / "device" / "audit-witness", PUBLIC)


def kept_at(witness: Witness, log: Log) -> bytes:
    """Make ``witness`` keep ``log``'s checkpoint now; return the witness file's bytes."""
    witness.observe(log.signed(), log.proof(witness.since()))
    return witness.path.read_bytes()


def mismatch(witness: Witness, checkpoint: bytes, proof: Sequence[bytes]) -> WitnessMismatch:
    before = witness.path.read_bytes() if witness.path.exists() else None
    with pytest.raises(WitnessMismatch) as caught:
        witness.observe(checkpoint, proof)
    after = witness.path.read_bytes() if witness.path.exists() else None
    assert after == before, "a failed observe changed the witness file"
    left = [p.name for p in witness.path.parent.iterdir()] if witness.path.parent.exists() else []
    assert left == ([witness.path.name] if before is not None else [])
    return caught.value


# -- the witness ------------------------------------------------------------------------------------


def test_the_first_checkpoint_is_kept_privately_and_growth_keeps_the_newer(witness: Witness) -> None:
    log = Log().grow(10)
    assert witness.kept() is None and witness.since() == 0
    assert witness.observe(log.signed(), []) == log.checkpoint()
    assert witness.kept() == log.checkpoint() and witness.since() == 10
    assert stat.S_IMODE(witness.path.stat().st_mode) == 0o600
    log.grow(27)
    assert witness.observe(log.signed(), log.proof(10)) == log.checkpoint()
    assert witness.since() == 37
    same = witness.path.read_bytes()
    assert witness.observe(log.signed(), []) == log.checkpoint() and witness.path.read_bytes() == same
    assert [p.name for p in witness.path.parent.iterdir()] == [witness.path.name]  # no temporary file left


def test_a_log_that_shrank_is_refused_and_nothing_changes(witness: Witness) -> None:
    old = Log().grow(12)
    kept_at(witness, old)
    now = Log().grow(30)
    kept_at(witness, now)
    found = mismatch(witness, old.signed(), [])  # the machine restored to when it had 12 records
    assert found.problem == "shrunk" and found.kept == now.checkpoint() and found.seen == old.checkpoint()
    assert "older than the one this device saw last (30 records, now 12)" in found.message
    assert "rolled back" in found.message and "tell its owner" in found.message
    assert isinstance(found, MeshError) and witness.since() == 30


def test_a_forked_log_is_refused_whether_it_grew_past_the_kept_one_or_not(witness: Witness) -> None:
    kept = Log().grow(20)
    kept_at(witness, kept)
    # The machine rolled back to 8 records, then wrote others: longer than what the device kept.
    rewritten = Log().grow(8).grow(40, tag="b")
    found = mismatch(witness, rewritten.signed(), rewritten.proof(20))
    assert found.problem == "forked" and found.seen == rewritten.checkpoint()
    assert "first 20 records" in found.message and "do not trust it" in found.message
    # The same size with other records.
    same_size = Log().grow(8).grow(12, tag="b")
    assert mismatch(witness, same_size.signed(), []).problem == "forked"
    # The genuine log's proof, replayed with the rewritten log's checkpoint, does not help.
    genuine = Log().grow(48)
    assert mismatch(witness, rewritten.signed(), genuine.proof(20)).problem == "forked"


def test_every_altered_truncated_or_malformed_proof_is_a_fork(witness: Witness) -> None:
    log = Log().grow(13)
    kept_at(witness, log)
    log.grow(50)
    proof = log.proof(13)
    for i, element in enumerate(proof):
        for bit in (0, 7):
            altered = [*proof]
            altered[i] = element[:bit] + bytes([element[bit] ^ 1]) + element[bit + 1:]
            assert mismatch(witness, log.signed(), altered).problem == "forked", (i, bit)
    for bad in (proof[:-1], [*proof, proof[0]], [], None, [b"short"], ["text"] * len(proof), 7):
        assert mismatch(witness, log.signed(), bad).problem == "forked", bad  # type: ignore[arg-type]
    assert witness.observe(log.signed(), proof) == log.checkpoint()  # the genuine proof still passes


def test_a_checkpoint_not_signed_by_the_paired_key_is_refused_before_anything_else(witness: Witness) -> None:
    log = Log().grow(10)
    kept_at(witness, log)
    impostor = Log(OTHER_SEED).grow(40)  # another mesh, or a forger without audit's key
    found = mismatch(witness, impostor.signed(), impostor.proof(10))
    assert found.problem == "bad_signature" and found.seen == impostor.checkpoint()
    assert "not signed by the key this device paired with" in found.message
    assert mismatch(witness, Log(OTHER_SEED).grow(3).signed(), []).problem == "bad_signature"  # not "shrunk"
    grown = Log().grow(20).checkpoint()
    forged = Checkpoint(grown.tree_size + 1, grown.root, grown.chain_head, grown.time, grown.signature)
    assert mismatch(witness, encode_checkpoint(forged), []).problem == "bad_signature"
    flipped = grown.signature[:-1] + bytes([grown.signature[-1] ^ 1])
    cp = Checkpoint(grown.tree_size, grown.root, grown.chain_head, grown.time, flipped)
    assert mismatch(witness, encode_checkpoint(cp), Log().grow(20).proof(10)).problem == "bad_signature"
    for garbage in (b"", b"\x81\xa1v\x01", b"not msgpack at all", None, 7):
        found = mismatch(witness, garbage, [])  # type: ignore[arg-type]
        assert found.problem == "bad_signature" and found.seen is None and found.kept == log.checkpoint()


def test_a_first_checkpoint_signed_by_another_key_is_not_kept(witness: Witness) -> None:
    found = mismatch(witness, Log(OTHER_SEED).grow(5).signed(), [])
    assert found.problem == "bad_signature" and found.kept is None and not witness.path.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "another key", "huge", "symlink"])
def test_a_corrupt_witness_file_is_refused_never_started_over(witness: Witness, damage: str) -> None:
    log = Log().grow(10)
    good = kept_at(witness, log)
    if damage == "symlink":
        target = witness.path.with_name("elsewhere")
        target.write_bytes(good)
        witness.path.unlink()
        witness.path.symlink_to(target)
    else:
        witness.path.write_bytes({"garbage": b"\x00garbage", "truncated": good[:-5], "empty": b"",
                                  "another key": Log(OTHER_SEED).grow(10).signed(),
                                  "huge": good + b"\x00" * 8192}[damage])
    before = witness.path.read_bytes()
    for attempt in (witness.kept, witness.since, lambda: witness.observe(log.grow(5).signed(), log.proof(10))):
        with pytest.raises(StateError, match="audit-witness: this device's copy of the mesh's audit checkpoint"):
            attempt()
    assert witness.path.read_bytes() == before


def test_a_write_that_fails_leaves_the_kept_checkpoint_and_no_temporary_file(
        witness: Witness, monkeypatch: pytest.MonkeyPatch) -> None:
    log = Log().grow(10)
    before = kept_at(witness, log)

    def failing(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        witness.observe(log.grow(10).signed(), log.proof(10))
    assert witness.path.read_bytes() == before
    assert [p.name for p in witness.path.parent.iterdir()] == [witness.path.name]


def test_the_witness_takes_a_raw_ed25519_key_only(tmp_path: Path) -> None:
    for key in (b"short", PUBLIC.hex(), bytearray(PUBLIC)):
        with pytest.raises(BadRequest):
            Witness(tmp_path / "w", key)  # type: ignore[arg-type]


def test_audit_and_the_device_share_one_verification_core() -> None:
    assert audit_errors.TamperError is TamperError
    log = Log().grow(9)
    verify_checkpoint(PUBLIC, log.checkpoint())
    log.grow(9)
    verify_consistency(9, 18, MerkleTree(log.leaves).root(9), log.checkpoint().root, log.proof(9))
    with pytest.raises(TamperError):
        verify_checkpoint(public_key_of(OTHER_SEED), log.checkpoint())


# -- audit's witness tree --------------------------------------------------------------------------


def leaves(count: int, tag: str = "x") -> list[bytes]:
    return [leaf_hash(f"{tag}{i}".encode()) for i in range(count)]


def reader(source: list[bytes], reads: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    def read(start: int, end: int) -> list[bytes]:
        if reads is not None:
            reads.append((start, end))
        return source[start:end]
    return read


@pytest.mark.parametrize("floor", [0, 1, 2, 3])
def test_the_witness_tree_proves_exactly_as_the_full_tree(floor: int) -> None:
    data = leaves(41)
    tree, full = WitnessTree(floor), MerkleTree(data)
    read = reader(data)
    assert tree.root(0, read) == full.root(0)
    for size, leaf in enumerate(data, 1):
        tree.append(leaf)
        assert tree.size == size and tree.root(size, read) == MerkleTree(data[:size]).root()
    for size in range(len(data) + 1):
        assert tree.root(size, read) == full.root(size)
        for since in range(size + 1):
            assert tree.consistency_proof(since, size, read) == full.consistency_proof(since, size), (since, size)


def test_the_witness_tree_reads_a_few_blocks_and_keeps_about_a_byte_a_record() -> None:
    data = leaves(5000)
    tree, full, reads = WitnessTree(), MerkleTree(data), []
    tree.extend(data)
    for since in (1, 63, 64, 100, 1000, 4095, 4999):
        reads.clear()
        assert tree.consistency_proof(since, 5000, reader(data, reads)) == full.consistency_proof(since, 5000)
        assert len(reads) <= 4 and all(end - start == 64 for start, end in reads), reads
    kept = sum(len(row) for row in tree._levels) + 32 * len(tree._block)
    assert kept < 2 * len(data)


def test_the_witness_tree_refuses_records_changed_since_they_were_verified() -> None:
    data = leaves(300)
    tree = WitnessTree()
    tree.extend(data)
    changed = [*data]
    changed[70] = leaf_hash(b"edited")
    with pytest.raises(TamperError, match="records 64 to 127 are not the records audit verified") as caught:
        tree.consistency_proof(65, 300, reader(changed))
    assert caught.value.sequence == 64
    with pytest.raises(TamperError):
        tree.consistency_proof(65, 300, reader(data[:100]))  # records gone from the database
    with pytest.raises(BadRequest):
        tree.consistency_proof(10, 301, reader(data))

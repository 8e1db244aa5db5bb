"""The pure core of audit tamper evidence: RFC 9162 Merkle trees, the hash chain, signed
checkpoints, full-log verification and offline bundles.

The Merkle code is checked three ways: against the published RFC 6962/9162 test vectors (the ones
the Certificate Transparency implementations share, as in transparency-dev/merkle), against a
naive transcription of the RFC's recursive definitions, and by flipping every byte of every proof.
The tamper suite attacks an in-memory log of 50 records with a checkpoint every 10, one test per
attack, and asserts that each is detected *and located*.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from services.audit.chain import (
    GENESIS,
    Checkpoint,
    LogEntry,
    LogHead,
    Record,
    chain_hash,
    encode_record,
    public_key_of,
    sign_checkpoint,
    verify_checkpoint,
)
from services.audit.errors import TamperError
from services.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from services.audit.proofs import (
    decode_checkpoint,
    decode_record,
    encode_checkpoint,
    export_bundle,
    verify_bundle,
)
from services.audit.verifier import verify_log
from shared import BadRequest, MeshError

# --- RFC 9162, transcribed naively from sections 2.1.1, 2.1.3.1 and 2.1.4.1 -----------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


DATA = [bytes([i]) * (i % 7) + b"leaf" + bytes([i]) for i in range(20)]
HASHES = [leaf_hash(x) for x in DATA]


def flipped(proof: list[bytes], i: int, j: int) -> list[bytes]:
    element = bytearray(proof[i])
    element[j] ^= 0x01
    return [*proof[:i], bytes(element), *proof[i + 1:]]


# --- Published vectors: the eight CT test leaves, their roots and proofs ---------------------------

h = bytes.fromhex
CT_LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                            "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [h(x) for x in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
CT_INCLUSION = [  # (leaf index, tree size, proof)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (first size, second size, proof)
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]


def test_published_roots_for_every_size_0_to_8() -> None:
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    tree, frontier = MerkleTree(hashes), Frontier()
    assert EMPTY_ROOT == CT_ROOTS[0] == merkle_root([]) == frontier.root() == tree.root(0)
    for n in range(1, 9):
        frontier.append(hashes[n - 1])
        assert tree.root(n) == merkle_root(hashes[:n]) == frontier.root() == CT_ROOTS[n] == ref_mth(CT_LEAVES[:n])


@pytest.mark.parametrize(("index", "size", "proof"), CT_INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    expected = [h(x) for x in proof]
    assert MerkleTree([leaf_hash(x) for x in CT_LEAVES]).inclusion_proof(index, size) == expected
    verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, expected, CT_ROOTS[size])


@pytest.mark.parametrize(("first", "second", "proof"), CT_CONSISTENCY)
def test_published_consistency_proofs(first: int, second: int, proof: list[str]) -> None:
    expected = [h(x) for x in proof]
    assert MerkleTree([leaf_hash(x) for x in CT_LEAVES]).consistency_proof(first, second) == expected
    verify_consistency(first, second, CT_ROOTS[first], CT_ROOTS[second], expected)


# --- Every tree up to 20 leaves against the naive RFC ---------------------------------------------


def test_roots_match_the_rfc_for_every_size_and_grow_incrementally() -> None:
    big, frontier = MerkleTree(HASHES), Frontier()
    for n in range(21):
        assert MerkleTree(HASHES[:n]).root() == big.root(n) == merkle_root(HASHES[:n]) == frontier.root() \
            == ref_mth(DATA[:n])
        assert len(frontier.nodes) == n.bit_count()
        restored = Frontier(frontier.size, frontier.nodes)  # what the service stores and reloads
        assert restored.root() == frontier.root()
        if n < 20:
            frontier.append(HASHES[n])


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    a, b = HASHES[0], HASHES[1]
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert leaf_hash(a + b) != node_hash(a, b)  # a node cannot pass for a leaf


def test_every_inclusion_proof_up_to_20_verifies_and_every_flipped_byte_fails() -> None:
    big = MerkleTree(HASHES)
    for n in range(1, 21):
        tree, root = MerkleTree(HASHES[:n]), ref_mth(DATA[:n])
        for m in range(n):
            proof = tree.inclusion_proof(m)
            assert proof == ref_path(m, DATA[:n]) == big.inclusion_proof(m, n)
            verify_inclusion(HASHES[m], m, n, proof, root)
            for i in range(len(proof)):
                for j in range(32):
                    with pytest.raises(TamperError, match="does not match the root"):
                        verify_inclusion(HASHES[m], m, n, flipped(proof, i, j), root)
            # A different leaf, the proof cut short or padded at either end. (Another tree size is not
            # on the list: a proof for a smaller tree can be a valid proof into a larger one.)
            bad = [(HASHES[m], m, n, [*proof, root]), (HASHES[m], m, n, [root, *proof])]
            if n > 1:
                bad += [(HASHES[(m + 1) % n], m, n, proof), (HASHES[m], m, n, proof[:-1]),
                        (HASHES[m], (m + 1) % n, n, proof)]
            for leaf, index, size, wrong in bad:
                with pytest.raises(TamperError):
                    verify_inclusion(leaf, index, size, wrong, root)


def test_every_consistency_proof_up_to_20_verifies_and_every_flipped_byte_fails() -> None:
    big = MerkleTree(HASHES)
    for n in range(21):
        second = ref_mth(DATA[:n])
        for m in range(n + 1):
            first = ref_mth(DATA[:m])
            proof = big.consistency_proof(m, n)
            assert proof == (ref_subproof(m, DATA[:n], True) if 0 < m < n else [])
            assert proof == MerkleTree(HASHES[:n]).consistency_proof(m)
            verify_consistency(m, n, first, second, proof)
            for i in range(len(proof)):
                for j in range(32):
                    with pytest.raises(TamperError, match="rewritten or rolled back"):
                        verify_consistency(m, n, first, second, flipped(proof, i, j))
            if 0 < m < n:
                for args in [(m, n, first, ref_mth(DATA[:n - 1]), proof), (m, n, second, first, proof),
                             (m, n, first, second, [*proof, second]), (m, n, first, second, [first, *proof]),
                             (m, n, first, second, proof[:-1]), (n, m, second, first, proof)]:
                    with pytest.raises(TamperError):
                        verify_consistency(*args)


def test_proof_verifiers_refuse_malformed_input() -> None:
    root = ref_mth(DATA[:4])
    with pytest.raises(TamperError, match="cannot place leaf 4"):
        verify_inclusion(HASHES[0], 4, 4, [], root)
    with pytest.raises(TamperError, match="32-byte hash"):
        verify_inclusion(HASHES[0], 0, 4, [b"short"], root)
    with pytest.raises(TamperError, match="32-byte hash"):
        verify_consistency(2, 4, b"", root, [])
    with pytest.raises(TamperError, match="is empty"):
        verify_consistency(2, 4, ref_mth(DATA[:2]), root, [])
    with pytest.raises(TamperError):  # the empty tree has exactly one root
        verify_consistency(0, 4, HASHES[0], root, [])
    with pytest.raises(BadRequest):  # the caller's mistake, not evidence of tampering
        MerkleTree(HASHES[:4]).inclusion_proof(4)
    with pytest.raises(BadRequest):
        MerkleTree(HASHES[:4]).consistency_proof(5)
    with pytest.raises(BadRequest):
        Frontier(3, [HASHES[0]])


# --- Records, the chain and checkpoints ---------------------------------------------------------

KEY = bytearray(os.urandom(32))  # a keyvault data key arrives as a wipeable bytearray
PUBLIC = public_key_of(KEY)
T0 = 1_760_000_000.0


def test_canonical_encoding_is_independent_of_map_order_and_round_trips() -> None:
    a = Record(seq=3, time=T0, actor="keyvault", event="keyvault.key_release", outcome="ok", target="audit",
               details={"purpose": "audit-hmac", "version": 2,
                        "nested": {"b": [1, {"z": None, "y": b"\x00"}], "a": 1.5}})
    b = dataclasses.replace(a, details={"nested": {"a": 1.5, "b": [1, {"y": b"\x00", "z": None}]}, "version": 2,
                                        "purpose": "audit-hmac"})
    assert encode_record(a) == encode_record(b)
    assert decode_record(encode_record(a)) == a
    assert encode_record(dataclasses.replace(a, time=int(T0))) == encode_record(a)  # 5 and 5.0 are one time
    unsorted = msgpack.packb({"v": 1, "seq": 3, "time": T0, "actor": "keyvault", "on_behalf_of": None,
                              "event": "keyvault.key_release", "target": "audit", "outcome": "ok", "details": {}})
    with pytest.raises(BadRequest, match="canonical"):
        decode_record(unsorted)


@pytest.mark.parametrize("change", [{"seq": -1}, {"seq": True}, {"time": float("nan")}, {"time": "now"},
                                    {"actor": ""}, {"event": None}, {"target": 5}, {"details": [1]}])
def test_records_refuse_malformed_fields(change: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"seq": 0, "time": T0, "actor": "a", "event": "e", "outcome": "ok", **change}
    with pytest.raises(BadRequest):
        Record(**fields)


@pytest.mark.parametrize("details", [{1: "x"}, {"t": (1, 2)}, {"s": {1, 2}}, {"big": "x" * 70_000}])
def test_details_outside_the_wire_types_are_refused(details: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        LogHead().append(time=T0, actor="a", event="e", outcome="ok", details=details)


def test_checkpoints_sign_verify_and_round_trip() -> None:
    head = LogHead()
    head.append(time=T0, actor="a", event="e", outcome="ok")
    cp = head.checkpoint(KEY, T0)
    assert (cp.tree_size, cp.root, cp.chain_head) == (1, head.frontier.root(), head.chain_head)
    verify_checkpoint(PUBLIC, cp)
    assert decode_checkpoint(encode_checkpoint(cp)) == cp
    for forged in [dataclasses.replace(cp, tree_size=2), dataclasses.replace(cp, time=T0 + 1),
                   dataclasses.replace(cp, root=EMPTY_ROOT), dataclasses.replace(cp, chain_head=GENESIS),
                   dataclasses.replace(cp, signature=os.urandom(64)), dataclasses.replace(cp, signature=b"")]:
        with pytest.raises(TamperError, match="bad signature") as caught:
            verify_checkpoint(PUBLIC, forged)
        assert caught.value.sequence is None
    with pytest.raises(BadRequest, match="32 bytes"):
        verify_checkpoint(PUBLIC[:31], cp)
    empty = LogHead().checkpoint(KEY, T0)
    assert (empty.tree_size, empty.root, empty.chain_head) == (0, EMPTY_ROOT, GENESIS)


def test_tamper_error_is_an_internal_mesh_error() -> None:
    error = TamperError("x", sequence=7)
    assert isinstance(error, MeshError) and error.code == "INTERNAL" and error.sequence == 7


# --- The tamper suite: 50 records, a signed checkpoint every 10 -----------------------------------


def build_log(n: int = 50, every: int = 10) -> tuple[list[LogEntry], list[Checkpoint]]:
    head, entries, checkpoints = LogHead(), [], []
    for i in range(n):
        entries.append(head.append(time=T0 + i, actor=("keyvault", "broker", "authn")[i % 3],
                                   on_behalf_of="alice" if i % 2 else None, event="auth.login",
                                   target=f"user:{i % 4}", outcome="ok" if i % 5 else "denied",
                                   details={"attempt": i, "source": "127.0.0.1"}))
        if (i + 1) % every == 0:
            checkpoints.append(head.checkpoint(KEY, T0 + i + 0.5))
    return entries, checkpoints


def rechain(entries: list[LogEntry], start: int = 0, renumber: bool = False) -> list[LogEntry]:
    """What an attacker who knows the format can do without the key: rewrite every hash (and
    sequence number) from ``start`` on so that the chain is consistent again."""
    out = entries[:start]
    prev = out[-1].chain_hash if out else GENESIS
    for i, entry in enumerate(entries[start:], start):
        record = dataclasses.replace(entry.record, seq=i) if renumber else entry.record
        out.append(LogEntry(record, chain_hash(prev, encode_record(record))))
        prev = out[-1].chain_hash
    return out


def tampered(entries: list[LogEntry], checkpoints: list[Checkpoint], trusted: Checkpoint | None = None,
             match: str = "") -> TamperError:
    with pytest.raises(TamperError, match=match) as caught:
        verify_log(entries, checkpoints, PUBLIC, trusted_latest=trusted)
    return caught.value


@pytest.fixture
def log() -> tuple[list[LogEntry], list[Checkpoint]]:
    return build_log()


def test_an_intact_log_verifies_and_yields_its_head(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    head = verify_log(entries, checkpoints, PUBLIC, trusted_latest=checkpoints[-1])
    assert (head.size, head.chain_head, head.frontier.root()) == (50, entries[-1].chain_hash, checkpoints[-1].root)
    assert verify_log([], [], PUBLIC).size == 0
    # The head continues the log: a record appended after verification verifies too.
    entries.append(head.append(time=T0 + 60, actor="audit", event="audit.verify", outcome="ok"))
    verify_log(entries, [*checkpoints, head.checkpoint(KEY, T0 + 61)], PUBLIC, trusted_latest=checkpoints[-1])


def test_edit_a_field(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    assert entries[25].record.outcome == "denied"
    entries[25] = LogEntry(dataclasses.replace(entries[25].record, outcome="ok"), entries[25].chain_hash)
    assert tampered(entries, checkpoints, match="record 25 does not match its chain hash").sequence == 25


def test_edit_a_detail_and_rewrite_the_chain_after_it(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    entries[23] = LogEntry(dataclasses.replace(entries[23].record, details={"attempt": 0}), entries[23].chain_hash)
    error = tampered(rechain(entries, 23), checkpoints, match="records 20 to 29 do not match the signed checkpoint")
    assert error.sequence == 20  # the first record the checkpoints no longer vouch for


def test_delete_a_record(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    del entries[17]
    assert tampered(entries, checkpoints, match="record 17 is missing: it was deleted").sequence == 17


def test_delete_a_record_and_renumber_the_rest(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    del entries[17]
    error = tampered(rechain(entries, 17, renumber=True), checkpoints, match="records 10 to 19 do not match")
    assert error.sequence == 10


def test_swap_two_records(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    entries[31], entries[32] = entries[32], entries[31]
    assert tampered(entries, checkpoints, match="record 31 is out of place").sequence == 31


def test_swap_two_records_keeping_the_sequence_numbers(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    a, b = entries[31], entries[32]
    entries[31] = LogEntry(dataclasses.replace(b.record, seq=31), a.chain_hash)
    entries[32] = LogEntry(dataclasses.replace(a.record, seq=32), b.chain_hash)
    assert tampered(entries, checkpoints, match="record 31 does not match its chain hash").sequence == 31
    error = tampered(rechain(entries, 31), checkpoints, match="records 30 to 39")
    assert error.sequence == 30


def test_cut_off_the_tail(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    # With the checkpoint rows left in place, the log convicts itself.
    error = tampered(entries[:45], checkpoints, match="the log has 45 records but a signed checkpoint")
    assert error.sequence == 45
    # A careful attacker drops the last checkpoint too: the log is consistent with itself ...
    verify_log(entries[:45], checkpoints[:4], PUBLIC)
    # ... but not with the checkpoint kept outside it.
    error = tampered(entries[:45], checkpoints[:4], checkpoints[-1],
                     match="has 45 records but the trusted latest checkpoint covers 50: records 45 to 49 were cut off")
    assert error.sequence == 45


def test_restore_an_older_copy(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    old_entries, old_checkpoints = entries[:30], checkpoints[:3]  # a backup taken at record 30
    verify_log(old_entries, old_checkpoints, PUBLIC)
    error = tampered(old_entries, old_checkpoints, checkpoints[-1], match="an older copy of the log was restored")
    assert error.sequence == 30


def test_restore_an_older_copy_and_keep_appending(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    # The service restarts on the restored copy and logs 20 new records over the 20 lost ones.
    entries, checkpoints = log
    forked = entries[:30]
    head = LogHead()
    for e in forked:
        head.append(time=e.record.time, actor=e.record.actor, on_behalf_of=e.record.on_behalf_of,
                    event=e.record.event, target=e.record.target, outcome=e.record.outcome, details=e.record.details)
    for i in range(20):
        forked.append(head.append(time=T0 + 100 + i, actor="broker", event="auth.login", outcome="ok"))
    error = tampered(forked, checkpoints[:3], checkpoints[-1], match="records 30 to 49 do not match the trusted latest")
    assert error.sequence == 30


def test_a_forged_checkpoint(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    attacker = os.urandom(32)
    entries[25] = LogEntry(dataclasses.replace(entries[25].record, outcome="ok"), entries[25].chain_hash)
    entries = rechain(entries, 25)
    head = verify_log(entries, [], PUBLIC)  # no checkpoints: only the chain, which was rewritten
    # Re-sign the checkpoints over the rewritten log with a key of the attacker's own.
    forged = [sign_checkpoint(attacker, tree_size=cp.tree_size, root=MerkleTree(
        [leaf_hash(encode_record(e.record)) for e in entries[:cp.tree_size]]).root(),
        chain_head=entries[cp.tree_size - 1].chain_hash, time=cp.time) for cp in checkpoints]
    assert forged[-1].root == head.frontier.root()
    error = tampered(entries, [*checkpoints[:2], *forged[2:]], match="tree size 30 has a bad signature")
    assert error.sequence is None
    # A forged "trusted" checkpoint vouches for nothing either.
    tampered(entries, [], forged[-1], match="tree size 50 has a bad signature")


def test_checkpoints_out_of_order(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    checkpoints[1], checkpoints[2] = checkpoints[2], checkpoints[1]
    tampered(entries, checkpoints, match="tree size 20 follows one at tree size 30")


# --- Offline bundles ---------------------------------------------------------------------------


def test_a_bundle_verifies_offline_with_only_the_public_key(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    records = [e.record for e in entries]
    proven = verify_bundle(export_bundle(records, checkpoints[-1]), PUBLIC)
    assert proven.checkpoint == checkpoints[-1] and list(proven.records) == records
    # A few records against an older checkpoint: proofs need no neighbours.
    proven = verify_bundle(export_bundle(records, checkpoints[2], only=[29, 3, 17]), PUBLIC)
    assert [r.seq for r in proven.records] == [3, 17, 29]
    with pytest.raises(BadRequest):
        export_bundle(records, checkpoints[2], only=[30])
    with pytest.raises(TamperError, match="bad signature"):
        verify_bundle(export_bundle(records, checkpoints[-1]), public_key_of(os.urandom(32)))


def test_a_log_that_does_not_match_its_checkpoint_is_not_exported(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    records = [e.record for e in entries]
    records[7] = dataclasses.replace(records[7], actor="someone-else")
    with pytest.raises(TamperError, match="do not match the checkpoint"):
        export_bundle(records, checkpoints[-1])


def edit_bundle(bundle: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    value = msgpack.unpackb(bundle, raw=False)
    edit(value)
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


def test_a_tampered_bundle_is_refused_naming_the_record(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    bundle = export_bundle([e.record for e in entries], checkpoints[-1])

    def edit_record(value: dict[str, Any]) -> None:
        record = dataclasses.replace(decode_record(value["records"][17]["record"]), actor="someone-else")
        value["records"][17]["record"] = encode_record(record)

    def flip_proof(value: dict[str, Any]) -> None:
        value["records"][33]["proof"] = flipped(value["records"][33]["proof"], 2, 5)

    def drop_record(value: dict[str, Any]) -> None:
        del value["records"][40]

    def swap_records(value: dict[str, Any]) -> None:
        records = value["records"]
        records[8], records[9] = records[9], records[8]

    def renumber(value: dict[str, Any]) -> None:
        value["records"][12]["seq"] = 13
        del value["records"][13]

    for edit, seq, match in [(edit_record, 17, "record 17 is not the record the log signed"),
                             (flip_proof, 33, "record 33 is not the record the log signed"),
                             (swap_records, 8, "record 8 comes after record 9"),
                             (renumber, 13, "record 13 is not the record")]:
        with pytest.raises(TamperError, match=match) as caught:
            verify_bundle(edit_bundle(bundle, edit), PUBLIC)
        assert caught.value.sequence == seq
    # A bundle may hold any subset of the records, so dropping one is not tampering with the others.
    assert len(verify_bundle(edit_bundle(bundle, drop_record), PUBLIC).records) == 49


def test_corrupt_bundles_are_refused_never_crash(log: tuple[list[LogEntry], list[Checkpoint]]) -> None:
    entries, checkpoints = log
    bundle = export_bundle([e.record for e in entries[:12]], checkpoints[0])
    for i in range(len(bundle)):  # a flipped bit anywhere: records, proofs, checkpoint, msgpack framing
        corrupt = bytearray(bundle)
        corrupt[i] ^= 1 << (i % 8)
        with pytest.raises(TamperError):
            verify_bundle(bytes(corrupt), PUBLIC)
    for garbage in [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"format": "other/v9"})]:
        with pytest.raises(TamperError):
            verify_bundle(garbage, PUBLIC)

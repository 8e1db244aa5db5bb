"""Export audit records with proofs, and verify an export offline with only the public key.

A bundle is one msgpack map, self-contained and versioned::

    {"format": "curvemesh-audit-bundle/v1",
     "checkpoint": <checkpoint bytes, see encode_checkpoint>,
     "records": [{"seq": int, "record": <canonical record bytes>, "proof": [<32-byte hash>, ...]}, ...]}

Each record carries its RFC 9162 inclusion proof against the signed checkpoint's root, so a third
party needs nothing but the bundle and the audit Ed25519 public key: the signature vouches for the
root, the proof ties each record's exact bytes to the root. The records need not be contiguous;
chain hashes are left out because a verifier could not check them across the gaps, and a bundle
carries only what its verifier checks.

:func:`encode_checkpoint` and :func:`decode_checkpoint` (from :mod:`shared.transparency`, re-exported
here) are also the form in which the audit service keeps its latest checkpoint outside the log
(keyvault state or the keyring), and in which a paired device keeps its witness copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from shared import BadRequest, decode_body
from shared.transparency import decode_checkpoint, encode_checkpoint

from .chain import MAX_RECORD_BYTES, RECORD_VERSION, Checkpoint, Record, encode_record, verify_checkpoint
from .errors import TamperError
from .merkle import MerkleTree, leaf_hash, verify_inclusion

__all__ = [
    "BUNDLE_FORMAT", "EXPORT_FORMAT", "Bundle",
    "decode_checkpoint", "decode_record", "encode_checkpoint", "export_bundle", "pack_bundle", "pack_export",
    "verify_bundle", "verify_export",
]

BUNDLE_FORMAT: Final = "curvemesh-audit-bundle/v1"
EXPORT_FORMAT: Final = "curvemesh-audit-export/v1"
_RECORD_KEYS: Final = frozenset({"v", "seq", "time", "actor", "on_behalf_of", "event", "target", "outcome",
                                 "details"})
_ENTRY_KEYS: Final = frozenset({"seq", "record", "proof"})


def decode_record(data: bytes) -> Record:
    """The record whose canonical bytes (:func:`.chain.encode_record`) are ``data``. Raises
    :class:`BadRequest` for anything else: malformed msgpack, an unknown version, a missing or
    unknown field, a field of the wrong type, or an encoding that is not the canonical one."""
    value = decode_body(data, MAX_RECORD_BYTES)
    if type(value) is not dict or value.keys() != _RECORD_KEYS:
        raise BadRequest("not an audit record: wrong fields")
    if value.pop("v") != RECORD_VERSION:
        raise BadRequest(f"unsupported audit record version; this verifier reads version {RECORD_VERSION}")
    if type(value["time"]) is not float:
        raise BadRequest("record field 'time' must be a float")
    record = Record(**value)
    if encode_record(record) != data:  # one record, one encoding: nothing else can hash the same
        raise BadRequest(f"record {record.seq} is not in canonical form")
    return record


def export_bundle(records: Sequence[Record], checkpoint: Checkpoint, *, only: Iterable[int] | None = None) -> bytes:
    """A bundle proving records of the log against ``checkpoint``.

    ``records`` is the log from record 0 (at least ``checkpoint.tree_size`` records); ``only``
    picks the sequence numbers to export (default: every record the checkpoint covers). The log
    is checked against the checkpoint's root first, so a bundle that cannot verify is never
    written: a mismatch raises :class:`TamperError` (run :func:`.verifier.verify_log` to locate it).
    """
    size = checkpoint.tree_size
    if len(records) < size:
        raise BadRequest(f"the checkpoint covers {size} records; only {len(records)} were given")
    canonical = [encode_record(r) for r in records[:size]]
    tree = MerkleTree(leaf_hash(c) for c in canonical)
    if tree.root() != checkpoint.root:
        raise TamperError(f"the log's first {size} records do not match the checkpoint at tree size {size}")
    chosen = range(size) if only is None else sorted(set(only))
    if any(type(seq) is not int for seq in chosen) or (chosen and not 0 <= chosen[0] <= chosen[-1] < size):
        raise BadRequest(f"only records 0 to {size - 1} can be proven against this checkpoint")
    return pack_bundle(checkpoint, ((seq, canonical[seq], tree.inclusion_proof(seq)) for seq in chosen))


def pack_bundle(checkpoint: Checkpoint, entries: Iterable[tuple[int, bytes, Sequence[bytes]]]) -> bytes:
    """The bundle bytes for ``entries`` already proven against ``checkpoint``: each is (sequence
    number, canonical record bytes, inclusion proof), in increasing order. The one place the
    bundle layout is written (:func:`export_bundle`, and export pages from a cached tree)."""
    records = [{"seq": seq, "record": canonical, "proof": list(proof)} for seq, canonical, proof in entries]
    data: bytes = msgpack.packb({"format": BUNDLE_FORMAT, "checkpoint": encode_checkpoint(checkpoint),
                                 "records": records}, use_bin_type=True)
    return data


@dataclass(frozen=True, slots=True)
class Bundle:
    """What a bundle proved: the signed checkpoint, and records each proven to be in its tree."""

    checkpoint: Checkpoint
    records: tuple[Record, ...]


def _no_ext(code: int, data: bytes) -> Any:
    raise TamperError("the bundle is malformed: it holds a msgpack extension type")


def _parse(bundle_bytes: bytes) -> tuple[Checkpoint, list[Any]]:
    try:
        value = msgpack.unpackb(bundle_bytes, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
    except TamperError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError,
            UnicodeDecodeError) as exc:
        raise TamperError(f"the bundle is malformed msgpack ({type(exc).__name__})") from None
    if type(value) is not dict or value.keys() != {"format", "checkpoint", "records"}:
        raise TamperError("the bundle is malformed: not a map of format, checkpoint and records")
    if value["format"] != BUNDLE_FORMAT:
        # Name what we read, never echo what was sent: the field may hold anything.
        raise TamperError(f"the bundle is not in a format this verifier reads ({BUNDLE_FORMAT})")
    if type(value["checkpoint"]) is not bytes or type(value["records"]) is not list:
        raise TamperError("the bundle is malformed: wrong checkpoint or records field")
    try:
        checkpoint = decode_checkpoint(value["checkpoint"])
    except BadRequest as exc:
        raise TamperError(f"the bundle's checkpoint is malformed: {exc.message}") from None
    return checkpoint, value["records"]


def verify_bundle(bundle_bytes: bytes, public_key: bytes) -> Bundle:
    """Verify a bundle offline with only the 32-byte Ed25519 ``public_key`` of the audit service.

    Checks the checkpoint's signature, then each record in order: sequence numbers increase and
    lie inside the checkpoint's tree, the inclusion proof ties the record's exact bytes to the
    signed root, and the bytes are a well-formed canonical record with the sequence number the
    entry claims. Raises :class:`TamperError` at the first failure, with the record's ``sequence``
    when one can be named; :class:`BadRequest` for a malformed public key. Returns what it proved.
    """
    checkpoint, entries = _parse(bundle_bytes)
    verify_checkpoint(public_key, checkpoint)
    size, previous, records = checkpoint.tree_size, -1, []
    for position, entry in enumerate(entries):
        if type(entry) is not dict or entry.keys() != _ENTRY_KEYS or type(entry["seq"]) is not int:
            raise TamperError(f"bundle entry {position} (after record {previous}) is malformed")
        seq, data, proof = entry["seq"], entry["record"], entry["proof"]
        if not 0 <= seq < size:
            raise TamperError(f"record {seq} is not covered by the checkpoint, which covers {size} records",
                              sequence=seq)
        if seq <= previous:
            raise TamperError(f"record {seq} comes after record {previous} in the bundle: it was reordered or "
                              "repeated", sequence=seq)
        if type(data) is not bytes or type(proof) is not list:
            raise TamperError(f"record {seq} is malformed in the bundle", sequence=seq)
        try:
            verify_inclusion(leaf_hash(data), seq, size, proof, checkpoint.root)
            record = decode_record(data)
        except (TamperError, BadRequest) as exc:
            raise TamperError(f"record {seq} is not the record the log signed: {exc.message}", sequence=seq) from None
        if record.seq != seq:
            raise TamperError(f"record {seq} holds the sequence number {record.seq}", sequence=seq)
        records.append(record)
        previous = seq
    return Bundle(checkpoint, tuple(records))


# -- a whole-log export: pages of bundles in one file ------------------------------------------
#
# A log too large for one message is exported page by page (``audit.export {from_seq, limit,
# tree_size}``), every page a bundle proven against the same checkpoint. The file holds them all::
#
#     {"format": "curvemesh-audit-export/v1", "bundles": [<bundle bytes>, ...]}
#
# :func:`verify_export` checks each bundle, that they share one checkpoint, and that together they
# hold every record the checkpoint covers, from 0, in order and once each.


def pack_export(bundles: Sequence[bytes]) -> bytes:
    """The export file holding ``bundles`` (pages in order)."""
    data: bytes = msgpack.packb({"format": EXPORT_FORMAT, "bundles": list(bundles)}, use_bin_type=True)
    return data


def verify_export(data: bytes, public_key: bytes) -> Bundle:
    """Verify an export file with only the audit ``public_key``: every page with
    :func:`verify_bundle`, one checkpoint for all, and records contiguous from 0 up to the
    checkpoint's tree size. Raises :class:`TamperError` naming the first missing or misplaced
    record. A file holding a single bundle (the older form) is verified as that bundle alone."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, timestamp=0)
    except TamperError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError,
            UnicodeDecodeError) as exc:
        raise TamperError(f"the export is malformed msgpack ({type(exc).__name__})") from None
    if type(value) is dict and value.get("format") == BUNDLE_FORMAT:
        return verify_bundle(data, public_key)
    if type(value) is not dict or value.keys() != {"format", "bundles"} or value["format"] != EXPORT_FORMAT:
        raise TamperError(f"the file is not in a format this verifier reads ({EXPORT_FORMAT} or {BUNDLE_FORMAT})")
    pages = value["bundles"]
    if type(pages) is not list or not pages or any(type(page) is not bytes for page in pages):
        raise TamperError("the export is malformed: no list of bundles")
    checkpoint: Checkpoint | None = None
    records: list[Record] = []
    for number, page in enumerate(pages):
        bundle = verify_bundle(page, public_key)
        if checkpoint is None:
            checkpoint = bundle.checkpoint
        elif bundle.checkpoint != checkpoint:
            raise TamperError(f"page {number} of the export is proven against another checkpoint "
                              f"(tree size {bundle.checkpoint.tree_size}, not {checkpoint.tree_size})",
                              sequence=bundle.records[0].seq if bundle.records else None)
        for record in bundle.records:
            expected = len(records)
            if record.seq > expected:
                raise TamperError(f"record {expected} is missing from the export (page {number} goes on at "
                                  f"record {record.seq})", sequence=expected)
            if record.seq < expected:
                raise TamperError(f"record {record.seq} is repeated or out of order in the export (page {number})",
                                  sequence=record.seq)
            records.append(record)
    assert checkpoint is not None
    if len(records) != checkpoint.tree_size:
        raise TamperError(f"record {len(records)} is missing from the export: the checkpoint covers "
                          f"{checkpoint.tree_size} records, the export ends after {len(records)}",
                          sequence=len(records))
    return Bundle(checkpoint, tuple(records))

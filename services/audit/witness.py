"""Paired devices as witnesses of the audit log: ``audit.checkpoint`` and ``audit.witness_report``.

Rolling back the whole machine takes the log and its trusted checkpoint back together, so audit
cannot see it; a paired device can (DESIGN.md invariant 12). On each connection the device calls
``audit.checkpoint {since}`` with the tree size of the checkpoint it kept, checks the answer with
:mod:`shared.transparency` (:func:`~shared.transparency.witness_check`) and keeps the newer one.
A device that finds the log shrunk or forked refuses to go on and reports it here
(``audit.witness_report``), which writes ``audit.witness_mismatch`` and so raises the
``witness_mismatch`` alert.

:class:`WitnessMixin` is mixed into :class:`~.service.Audit`. Contract:

- a checkpoint answer is the latest durable checkpoint, signed first when records arrived since
  the last (so the device sees the log as it is now), with the RFC 9162 consistency proof from
  ``since`` to it, computed from :attr:`~.writer.WriterMixin.witness_tree` (built from the leaves
  the unseal verification computed, extended with the records committed since, read back). Before
  answering, the tree's root at the checkpoint's size must equal the signed root: if it does not,
  the stored log changed under audit, which then refuses appends as on a failed ``audit.verify``.
- both answer with the usual refusal (``SEALED``, ``UNAVAILABLE``) while audit is not ``ok``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import field
from typing import Any, Final

import structlog

from shared import BadRequest, Forbidden, MeshHome, RequestContext, Unavailable, handler, message
from shared.transparency import TamperError, decode_checkpoint, encode_checkpoint, verify_checkpoint

from .alerts import WITNESS_EVENT
from .chain import Checkpoint, Record, encode_record
from .merkle import leaf_hash
from .sanitize import sanitize_details
from .store import AuditStore, db_path
from .writer import WriterMixin

log = structlog.get_logger("audit")  # one logger name for the whole service

MAX_SINCE: Final = (1 << 63) - 1   #: the largest tree size a checkpoint can state
MAX_PROBLEM: Final = 512           #: characters of a device's problem text kept
_CHECKPOINT_BYTES: Final = 1024    #: an encoded checkpoint is about 150 bytes


@message
class CheckpointRequest:
    """``audit.checkpoint {since}``: the tree size of the checkpoint the device kept (0: none)."""

    since: int = 0


@message
class WitnessReport:
    """``audit.witness_report {kept, seen, problem}``: the encoded checkpoints the device kept and saw
    (None or absent when it had none, or saw no checkpoint at all) and what it found."""

    problem: str = field(metadata={"max_len": MAX_PROBLEM})
    kept: bytes | None = field(default=None, metadata={"max_len": _CHECKPOINT_BYTES})
    seen: bytes | None = field(default=None, metadata={"max_len": _CHECKPOINT_BYTES})


class WitnessMixin(WriterMixin):
    """The two handlers devices call, and the proofs they get."""

    home: MeshHome
    public_key: bytes | None
    _db_key: bytearray | None
    _hash_key: bytearray | None
    _witness_lock: threading.Lock  # one proof at a time: the tree is not thread-safe

    @handler("checkpoint", request=CheckpointRequest, concurrent=True)
    async def checkpoint_handler(self, ctx: RequestContext, req: CheckpointRequest) -> dict[str, Any]:
        """``audit.checkpoint {since}`` → ``{checkpoint, proof, public_key}`` (devices and services):
        ``checkpoint`` is the latest signed checkpoint (:func:`shared.transparency.encode_checkpoint`
        bytes; one is signed first if records arrived since the last), ``proof`` the RFC 9162
        consistency proof (32-byte hashes) from tree size ``since`` to it: empty when ``since`` is 0,
        equal to or greater than its size (a device that kept more sees the log shrunk),
        ``public_key`` the 32-byte Ed25519 key that signs checkpoints. ``SEALED`` / ``UNAVAILABLE``
        while audit cannot vouch for its log. Called by :func:`shared.transparency.witness_check`;
        meshctl has no command for it."""
        if not 0 <= req.since <= MAX_SINCE:
            raise BadRequest(f"since must be a tree size, 0 to {MAX_SINCE}")
        if self.state != "ok":
            raise self._refusal()
        await self._checkpoint()  # the log as it is now, not as of the last timer tick
        latest, key, public_key = self.latest, self._db_key, self.public_key
        if self.state != "ok" or key is None or public_key is None:
            raise self._refusal()
        if latest is None:
            raise Unavailable("the audit log has no checkpoint yet: nothing has been recorded")
        try:
            proof = await ctx.run_blocking(self._witness_proof, key, req.since, latest)
        except TamperError as exc:
            if self.state == "ok":
                self.state, self.problem = "tampered", exc.message
            log.error("audit_log_tampered", first_bad=exc.sequence, reason=exc.message)
            raise Unavailable(f"the stored log failed verification; no checkpoint given ({exc.message})") from None
        return {"checkpoint": encode_checkpoint(latest), "proof": proof, "public_key": public_key}

    def _witness_proof(self, key: bytearray, since: int, checkpoint: Checkpoint) -> list[bytes]:
        """The consistency proof from ``since`` to ``checkpoint``, after checking that the witness
        tree, extended to the checkpoint with the records stored since, has its signed root.
        Blocking (SQLite, hashing): runs in a worker thread."""
        tree, size = self.witness_tree, checkpoint.tree_size
        if tree is None:
            raise Unavailable("audit is sealed: the mesh is locked or keyvault is not reachable")
        with self._witness_lock, AuditStore.open(db_path(self.home), key) as store:
            def read(start: int, end: int) -> list[bytes]:
                return [leaf_hash(encode_record(entry.record)) for entry in store.entries(start, end)]
            if tree.size < size:
                tree.extend(leaf_hash(encode_record(entry.record)) for entry in store.entries(tree.size, size))
            if tree.size < size:
                raise TamperError(f"the log holds {tree.size} records but its signed checkpoint covers {size}",
                                  sequence=tree.size)
            if tree.root(size, read) != checkpoint.root:
                raise TamperError(f"the log's first {size} records do not match the signed checkpoint at tree "
                                  f"size {size}")
            return tree.consistency_proof(since, size, read) if since < size else []

    @handler("witness_report", request=WitnessReport, concurrent=True)
    async def witness_report(self, ctx: RequestContext, req: WitnessReport) -> dict[str, Any]:
        """``audit.witness_report {kept?, seen?, problem}`` → ``{seq}`` once the report is durable
        (paired devices only): records ``audit.witness_mismatch`` (actor and target the reporting
        device as the broker authenticated it; details: each checkpoint's tree size, root in hex
        and whether this mesh's audit key signed it, and ``problem``, e.g. ``shrunk``, ``forked``
        or ``bad_signature``), which raises the ``witness_mismatch`` alert. Sent by
        :func:`shared.transparency.witness_check` on a mismatch; meshctl has no command for it."""
        if ctx.role != "device":
            raise Forbidden("only a paired device reports what it witnessed")
        if self.state != "ok" or self._hash_key is None:
            raise self._refusal()
        if not req.problem.strip():
            raise BadRequest("problem must say what the device found")
        details: dict[str, Any] = {"problem": req.problem}
        for name, blob in (("kept", req.kept), ("seen", req.seen)):
            details |= self._reported(name, blob)
        record = Record(seq=0, time=time.time(), actor=ctx.caller, event=WITNESS_EVENT, outcome="failure",
                        target=ctx.caller, details=sanitize_details(details, self._hash_key, WITNESS_EVENT))
        log.error("witness_mismatch", device=ctx.caller, problem=req.problem[:64])
        first, _ = await asyncio.shield(self._enqueue([record]))  # a caller's timeout must not cancel it
        return {"seq": first}

    def _reported(self, name: str, blob: bytes | None) -> dict[str, Any]:
        """A reported checkpoint as record details: tree size, root in hex, signed by this mesh."""
        if not blob:
            return {}
        try:
            checkpoint = decode_checkpoint(blob)
        except BadRequest:
            raise BadRequest(f"{name} is not an encoded audit checkpoint") from None
        assert self.public_key is not None
        try:
            verify_checkpoint(self.public_key, checkpoint)
            signed = True
        except TamperError:
            signed = False
        return {f"{name}_tree_size": checkpoint.tree_size, f"{name}_root": checkpoint.root.hex(),
                f"{name}_signed": signed}

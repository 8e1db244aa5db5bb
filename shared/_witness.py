"""A paired device's own copy of the audit checkpoint: the device as a witness of the log.

Rolling back the whole machine (a restored disk image, a VM snapshot) takes every anchor the
machine keeps with it. A paired device sees the log from outside (DESIGN.md invariant 12): on each
connection it fetches the latest signed checkpoint, checks that it is consistent with the one it
kept (an RFC 9162 consistency proof from the audit service) and keeps the newer one.

Contract of :class:`Witness` (one file, one pinned audit public key):

- :meth:`Witness.observe` checks, in this order, that the checkpoint is signed by the pinned key
  (``bad_signature`` otherwise), that the log did not shrink (``shrunk``), and that the kept tree
  is a prefix of the new one (``forked``: the consistency proof fails, or an equal size has another
  root or chain head). Only then is the newer checkpoint written, atomically (a temporary file
  created ``O_EXCL`` 0600, fsynced, renamed over the file, the directory fsynced): an observe that
  raises changes nothing.
- The first checkpoint is kept as it comes (signed by the pinned key: the key is what pairing
  established). A witness file that is unreadable, malformed or not signed by the pinned key
  raises :class:`~shared.StateError`: the device never silently starts over, which would
  forget exactly what it is there to remember.
- One process uses a witness file at a time (the device client serialises its connections).

:func:`witness_check` is the asyncio adapter: ``audit.checkpoint {since}``, then observe; on a
mismatch it tells the mesh (``audit.witness_report``, best effort, with a deadline) and re-raises.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from ._certs import write_exclusive
from ._errors import BadRequest, MeshError, StateError
from ._files import fsync_path
from ._transparency import (
    Checkpoint,
    TamperError,
    decode_checkpoint,
    encode_checkpoint,
    verify_checkpoint,
    verify_consistency,
)

if TYPE_CHECKING:
    from ._client import MeshClient

__all__ = ["PROBLEMS", "Problem", "Witness", "WitnessMismatch", "witness_check"]

Problem = Literal["shrunk", "forked", "bad_signature"]
#: What a witness can find wrong with the mesh's log.
PROBLEMS: Final[tuple[Problem, ...]] = ("shrunk", "forked", "bad_signature")
_MAX_FILE: Final = 4096  # an encoded checkpoint is about 150 bytes
_ADVICE: Final = "do not trust it, and tell its owner"


def _records(checkpoint: Checkpoint | None) -> str:
    return "none" if checkpoint is None else f"{checkpoint.tree_size}"


class WitnessMismatch(MeshError):
    """The mesh's audit log is not a continuation of the one this device saw last.

    ``problem`` is ``shrunk`` (fewer records than the kept checkpoint: the machine was rolled
    back), ``forked`` (the kept records were changed: rolled back and written on, or rewritten)
    or ``bad_signature`` (the checkpoint is not signed by the key this device paired with).
    ``kept`` is the checkpoint the device kept (None if none yet), ``seen`` the one the mesh
    showed (None if it was not even a checkpoint). ``reported`` is set by :func:`witness_check`:
    whether the mesh recorded the report. The message is meant for the device's user.
    """

    code: ClassVar[str] = "WITNESS"

    def __init__(self, problem: Problem, kept: Checkpoint | None, seen: Checkpoint | None) -> None:
        if problem not in PROBLEMS:
            raise ValueError(f"problem must be one of {', '.join(PROBLEMS)}")
        if problem == "shrunk":
            text = (f"the mesh's audit log is older than the one this device saw last ({_records(kept)} records, "
                    f"now {_records(seen)}): the machine may have been rolled back; {_ADVICE}")
        elif problem == "forked":
            text = (f"the mesh's audit log is not the one this device saw last: its first {_records(kept)} records "
                    f"are not the same any more (now {_records(seen)} records): the machine may have been rolled "
                    f"back or its log rewritten; {_ADVICE}")
        else:
            text = ("the mesh's audit checkpoint is not signed by the key this device paired with: it may not be "
                    f"your mesh, or its log was forged; {_ADVICE}")
        super().__init__(text)
        self.problem: Problem = problem
        self.kept = kept
        self.seen = seen
        self.reported: bool | None = None


class Witness:
    """The checkpoint a device keeps at ``path``, verified under ``audit_public_key`` (32-byte
    Ed25519, pinned at pairing). See the module documentation for the contract."""

    def __init__(self, path: Path, audit_public_key: bytes) -> None:
        if type(audit_public_key) is not bytes or len(audit_public_key) != 32:
            raise BadRequest("the audit public key must be 32 bytes (raw Ed25519)")
        self.path = Path(path)
        self.public_key = audit_public_key

    def _refuse(self, why: str) -> StateError:
        return StateError(f"{self.path}: this device's copy of the mesh's audit checkpoint {why}; it is not "
                          "replaced by what the mesh says now. Restore the file from a backup of this device, or "
                          "pair the device again once the mesh's owner has checked the mesh")

    def kept(self) -> Checkpoint | None:
        """The kept checkpoint, or None before the first :meth:`observe`. Raises
        :class:`~shared.StateError` when the file is unreadable, malformed or not signed by the
        pinned key."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._refuse(f"cannot be read ({exc.strerror})") from None
        try:
            data = os.read(fd, _MAX_FILE + 1)
        except OSError as exc:
            raise self._refuse(f"cannot be read ({exc.strerror})") from None
        finally:
            os.close(fd)
        try:
            if len(data) > _MAX_FILE:
                raise BadRequest("too large")
            checkpoint = decode_checkpoint(data)
        except BadRequest:
            raise self._refuse("is corrupt") from None
        try:
            verify_checkpoint(self.public_key, checkpoint)
        except TamperError:
            raise self._refuse("is not signed by the mesh's audit key this device paired with") from None
        return checkpoint

    def since(self) -> int:
        """The kept checkpoint's tree size (0 before the first): ``audit.checkpoint``'s ``since``."""
        kept = self.kept()
        return 0 if kept is None else kept.tree_size

    def observe(self, checkpoint: bytes, proof: Sequence[bytes]) -> Checkpoint:
        """Check ``checkpoint`` (encoded, as ``audit.checkpoint`` returns it) and the consistency
        ``proof`` from the kept one; keep it if it is newer. Returns the checkpoint kept now.
        Raises :class:`WitnessMismatch` (nothing changed) or :class:`~shared.StateError`."""
        kept = self.kept()
        try:
            seen = decode_checkpoint(checkpoint)
        except (BadRequest, TypeError, ValueError):
            raise WitnessMismatch("bad_signature", kept, None) from None
        try:
            verify_checkpoint(self.public_key, seen)
        except TamperError:
            raise WitnessMismatch("bad_signature", kept, seen) from None
        if kept is not None:
            if seen.tree_size < kept.tree_size:
                raise WitnessMismatch("shrunk", kept, seen)
            if seen.tree_size == kept.tree_size:
                if (seen.root, seen.chain_head) != (kept.root, kept.chain_head):
                    raise WitnessMismatch("forked", kept, seen)
                return kept  # the same log: nothing newer to keep
            try:
                verify_consistency(kept.tree_size, seen.tree_size, kept.root, seen.root, list(proof))
            except (TamperError, TypeError):
                raise WitnessMismatch("forked", kept, seen) from None
        self._keep(seen)
        return seen

    def _keep(self, checkpoint: Checkpoint) -> None:
        data = encode_checkpoint(checkpoint)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        try:
            write_exclusive(tmp, data, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(self.path.parent)


def _report_body(mismatch: WitnessMismatch) -> dict[str, Any]:
    return {"kept": None if mismatch.kept is None else encode_checkpoint(mismatch.kept),
            "seen": None if mismatch.seen is None else encode_checkpoint(mismatch.seen),
            "problem": mismatch.problem}


async def witness_check(client: MeshClient, witness: Witness, *, timeout: float = 10.0,
                        report_timeout: float = 5.0) -> Checkpoint:
    """Fetch the mesh's latest checkpoint (``audit.checkpoint {since}``) and observe it with
    ``witness``; return the checkpoint kept now. On :class:`WitnessMismatch`, first report it
    (``audit.witness_report {kept, seen, problem}``, at most ``report_timeout`` seconds; a failed
    report leaves ``reported`` False and is otherwise ignored), then re-raise it. An error of
    the ``audit.checkpoint`` call itself (audit sealed, a timeout) is raised as it is."""
    reply = await client.call("audit.checkpoint", {"since": witness.since()}, timeout=timeout)
    # Whatever came back goes through observe: what is not a signed checkpoint is bad_signature,
    # what is not a proof fails the consistency check.
    answer: dict[str, Any] = reply if isinstance(reply, dict) else {}
    checkpoint, proof = answer.get("checkpoint", b""), answer.get("proof", ())
    try:
        return witness.observe(checkpoint, proof)
    except WitnessMismatch as mismatch:
        try:
            await client.call("audit.witness_report", _report_body(mismatch), timeout=report_timeout)
        except Exception:  # noqa: BLE001 - best effort: the user is told either way
            mismatch.reported = False
        else:
            mismatch.reported = True
        raise

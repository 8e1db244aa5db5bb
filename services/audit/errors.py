"""The audit log's one error of its own: evidence that the log is not what was written.

:class:`TamperError` is :class:`shared.transparency.TamperError` itself: the verification core
(hashing, proofs, checkpoints) lives in ``shared`` so that a paired device verifies exactly as
audit does, and a failure raised on either side is the same error. It is re-exported here under
its old home, which every audit module and test imports.

Who is at fault: whoever changed the stored log, the proof or the bundle (or the disk under
them), never the caller who asked for verification. A caller's own mistake (a key of the wrong
length, an index past the end of the log) is :class:`shared.BadRequest`, as everywhere else.
On the wire a :class:`TamperError` travels as ``INTERNAL``: the audit service failed to vouch for
its log, and the details stay in its local log and in ``meshctl audit verify``.

``sequence`` is the first record that fails, when a record can be named: the first missing one
for a deletion or truncation, the first out of place for a reordering, the first whose hash does
not match for a modification. When a record was changed *and* the hash chain after it rewritten,
only the signed checkpoints can tell, and they vouch for ranges: then ``sequence`` is the first
record the failing checkpoint no longer vouches for, and the message names the whole range. It is
None when no record is at fault (a forged checkpoint signature, a malformed proof).
"""

from __future__ import annotations

from shared.transparency import TamperError

__all__ = ["TamperError"]

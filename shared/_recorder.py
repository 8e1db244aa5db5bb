"""A service's audit trail: a durable spool of its own, shipped to the audit service.

Services that decide on people's access (authn, authz) record every decision before they answer:
the record is fsynced into ``<home>/spool/<name>-audit.spool`` (a full spool refuses the operation:
fail closed), and an :class:`~shared.AuditShipper` delivers the spool to ``audit.append``, so nothing
is lost while audit is down. Records carry who (the peer identity the broker authenticated, and its
key fingerprint), the outcome and reason codes; callers never put a secret in them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

from ._errors import Unavailable
from ._service import RequestContext
from ._shipper import AuditShipper
from ._spool import Spool

SHIP_PERIOD_S: Final = 1.0
SPOOL_MAX_RECORDS: Final = 1_000_000


class AuditRecorder:
    """Open with :meth:`open` (the mesh client, once connected), :meth:`record`, :meth:`close`.
    ``name`` is the service's (it names the shipper task and the refusal messages)."""

    def __init__(self, name: str, path: Path, max_records: int = SPOOL_MAX_RECORDS) -> None:
        self.name = name
        self.path = path
        self.max_records = max_records
        self.spool: Spool | None = None
        self.shipper: AuditShipper | None = None

    def open(self, mesh: Any) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool = Spool(self.path, self.max_records)
        if mesh is not None:  # None only when handlers are called directly (tests)
            self.shipper = AuditShipper(self.spool, mesh, name=f"{self.name}-audit-shipper", period=SHIP_PERIOD_S)
            self.shipper.start()

    async def close(self) -> None:
        # The shipper reads from the spool until it stops: it goes first.
        if self.shipper is not None:
            await self.shipper.stop()
            self.shipper = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def record(self, event: str, ctx: RequestContext | None, outcome: str, *, target: str | None = None,
               on_behalf_of: str | None = None, **details: Any) -> None:
        """Append one record and fsync it before returning; :class:`Unavailable` when the spool is
        full or closed (the operation is then refused). ``ctx`` None: the service acting on its own."""
        if self.spool is None:
            raise Unavailable(f"{self.name} cannot record to its audit spool now; try again shortly")
        record: dict[str, Any] = {"type": event, "time": time.time(), "outcome": outcome,
                                  **{k: v for k, v in details.items() if v is not None}}
        if ctx is not None:
            # The peer as the broker authenticated it: its name and the fingerprint of its key.
            record.update(actor=ctx.caller, source=ctx.caller, source_role=ctx.role,
                          source_fp=ctx.fingerprint[:16] or None)
        if target is not None:
            record["target"] = target
        if on_behalf_of is not None:
            record["on_behalf_of"] = on_behalf_of
        if not self.spool.append(record):
            raise Unavailable(f"the {self.name} audit spool is full; refusing until audit catches up")
        self.spool.sync()
        if self.shipper is not None:
            self.shipper.notify()

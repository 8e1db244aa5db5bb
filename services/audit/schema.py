"""Wire messages of the audit service (checked strictly by :func:`shared.message`)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

from .chain import Record

#: Records one ``audit.append`` may carry: bounded so one request cannot hold a commit for long.
MAX_RECORDS_PER_APPEND = 1000
#: Records ``audit.tail`` returns at most.
MAX_TAIL = 1000


@message
class AppendRecord:
    """One event as a producer reports it. The actor is not here: the service takes it from the
    broker's stamp on the request. ``time`` is the producer's own clock (kept as
    ``details.reported_time``); the record's time is the audit service's, when it was received."""

    type: str = field(metadata={"max_len": 128})
    outcome: str = field(metadata={"max_len": 64})
    target: str | None = field(default=None, metadata={"max_len": 256})
    on_behalf_of: str | None = field(default=None, metadata={"max_len": 256})
    time: float | None = None
    details: dict[str, Any] | None = field(default=None, metadata={"max_len": 256})


@message
class AppendRequest:
    """``audit.append {records: [...]}``."""

    records: list[AppendRecord] = field(metadata={"max_len": MAX_RECORDS_PER_APPEND})


@message
class TailRequest:
    """``audit.tail {limit?, type?, actor?}``."""

    limit: int = 50
    type: str | None = field(default=None, metadata={"max_len": 128})
    actor: str | None = field(default=None, metadata={"max_len": 128})


@message
class AckRequest:
    """``audit.alerts.ack {id}``: the open alert's id (the sequence number of its record)."""

    id: int


def record_to_wire(record: Record) -> dict[str, Any]:
    """A stored record as ``audit.tail`` shows it (``type`` on the wire is the record's event)."""
    return {"seq": record.seq, "time": record.time, "actor": record.actor, "on_behalf_of": record.on_behalf_of,
            "type": record.event, "target": record.target, "outcome": record.outcome,
            "details": dict(record.details)}

"""shared.AuditRecorder: the fsyncs of ``record_durably`` and of the shipper's acks run on a worker
thread, never on the event loop; and the first fsync that fails is final (a retried fsync can
succeed without the records it lost), for both ways of recording, with the reason in the
readiness and the log and no path anywhere. The spool is real; the fsync fails at the spool's
``fsync`` step."""

from __future__ import annotations

import errno
import io
import json
import threading
from pathlib import Path

import pytest

from shared import FAILED, AuditRecorder, Spool, Unavailable, configure_logging

from .conftest import eventually, holds
from .test_audit_delivery import FlakyAudit


class Steps:
    """The spool's step hook: every step, and whether it ran on the event loop's thread; the
    ``fsync`` step raises ``fail`` (when set) on the thread ``fail_on`` names."""

    def __init__(self) -> None:
        self.loop_thread = threading.current_thread()
        self.seen: list[tuple[str, bool]] = []
        self.fail: OSError | None = None
        self.fail_on = "worker"

    def __call__(self, step: str) -> None:
        on_loop = threading.current_thread() is self.loop_thread
        self.seen.append((step, on_loop))
        if step == "fsync" and self.fail is not None and on_loop == (self.fail_on == "loop"):
            raise self.fail


def spool_path(root: Path) -> Path:
    return root / "spool" / "svc-audit.spool"


async def test_durable_records_and_acks_are_fsynced_off_the_event_loop(short_tmp: Path) -> None:
    steps, audit = Steps(), FlakyAudit([])
    recorder = AuditRecorder("svc", spool_path(short_tmp), checkpoint=steps)
    recorder.open(audit)
    try:
        await recorder.record_durably("test.event", None, "ok", n=1)
        assert ("fsync", False) in steps.seen  # made durable before it returned, by a worker
        # Shipped, acked without an fsync of its own, and the ack fsynced by a worker afterwards.
        await eventually(lambda: holds(("ack-written", True) in steps.seen and steps.seen[-1] == ("fsync", False)))
        assert [r["details"]["n"] for r in audit.received] == [1]
        assert ("ack-synced", True) not in steps.seen and ("fsync", True) not in steps.seen
    finally:
        await recorder.close()
    assert len(Spool(spool_path(short_tmp), 10)) == 0  # the ack is on disk


@pytest.mark.parametrize("where", ["worker", "loop"])
async def test_the_first_failed_fsync_is_final(short_tmp: Path, where: str) -> None:
    steps = Steps()
    path = spool_path(short_tmp)
    steps.fail, steps.fail_on = OSError(errno.EIO, "Input/output error", str(path)), where
    recorder = AuditRecorder("svc", path, checkpoint=steps)
    recorder.open(None)
    assert recorder.readiness is None
    try:
        stream = io.StringIO()
        configure_logging("test", stream=stream)
        if where == "worker":
            with pytest.raises(Unavailable) as refused:
                await recorder.record_durably("test.event", None, "ok", n=1)
        else:
            with pytest.raises(Unavailable) as refused:
                recorder.record("test.event", None, "ok", n=1)
        logs = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert refused.value.message == "svc cannot make its audit records durable; restart svc"
        readiness = recorder.readiness
        assert readiness is not None and readiness.state == FAILED
        assert readiness.reason == ("its audit spool could not be made durable (OSError: Input/output error); "
                                    "restart svc (the disk may be failing)")
        assert [(e["event"], e["service"], e["error_type"], e["reason"]) for e in logs] == [
            ("audit_spool_sync_failed", "svc", "OSError", "Input/output error")]
        assert str(short_tmp) not in stream.getvalue()
        # The disk answers again: nothing is recorded anyway, either way, until a restart.
        steps.fail = None
        before = len(steps.seen)
        with pytest.raises(Unavailable):
            recorder.record("test.event", None, "ok", n=2)
        with pytest.raises(Unavailable):
            await recorder.record_durably("test.event", None, "ok", n=3)
        assert len(steps.seen) == before and recorder.spool is not None and len(recorder.spool) == 1
    finally:
        await recorder.close()

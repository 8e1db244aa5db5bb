"""A spool step hook that stalls (or fails) a real fsync, for the tests that check who waits on the
disk: the broker's audit spool (test_broker_disk.py) and a service's (test_authz_durable.py)."""

from __future__ import annotations

import asyncio
import threading


class DiskStall:
    """The spool's step hook: once armed, the next ``fsync`` step signals ``entered`` and then waits
    for ``release`` (or raises ``failure``), on whatever thread reached it; later ones go through.
    ``threads``: the thread the stalled step ran on; ``fsyncs``: the thread of every ``fsync`` step
    since arming, the stalled one first."""

    def __init__(self, failure: OSError | None = None) -> None:
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.failure = failure
        self.threads: list[str] = []
        self.fsyncs: list[str] = []

    def __call__(self, step: str) -> None:
        if step != "fsync" or not self.armed.is_set():
            return
        self.fsyncs.append(threading.current_thread().name)
        if self.entered.is_set():
            return
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        if self.failure is not None:
            raise self.failure
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the stalled fsync")

    async def wait_entered(self) -> bool:
        """Whether an fsync reached the hook within 10 s (waited for off the event loop)."""
        return await asyncio.to_thread(self.entered.wait, 10)

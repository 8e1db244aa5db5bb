"""A running process's disk syncs held, or failed, by the kernel's tracer: ``strace -e inject``.

The tests of who waits on a real disk sync inside a library (RocksDB's WAL sync, in C++, where no
Python hook reaches) attach strace to the process. Every ``fdatasync`` it makes meanwhile either
waits at its entry (``delay_enter``) until :meth:`SyscallStall.release` detaches strace, or fails
with ``EIO`` without running. The process is real and unchanged; only that syscall is held.
"""

from __future__ import annotations

import asyncio
import platform
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Final

from .conftest import eventually, holds

# The number /proc/<pid>/task/<tid>/syscall shows for a thread stopped at fdatasync's entry.
_FDATASYNC: Final = {"x86_64": 75, "aarch64": 83}
# How long a held sync waits if the test never releases it (a test that fails before it releases
# must not leave the process stopped for ever).
HOLD_AT_MOST_S: Final = 60


class StallError(Exception):
    """strace could not attach."""


class SyscallStall:
    """``async with SyscallStall(pid) as stall``: attached; every ``fdatasync`` of ``pid``'s
    threads is held (or fails with EIO when ``fail``) until :meth:`release` or the block ends."""

    def __init__(self, pid: int, *, fail: bool = False) -> None:
        self.pid = pid
        self.fail = fail
        self._strace: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> SyscallStall:
        action = "error=EIO" if self.fail else f"delay_enter={HOLD_AT_MOST_S * 1_000_000}"
        self._strace = subprocess.Popen(
            ["strace", "-f", "-p", str(self.pid), "-e", "trace=fdatasync", "-e", f"inject=fdatasync:{action}",
             "-o", "/dev/null"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Attached once every thread of the process names strace as its tracer. The kernel announces
        # neither that nor a thread stopping at a syscall: /proc is the only sign, polled to a deadline.
        strace = self._strace
        await eventually(lambda: holds(strace.poll() is not None or self._attached()), deadline=10, poll=0.01)
        if strace.poll() is not None:
            raise StallError(f"strace exited with {strace.returncode} before attaching to {self.pid}")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.release()

    def _attached(self) -> bool:
        assert self._strace is not None
        tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        for task in tasks:
            try:
                status = (task / "status").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            tracer = next(line for line in status.splitlines() if line.startswith("TracerPid:"))
            if int(tracer.split()[1]) != self._strace.pid:
                return False
        return bool(tasks)

    def held(self) -> bool:
        """Whether a thread of the process is stopped at the entry of ``fdatasync`` now."""
        number = str(_FDATASYNC[platform.machine()])
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                if (task / "syscall").read_text().split()[0] == number:
                    return True
            except (OSError, IndexError):
                continue
        return False

    async def wait_held(self, timeout: float = 10) -> None:
        """Return once a thread is held at ``fdatasync``; AssertionError after ``timeout`` s."""
        await eventually(lambda: holds(self.held()), deadline=timeout, poll=0.01)

    async def release(self) -> None:
        """Detach strace (SIGTERM: it lets every tracee go), so the held syncs run; idempotent."""
        if self._strace is None:
            return
        strace, self._strace = self._strace, None
        strace.terminate()
        try:
            await asyncio.to_thread(strace.wait, 10)
        except subprocess.TimeoutExpired:
            strace.kill()
            await asyncio.to_thread(strace.wait, 10)


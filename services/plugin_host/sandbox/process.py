"""Host side: one plugin's child process (:class:`Child`).

The host reads the child's socket, stdout and stderr all the time, and watches its process
through a pidfd, so that a violation is caught and ``exit`` is set even while no call runs.
What the host kills for (SIGKILL to the child's process group): a frame larger than
``max_message_bytes`` (oversized), a frame that does not decode or is not exactly the frame the
protocol expects at that moment (protocol), more than ``messages_per_s`` frames or
``log_bytes_per_s`` bytes of output in a second (flood), a call past its timeout
(call_timeout). Nothing a child does raises out of a background task or blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any, Final

from . import frames, replies, runtime
from .exits import ChildGone, ExitInfo, SandboxUnavailable, classify, printable
from .replies import OnRequest
from .spec import SandboxSpec
from .streams import LogPipe, Meter

#: How long a child that was killed, or said it is leaving, may take to be reaped.
REAP_TIMEOUT: Final = 5.0
#: A child that closed its socket has this long to exit before it is killed for it.
EOF_GRACE: Final = 1.0


class Child:
    """A running plugin child. Create with :meth:`start`; end with :meth:`stop`."""

    pid: int
    functions: tuple[str, ...]
    topics: tuple[str, ...]
    layers: dict[str, bool]
    exit: ExitInfo | None

    def __init__(self, spec: SandboxSpec, popen: subprocess.Popen[bytes], sock: socket.socket,
                 on_log: Callable[[str, str], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._spec = spec
        self._popen = popen
        self._sock = sock
        # The largest packet this end can send: the spec's limit, or less if the kernel's is lower.
        self._max_send = min(spec.max_message_bytes, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32)
        self.pid = popen.pid
        self.functions, self.topics, self.layers = (), (), {}
        self.exit = None
        self._ready = False
        self._reaped: asyncio.Future[tuple[int | None, float]] = self._loop.create_future()
        self._kill_reason: tuple[str, str] | None = None
        self._exited: asyncio.Future[ExitInfo] = self._loop.create_future()
        self._waiter: asyncio.Future[dict[str, Any]] | None = None
        self._lock = asyncio.Lock()
        self._next_id = 0
        self._frames = Meter(spec.messages_per_s)
        output = Meter(spec.log_bytes_per_s)

        def flood() -> None:
            self._kill("flood", f"more than {spec.log_bytes_per_s} bytes of output in a second")
        assert popen.stdout is not None and popen.stderr is not None
        self._pipes = [LogPipe(self._loop, popen.stdout, "stdout", on_log, output, flood),
                       LogPipe(self._loop, popen.stderr, "stderr", on_log, output, flood)]
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)
        self._reader = self._loop.create_task(self._read_frames(), name=f"plugin-{spec.name}-frames")

    # -- life ----------------------------------------------------------------------------------

    @classmethod
    async def start(cls, spec: SandboxSpec, *, bpf: bytes, on_log: Callable[[str, str], None],
                    start_timeout: float) -> Child:
        """Spawn the child, send it its setup, and wait for ``ready``."""
        popen, host_sock = runtime.spawn(spec)
        child = cls(spec, popen, host_sock, on_log)
        setup = runtime.setup_frame(spec, bpf)
        try:
            try:
                async with asyncio.timeout(start_timeout):
                    waiter = child._arm()
                    await child._send(frames.encode(setup))
                    frame = await child._await(waiter)
            except TimeoutError:
                child._kill("start_failed", f"not ready within {start_timeout:g} s")
                raise ChildGone(await child._reap()) from None
            if frame["t"] == "unavailable":
                await child._reap()  # it exits by itself (78); killed if it lingers
                raise SandboxUnavailable(frame["layer"], printable(frame["reason"], 150))
            if frame["t"] != "ready":
                child._kill("protocol", f"a {frame['t']} frame before ready")
                raise ChildGone(await child._reap())
        except BaseException:
            if child.exit is None:  # cancelled, or gone: never leave a half-started child behind
                child._kill("start_failed", "its start was abandoned")
            raise
        child.functions, child.topics = tuple(frame["functions"]), tuple(frame["topics"])
        child.layers = dict(frame["layers"])
        return child

    async def stop(self, grace: float = 2.0) -> ExitInfo:
        """Close the socket (the child exits), SIGKILL it after ``grace`` seconds, reap it."""
        if self.exit is not None:
            return self.exit
        if self._kill_reason is None:
            self._kill_reason = ("stopped", "stopped by plugin-host")
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), grace)
        except TimeoutError:
            self._kill("stopped", "stopped by plugin-host")
        return await self._reap()

    async def wait(self) -> ExitInfo:
        """How the child ended, once it has (for whatever reason)."""
        return await asyncio.shield(self._exited)

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, function: str, args: Any, *, timeout: float, on_request: OnRequest) -> Any:
        """Call an exported function; its return value, or PluginFailed / ChildGone."""
        return await self._exchange({"t": "call", "fn": function, "args": args}, timeout, on_request)

    async def event(self, topic: str, body: Any, *, timeout: float, on_request: OnRequest) -> None:
        """Deliver an event to the handlers whose prefix matches ``topic``."""
        await self._exchange({"t": "event", "topic": topic, "body": body}, timeout, on_request)

    async def _exchange(self, frame: dict[str, Any], timeout: float, on_request: OnRequest) -> Any:
        name = frame.get("fn", frame.get("topic"))
        if type(name) is not str or not 0 < len(name) <= frames.MAX_NAME_LEN:
            raise ValueError(f"a function or topic is a string of 1 to {frames.MAX_NAME_LEN} characters")
        async with self._lock:
            self._next_id += 1
            call_id = frame["id"] = self._next_id
            data = frames.encode(frame)  # EncodeError (a ValueError): the caller's arguments
            if len(data) > self._max_send:
                raise ValueError(f"the {frame['t']} frame is larger than max_message_bytes ({self._max_send})")
            try:
                async with asyncio.timeout(timeout):
                    waiter = self._arm()
                    await self._send(data)
                    while True:
                        reply = await self._await(waiter)
                        if reply["t"] == "request":
                            answer = await replies.answer(reply, on_request, self._max_send)
                            waiter = self._arm()
                            await self._send(answer)
                        elif reply["t"] == "result" and reply["id"] == call_id:
                            return replies.outcome(reply)
                        else:
                            self._kill("protocol", f"a {reply['t']} frame that answers nothing asked")
                            raise ChildGone(await self._reap())
            except TimeoutError:
                self._kill("call_timeout", f"no result within {timeout:g} s")
                raise ChildGone(await self._reap()) from None
            except asyncio.CancelledError:
                self._kill("stopped", "a call to it was cancelled midway")
                raise

    # -- plumbing ------------------------------------------------------------------------------

    def _arm(self) -> asyncio.Future[dict[str, Any]]:
        """Expect exactly one frame from now on (armed before sending what it answers)."""
        if self.exit is not None:
            raise ChildGone(self.exit)
        self._waiter = self._loop.create_future()
        return self._waiter

    async def _await(self, waiter: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    async def _send(self, data: bytes) -> None:
        # A failure means the child is gone or going: the exit watcher fails the waiter with how.
        with contextlib.suppress(OSError):
            await self._loop.sock_sendall(self._sock, data)

    async def _read_frames(self) -> None:
        try:
            while True:
                try:
                    data = await self._loop.sock_recv(self._sock, self._spec.max_message_bytes + 1)
                except OSError:
                    data = b""
                if not data:
                    await self._on_eof()
                    return
                if not self._take(data):
                    return
        except Exception:  # noqa: BLE001 - a bug here must not outlive the child or reach the loop
            self._kill("protocol", "plugin-host could not read its frames")

    def _take(self, data: bytes) -> bool:
        """Deliver one packet to the waiter; False (and the child killed) when it breaks the rules."""
        limit = self._spec.max_message_bytes
        if len(data) > limit:
            self._kill("oversized", f"a frame larger than {limit} bytes")
            return False
        if self._frames.over(1):
            self._kill("flood", f"more than {self._spec.messages_per_s} frames in a second")
            return False
        try:
            frame = frames.check_from_child(frames.decode(data, limit))
        except frames.ProtocolError as exc:
            self._kill("protocol", printable(f"a malformed frame: {exc}", 200))
            return False
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._kill("protocol", f"a {frame['t']} frame when none was expected")
            return False
        if frame["t"] == "ready":
            self._ready = True
        if frame["t"] == "unavailable" and self._kill_reason is None:  # it exits (78) right after
            reason = printable(frame["reason"], 150)
            self._kill_reason = ("sandbox_unavailable", f"layer {frame['layer']} cannot be applied: {reason}")
        self._waiter = None
        waiter.set_result(frame)
        return True

    async def _on_eof(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reaped), EOF_GRACE)
        if not self._reaped.done() and self._kill_reason is None:
            self._kill("protocol", "it closed its socket and kept running")

    def _kill(self, reason: str, detail: str) -> None:
        """Record why (the first reason wins) and SIGKILL the process group, unless reaped."""
        if self._kill_reason is None:
            self._kill_reason = (reason, detail)
        if not self._reaped.done():  # once reaped, the pid may already be someone else's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def _reap(self) -> ExitInfo:
        """The exit, once the watcher has it; killed and named by the recorded reason if it takes
        longer than REAP_TIMEOUT (the process may then still be unreaped: ``exit`` stays None)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exited), REAP_TIMEOUT)
        except TimeoutError:
            self._kill("crash", "it could not be reaped")
            reason, detail = self._kill_reason or ("crash", "it could not be reaped")
            return ExitInfo(reason, detail + " (not yet reaped)", None)

    def _on_exit(self) -> None:
        """The pidfd is readable: reap. The end is announced once the frame reader has taken what
        the child sent before it died and both output pipes are read to their end (a dead child
        holds nothing open: it cannot have forked), or EOF_GRACE later at most."""
        if self._reaped.done():
            return
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped behind our back: the status is lost
            pid, status, usage = self.pid, None, None
        except OSError:
            return
        if pid == 0:
            return
        with contextlib.suppress(Exception):  # the watcher runs on the loop: it must not raise into it
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        returncode = None if status is None else os.waitstatus_to_exitcode(status)
        self._popen.returncode = returncode  # so that subprocess never waits for this pid again
        cpu = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
        self._reaped.set_result((returncode, cpu))
        self._reader.add_done_callback(lambda _: self._finish_when_drained())
        for pipe in self._pipes:
            pipe.closed.add_done_callback(lambda _: self._finish_when_drained())
        self._loop.call_later(EOF_GRACE, self._finish)  # whatever is still unread by then is lost

    def _finish_when_drained(self) -> None:
        """Announce the end once its frames and its last output lines (a traceback, say) are in."""
        if self._reader.done() and all(pipe.closed.done() for pipe in self._pipes):
            self._finish()

    def _finish(self) -> None:
        if self._exited.done():
            return
        try:
            returncode, cpu = self._reaped.result()
            if self._kill_reason is not None:
                info = ExitInfo(*self._kill_reason, returncode)
            elif returncode is None:
                info = ExitInfo("crash", "its exit status was lost", None)
            else:
                info = classify(returncode, cpu_seconds=cpu, cpu_limit=self._spec.limits.cpu_s, ready=self._ready)
        except Exception:  # noqa: BLE001 - never raise into the loop
            info = ExitInfo("crash", "plugin-host could not classify its exit", None)
        self.exit = info
        self._exited.set_result(info)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ChildGone(info))
        self._reader.cancel()
        self._reader.add_done_callback(lambda _: self._sock.close())

"""The bench client: the same raw pyzmq code against every setup, plus the runtime client.

:class:`RawClient` owns one long-lived CURVE DEALER (connections are kept for
the whole run: a CURVE handshake costs ~4x a message). :meth:`RawClient.round_trips`
times sequential calls one by one; :meth:`RawClient.throughput` keeps a fixed
number of requests in flight and times the whole batch. Every receive has a
timeout (the socket's ``RCVTIMEO``), and every reply is checked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import zmq

from shared import MeshClient, MeshHome

from .harness import BenchError
from .wire import body_frame, body_value, curve_client, load_pair, request_header, unpack

BODY: bytes = body_frame(100)
BODY_VALUE: dict[str, bytes] = body_value(100)
RUNTIME_TARGET = "rtecho.echo"


class RawClient:
    """A bench caller (identity ``bench``) on one setup's endpoint."""

    def __init__(self, name: str, context: zmq.Context[zmq.Socket[bytes]], home: MeshHome,
                 server: bytes, endpoint: str) -> None:
        self.name = name
        self.sock = curve_client(context, load_pair(home, "bench"), server, endpoint)
        self._next = 1

    def close(self) -> None:
        self.sock.close(linger=0)

    def _reply(self) -> dict[str, Any]:
        """The next reply header, heartbeats skipped; raise on an error or a timeout."""
        while True:
            try:
                frames = self.sock.recv_multipart()
            except zmq.Again:
                raise BenchError(f"{self.name}: no reply within the receive timeout") from None
            header: dict[str, Any] = unpack(frames[0])
            kind = header.get("k")
            if kind == "rep":
                if len(frames) != 2 or frames[1] != BODY:
                    raise BenchError(f"{self.name}: the reply does not carry the request body back")
                return header
            if kind == "err":
                raise BenchError(f"{self.name}: error reply {header.get('code')}: {header.get('msg')}")

    def expect_refusal(self, target: str, code: str) -> None:
        """Check that a call to ``target`` is refused with ``code`` (the broker's checks are on)."""
        request_id = self._next
        self._next += 1
        self.sock.send_multipart([request_header(request_id, target), BODY])
        try:
            self._reply()
        except BenchError as exc:
            if code in str(exc):
                return
            raise
        raise BenchError(f"{self.name}: a call to {target} was not refused with {code}")

    def round_trips(self, count: int) -> list[float]:
        """``count`` sequential calls; the round trip of each, in seconds."""
        send, reply, clock = self.sock.send_multipart, self._reply, time.perf_counter
        samples = [0.0] * count
        for i in range(count):
            request_id = self._next
            self._next += 1
            start = clock()
            send([request_header(request_id), BODY])
            header = reply()
            samples[i] = clock() - start
            if header.get("id") != request_id:
                raise BenchError(f"{self.name}: reply to {header.get('id')} while waiting for {request_id}")
        return samples

    def throughput(self, count: int, window: int) -> float:
        """Send ``count`` requests keeping ``window`` in flight; messages per second."""
        send, reply = self.sock.send_multipart, self._reply
        first = self._next
        sent = done = 0
        start = time.perf_counter()
        while sent < min(window, count):
            send([request_header(first + sent), BODY])
            sent += 1
        while done < count:
            reply()
            done += 1
            if sent < count:
                send([request_header(first + sent), BODY])
                sent += 1
        elapsed = time.perf_counter() - start
        self._next = first + count
        return count / elapsed


async def runtime_connect(home: MeshHome) -> MeshClient:
    """A :class:`MeshClient` as ``bench`` on the full broker."""
    return await MeshClient.connect(home, "bench", timeout=30.0)


async def runtime_round_trips(client: MeshClient, count: int) -> list[float]:
    """``count`` sequential ``MeshClient.call`` to the runtime echo service, in seconds each."""
    clock = time.perf_counter
    samples = [0.0] * count
    for i in range(count):
        start = clock()
        result = await client.call(RUNTIME_TARGET, BODY_VALUE, timeout=10.0)
        samples[i] = clock() - start
        if result != BODY_VALUE:
            raise BenchError("runtime: the reply does not carry the request body back")
    return samples


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by every thread of process ``pid`` (libzmq's I/O and ZAP threads
    included), from ``/proc/<pid>/task/*/schedstat`` (:func:`sched_seconds`); None where unavailable."""
    both = sched_seconds(pid)
    return None if both is None else both[0]


def sched_seconds(pid: int) -> tuple[float, float] | None:
    """CPU time used so far by every thread of process ``pid``, and the time they waited runnable
    for a CPU (the run queue), both from ``/proc/<pid>/task/*/schedstat``; None where unavailable."""
    cpu = waited = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()
            cpu, waited = cpu + int(fields[0]), waited + int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return cpu / 1e9, waited / 1e9


def user_system_seconds(pid: int) -> tuple[float, float] | None:
    """CPU time process ``pid`` (every thread) has spent so far in user mode and in the kernel, from
    ``/proc/<pid>/stat``, to the clock tick; None where unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def proc_status_kib(field: str) -> int:
    """``field`` (``VmRSS``, ``VmHWM``) of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise SystemExit(f"bench: no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Restart this process's resident high-water mark (``VmHWM``) from its current RSS; False when
    the kernel does not allow it (then VmHWM includes everything since the process started).

    Why not ``ru_maxrss``: on Linux it keeps the larger of this process's peak and the peak of the
    image it replaced at exec, that is the bench parent's RSS at fork, so an increase smaller than
    the parent's size is invisible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True

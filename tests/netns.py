"""Two network namespaces joined by a veth pair: the mesh on one side, a device on the other.

A paired device reaches the broker over TCP with CURVE; the tests that prove it put the mesh in
one namespace and the device in another, so that the only path between them is the veth, and
capture that veth (:class:`Capture`) to show what crosses it. Neither namespace has a route out:
their traffic cannot leave them, and the host's own services are out of their reach. Filesystem
(pathname) unix sockets are not network objects, so the mesh's ``ipc://`` endpoints still work
across the boundary; abstract ones (``ipc://@name``) do not.

Skip or fail: creating namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN). Not root,
:func:`require_root` skips, naming why: a developer's unprivileged run. As root (here and in CI)
everything else that goes wrong fails with ``ip``'s own message, ``ip netns add`` refused in a
container without CAP_SYS_ADMIN included: a rig that skipped quietly would prove nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import pytest

from .capture import Capture, CaptureError, TcpSegment, read_payloads, read_segments, tcp_stream

__all__ = ["Capture", "CaptureError", "CommandFailed", "NetnsError", "NetnsPair", "TcpSegment", "argv_in", "namespaces",
           "read_payloads", "read_segments", "require_root", "run_in", "spawn_in", "tcp_stream", "wait_tcp"]

REPO = Path(__file__).resolve().parents[1]
# Absolute, so that a caller's env without /sbin on its PATH (spawn_in) still finds it.
IP = shutil.which("ip") or "/sbin/ip"
# Private blocks the addresses are drawn from, one /24 per pair; a /24 the host routes is passed over.
BLOCKS = (ipaddress.IPv4Network("10.213.0.0/16"), ipaddress.IPv4Network("172.31.0.0/16"))


class NetnsError(RuntimeError):
    """The rig could not be built or torn down; the message is ``ip``'s own."""


class CommandFailed(subprocess.CalledProcessError):
    """A command run in a namespace failed: unlike its base class, the message has its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or self.output or '').strip()}"


def argv_in(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``ns``; ip execs it in place, so a Popen's pid is the command's own."""
    return [IP, "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
           check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``ns`` from the repository, output captured as text; raise
    :class:`CommandFailed` on a non-zero exit when ``check``."""
    done = subprocess.run(argv_in(ns, argv), cwd=REPO, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, done.args, done.stdout, done.stderr)
    return done


def spawn_in(ns: str, argv: Sequence[str], env: Mapping[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in ``ns`` from the repository with exactly ``env`` (None: this process's),
    appending its stdout and stderr to ``log_path``. The caller stops it; the pair's teardown
    kills whatever is still running in its namespaces."""
    with Path(log_path).open("ab") as log_file:
        return subprocess.Popen(argv_in(ns, argv), cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


# Nothing announces that a process in another namespace has started listening, and this
# process's sockets are the host's (os.setns is Python 3.12+): one interpreter in the namespace
# tries to connect until it succeeds or the deadline passes. The pause between attempts is the
# polling interval, not a wait for something to happen.
_CONNECT_LOOP = """
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((host, port), timeout=max(0.05, deadline - time.monotonic())).close()
        sys.exit(0)
    except OSError as error:
        last = error
    if time.monotonic() >= deadline:
        sys.exit(f"{type(last).__name__}: {last}")
    time.sleep(0.02)
"""


def wait_tcp(ns: str, host: str, port: int, *, timeout: float) -> None:
    """Return once a TCP connect from ``ns`` to ``host:port`` succeeds; TimeoutError after
    ``timeout`` seconds. The probe connects and closes without a byte: a ZMTP peer sees a
    connection that ends before its greeting, and drops it."""
    # -I -S: the probe needs only the standard library, and starts faster without site.
    done = run_in(ns, [sys.executable, "-I", "-S", "-c", _CONNECT_LOOP, host, str(port), str(timeout)],
                  timeout=timeout + 30, check=False)
    if done.returncode != 0:
        raise TimeoutError(f"nothing accepted a TCP connection to {host}:{port} from {ns} within {timeout} s "
                           f"({done.stderr.strip()})")


def require_root() -> None:
    """Skip the calling test when not root, the one case where these tests do not run."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add: CAP_SYS_ADMIN and CAP_NET_ADMIN); "
                    "CI and make test as root run these tests")


def _ip(*args: str) -> str:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> set[str]:
    """The names ``ip netns list`` shows (each line is a name, maybe followed by its id)."""
    return {line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()}


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of :data:`BLOCKS` that no route of the host's (any table) overlaps: a connect from
    the host to a pair's address must not find a real network instead of failing."""
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all"))
    taken = [ipaddress.ip_network(route["dst"], strict=False) for route in routes if route["dst"] != "default"]
    for _ in range(64):
        block = secrets.choice(BLOCKS)
        subnet = ipaddress.IPv4Network((int(block.network_address) + secrets.randbelow(256) * 256, 24))
        if not any(subnet.overlaps(network) for network in taken):
            return subnet
    raise NetnsError(f"every /24 tried in {', '.join(map(str, BLOCKS))} overlaps a route of the host's")


def _wait_exits(pidfds: dict[int, int], seconds: float) -> dict[int, int]:
    """Wait up to ``seconds`` for processes to exit (a pidfd is readable once its process has
    exited: an event, no polling); return those still running."""
    poller = select.poll()
    for fd in pidfds.values():
        poller.register(fd, select.POLLIN)
    running = dict(pidfds)
    deadline = time.monotonic() + seconds
    while running and (left := deadline - time.monotonic()) > 0:
        for fd, _event in poller.poll(left * 1000):
            poller.unregister(fd)
            running = {pid: pidfd for pid, pidfd in running.items() if pidfd != fd}
    return running


def _kill_everything_in(ns: str) -> None:
    """Stop every process left in ``ns``: SIGTERM, then SIGKILL after 2 s. A process still in a
    namespace keeps it (and its veth end) alive after ``ip netns delete``; a child forked
    meanwhile is caught by the next round."""
    for _ in range(3):
        pidfds: dict[int, int] = {}
        for pid in map(int, _ip("netns", "pids", ns).split()):
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
        if not pidfds:
            return
        try:
            for signum, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                for fd in pidfds.values():
                    try:
                        signal.pidfd_send_signal(fd, signum)
                    except ProcessLookupError:
                        continue
                if not (running := _wait_exits(pidfds, grace)):
                    break
            else:
                raise NetnsError(f"processes {sorted(running)} in {ns} outlived SIGKILL")
        finally:
            for fd in pidfds.values():
                os.close(fd)
    raise NetnsError(f"processes in {ns} kept forking while it was torn down")


class NetnsPair:
    """Namespaces ``mesh_ns`` and ``device_ns`` joined by a veth (``mesh_if`` in one, ``device_if``
    in the other) with ``mesh_addr`` and ``device_addr`` on a /24 of their own; ``lo`` up in both.

    Names are unique per pair (``cm-mesh-<6 hex>``); the veth is created in the namespaces
    directly, so no link of it ever exists in the host's. On exit, even after a failure: every
    process left in either namespace is stopped, the veth deleted, both namespaces deleted."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.mesh_ns, self.device_ns = f"cm-mesh-{tag}", f"cm-dev-{tag}"
        # An interface name is at most 15 bytes.
        self.mesh_if, self.device_if = f"cmm-{tag}", f"cmd-{tag}"
        self.subnet = _free_subnet()
        self.mesh_addr, self.device_addr = str(self.subnet[1]), str(self.subnet[2])

    def __enter__(self) -> NetnsPair:
        try:
            _ip("netns", "add", self.mesh_ns)
            _ip("netns", "add", self.device_ns)
            _ip("link", "add", self.mesh_if, "netns", self.mesh_ns, "type", "veth",
                "peer", "name", self.device_if, "netns", self.device_ns)
            for ns, iface, addr in ((self.mesh_ns, self.mesh_if, self.mesh_addr),
                                    (self.device_ns, self.device_if, self.device_addr)):
                # No IPv6 link-local address: no router solicitations or DAD in the capture.
                _ip("-n", ns, "link", "set", iface, "addrgenmode", "none")
                _ip("-n", ns, "addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", iface)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", iface, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Tear down whatever of the pair exists; harmless when called again. Every step is
        tried even when one fails (the first failure is raised at the end): one namespace
        stuck is no reason to leave the other."""
        failures: list[NetnsError] = []

        def attempt(step: Callable[..., object], *args: str) -> None:
            try:
                step(*args)
            except NetnsError as failure:
                failures.append(failure)

        existing = namespaces() & {self.mesh_ns, self.device_ns}
        for ns in sorted(existing):
            attempt(_kill_everything_in, ns)
        if self.mesh_ns in existing:
            # Deleting one end deletes both, now rather than when the namespace is reclaimed;
            # absent when setting up failed before it was made.
            subprocess.run([IP, "-n", self.mesh_ns, "link", "del", self.mesh_if], capture_output=True,
                           timeout=30, check=False)
        for ns in sorted(existing):
            attempt(_ip, "netns", "delete", ns)
        if failures:
            raise failures[0]

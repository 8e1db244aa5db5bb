"""The network-namespace rig (tests/netns.py) itself: what the detached-mode tests rely on.

A device in one namespace reaches the mesh in the other over the veth and nothing else; a
capture of the veth holds the bytes that crossed it; the host and the namespaces cannot reach
each other's network services, while pathname unix sockets (the mesh's ipc:// endpoints) work
across; teardown leaves nothing; the project imports inside a namespace. Real processes,
sockets and tcpdump throughout.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from .netns import (
    REPO,
    Capture,
    NetnsPair,
    namespaces,
    read_payloads,
    read_segments,
    require_root,
    run_in,
    spawn_in,
    tcp_stream,
    wait_tcp,
)

PORT = 7001  # every port is free in a namespace of its own

# Reads each connection to its end, logs "<peer address> <bytes in hex>", answers "got <count>".
# wait_tcp's probe connects and closes at once: that connection is logged with no bytes.
SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
while True:
    conn, (peer, _port) = server.accept()
    with conn:
        try:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            print(peer, data.hex(), flush=True)
            conn.sendall(b"got %d" % len(data))
        except OSError:
            continue
"""

# Sends argv[3] (hex) to argv[1]:argv[2], ends its side, prints the answer.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    conn.sendall(bytes.fromhex(sys.argv[3]))
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
print(reply.decode())
"""

# Tries each host:port, printing how it went: "connected" or the error's name.
PROBE = """
import errno, socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        print(target, "connected")
    except OSError as error:
        print(target, errno.errorcode.get(error.errno, type(error).__name__))
"""


def serve(pair: NetnsPair, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """SERVER in the mesh namespace on host:port; the caller waits until it listens."""
    return spawn_in(pair.mesh_ns, [sys.executable, "-c", SERVER, host, str(port)], None, log)


def send_from_device(pair: NetnsPair, port: int, data: bytes) -> str:
    return run_in(pair.device_ns, [sys.executable, "-c", CLIENT, pair.mesh_addr, str(port), data.hex()],
                  timeout=30).stdout.strip()


def host_addresses() -> list[str]:
    """The IPv4 addresses of the host's (this process's) namespace."""
    links = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, timeout=30,
                                      check=True).stdout)
    return [info["local"] for link in links for info in link["addr_info"]]


def logged(log: Path) -> list[tuple[str, bytes]]:
    """The server's log as (peer, bytes received), the probe's empty connections left out."""
    lines = (line.split(" ") for line in log.read_text().splitlines())
    return [(peer, bytes.fromhex(data)) for peer, data in lines if data]


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(10)


def test_a_device_reaches_the_mesh_over_the_veth_and_both_captures_hold_the_bytes(
        netns_pair: NetnsPair, short_tmp: Path) -> None:
    pair = netns_pair
    marker = b"cm-marker-" + secrets.token_hex(16).encode()
    log = short_tmp / "server.log"
    with Capture(pair.mesh_ns, pair.mesh_if, short_tmp / "mesh.pcap"), \
            Capture(pair.device_ns, pair.device_if, short_tmp / "device.pcap"):
        server = serve(pair, pair.mesh_addr, PORT, log)
        wait_tcp(pair.device_ns, pair.mesh_addr, PORT, timeout=10)
        assert send_from_device(pair, PORT, marker) == f"got {len(marker)}"
    stop(server)
    # The server saw the device's own address: the bytes came over the veth.
    assert logged(log) == [(pair.device_addr, marker)]
    for end in ("mesh.pcap", "device.pcap"):
        path = short_tmp / end
        assert marker in read_payloads(path)
        assert marker in tcp_stream(path, PORT, "to") and marker in tcp_stream(path, PORT)
        assert marker not in tcp_stream(path, PORT, "from")
        # wait_tcp's probe had its own (empty) connection answered before: "got 0".
        assert tcp_stream(path, PORT, "from") == f"got 0got {len(marker)}".encode()
        (carrier,) = [segment for segment in read_segments(path) if marker in segment.payload]
        assert (carrier.src, carrier.dst, carrier.dport) == (pair.device_addr, pair.mesh_addr, PORT)


def test_wait_tcp_gives_up_at_its_deadline_when_nothing_listens(netns_pair: NetnsPair) -> None:
    with pytest.raises(TimeoutError, match="ConnectionRefusedError"):
        wait_tcp(netns_pair.device_ns, netns_pair.mesh_addr, PORT, timeout=0.3)


def test_the_host_cannot_reach_the_mesh_namespace(netns_pair: NetnsPair, short_tmp: Path) -> None:
    """Not its address, and not a server on 0.0.0.0 through the host's own 127.0.0.1."""
    pair = netns_pair
    log = short_tmp / "server.log"
    # A port held (bound, not listening) in the host's namespace: a refusal there is certain, as
    # nothing of the host's can listen on it meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        server = serve(pair, "0.0.0.0", port, log)
        wait_tcp(pair.mesh_ns, "127.0.0.1", port, timeout=10)  # on the mesh namespace's own loopback
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The host has no link onto the pair's network: SO_DONTROUTE allows only directly connected
    # destinations, so the connect fails at once, and no SYN leaves by the host's default route.
    with socket.socket() as direct:
        direct.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        direct.settimeout(5)
        with pytest.raises(OSError) as unreachable:
            direct.connect((pair.mesh_addr, port))
    assert unreachable.value.errno == errno.ENETUNREACH
    assert not [address for address in host_addresses() if ipaddress.ip_address(address) in pair.subnet]
    # The server was up all along: the device still reaches it, and it saw nothing else.
    assert send_from_device(pair, port, b"after") == "got 5"
    stop(server)
    assert logged(log) == [(pair.device_addr, b"after")]


def test_the_device_namespace_cannot_reach_the_hosts_services(netns_pair: NetnsPair) -> None:
    """A server of the host's on all its addresses: from the device, its 127.0.0.1 is the
    device's own (refused) and the host's other addresses have no route."""
    with socket.create_server(("0.0.0.0", 0)) as host_server:
        port = host_server.getsockname()[1]
        others = [address for address in host_addresses() if not address.startswith("127.")]
        targets = [f"127.0.0.1:{port}", *(f"{address}:{port}" for address in others)]
        done = run_in(netns_pair.device_ns, [sys.executable, "-c", PROBE, *targets], timeout=30)
        outcomes = dict(line.split(" ") for line in done.stdout.splitlines())
        assert outcomes == {f"127.0.0.1:{port}": "ECONNREFUSED",
                            **{f"{address}:{port}": "ENETUNREACH" for address in others}}
        host_server.setblocking(False)
        with pytest.raises(BlockingIOError):
            host_server.accept()  # no connection ever reached it


# REP in the mesh namespace: answers one request with it and its own network namespace.
REP = """
import os, sys, zmq
with zmq.Context() as context, context.socket(zmq.REP) as rep:
    rep.setsockopt(zmq.RCVTIMEO, 20000)
    rep.setsockopt(zmq.LINGER, 5000)
    rep.bind(sys.argv[1])
    request = rep.recv()
    rep.send_multipart([request, os.readlink("/proc/self/ns/net").encode()])
"""


def test_pathname_ipc_sockets_work_across_namespaces(netns_pair: NetnsPair, short_tmp: Path) -> None:
    """The broker in the mesh namespace, in-process services and tests talking to it over ipc://."""
    endpoint = f"ipc://{short_tmp / 'rep.sock'}"
    rep = spawn_in(netns_pair.mesh_ns, [sys.executable, "-c", REP, endpoint], None, short_tmp / "rep.log")
    request = secrets.token_hex(8).encode()
    # REQ connects before REP binds: ZeroMQ retries the ipc connect until it does (the deadline is RCVTIMEO).
    with zmq.Context() as context, context.socket(zmq.REQ) as req:
        req.setsockopt(zmq.RCVTIMEO, 20000)
        req.setsockopt(zmq.SNDTIMEO, 20000)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        req.send(request)
        echoed, their_netns = req.recv_multipart()
    assert rep.wait(10) == 0, (short_tmp / "rep.log").read_text()
    assert echoed == request
    mesh_netns = f"net:[{os.stat(f'/run/netns/{netns_pair.mesh_ns}').st_ino}]"
    assert their_netns.decode() == mesh_netns != os.readlink("/proc/self/ns/net")


LINGERER = """
import signal, socket, sys
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.create_server(("127.0.0.1", int(sys.argv[2])))  # listening means: ready
signal.pause()
"""


def test_teardown_leaves_nothing_even_after_a_failure(short_tmp: Path) -> None:
    """Processes left running are stopped (SIGKILL for one that ignores SIGTERM), the veth and
    both namespaces are gone."""
    require_root()
    pair = NetnsPair()
    with pytest.raises(RuntimeError, match="the test failed"), pair:
        assert {pair.mesh_ns, pair.device_ns} <= namespaces()
        polite = spawn_in(pair.mesh_ns, [sys.executable, "-c", LINGERER, "polite", "7001"], None, short_tmp / "a")
        stubborn = spawn_in(pair.device_ns, [sys.executable, "-c", LINGERER, "stubborn", "7002"], None,
                            short_tmp / "b")
        wait_tcp(pair.mesh_ns, "127.0.0.1", 7001, timeout=10)
        wait_tcp(pair.device_ns, "127.0.0.1", 7002, timeout=10)  # SIGTERM is ignored by now
        raise RuntimeError("the test failed")
    assert (polite.wait(10), stubborn.wait(10)) == (-signal.SIGTERM, -signal.SIGKILL)
    assert not {pair.mesh_ns, pair.device_ns} & namespaces()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert pair.mesh_if not in links and pair.device_if not in links
    pair.close()  # again: harmless


@pytest.mark.parametrize("side", ["mesh_ns", "device_ns"])
def test_the_project_imports_inside_a_namespace(netns_pair: NetnsPair, side: str) -> None:
    """The venv's interpreter, from the repository: what ``python -m services.broker`` needs."""
    done = run_in(getattr(netns_pair, side), [sys.executable, "-c", "import shared; print(shared.__file__)"],
                  timeout=60)
    assert Path(done.stdout.strip()) == REPO / "shared" / "__init__.py"

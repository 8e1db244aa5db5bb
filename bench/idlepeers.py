"""Idle mesh peers for the broker's growth curve (issue 18): connected, registered, heartbeating.

``python -m bench.idlepeers <endpoint> <first> <count>`` (with ``CURVEMESH_HOME`` set) opens one
CURVE DEALER per identity ``idle<first>`` .. ``idle<first + count - 1>`` (``service`` certificates the
bench provisions, see :func:`idle_names`), registers each under its own name (so each is a peer the
broker routes to, not just an open socket), prints ``ready`` once every registration is answered,
then sends each peer's ``hb`` every heartbeat interval, as a runtime peer does, and reads (and drops)
whatever the broker sends, until SIGTERM or until its parent is gone. A refused registration or
one not answered within 60 s is an error (exit status 2).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import msgpack
import zmq

from shared import MeshHome

from .wire import IDLE_POLL_MS, curve_client, load_pair, orphaned, server_key, unpack

_REGISTER_TIMEOUT_S = 60.0
#: The bench mesh.toml's heartbeat interval (bench/harness.py): each idle peer beats this often.
HEARTBEAT_S = 1.0
_HEARTBEAT = msgpack.packb({"v": 1, "k": "hb"})


def idle_names(first: int, count: int) -> list[str]:
    """The identities of idle peers ``first`` .. ``first + count - 1``."""
    return [f"idle{i:03d}" for i in range(first, first + count)]


def _register_all(socks: dict[str, zmq.Socket[bytes]]) -> None:
    for name, sock in socks.items():
        sock.send_multipart([msgpack.packb({"v": 1, "k": "reg", "id": 1, "name": name})])
    waiting = set(socks)
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    by_sock = {sock: name for name, sock in socks.items()}
    deadline = time.monotonic() + _REGISTER_TIMEOUT_S
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SystemExit(f"idlepeers: {len(waiting)} registration(s) not answered within "
                             f"{_REGISTER_TIMEOUT_S:.0f} s")
        for sock, _ in poller.poll(int(remaining * 1000) + 1):
            header = unpack(sock.recv_multipart()[0])
            if header.get("k") == "hb":
                continue
            if header.get("k") != "rep" or header.get("id") != 1:
                raise SystemExit(f"idlepeers: registration of {by_sock[sock]} refused: "
                                 f"{header.get('code')} {header.get('msg')}")
            waiting.discard(by_sock[sock])


def _idle(socks: dict[str, zmq.Socket[bytes]], parent: int) -> None:
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    next_beat = time.monotonic() + HEARTBEAT_S
    while not orphaned(parent):
        timeout = max(0.0, min(next_beat - time.monotonic(), IDLE_POLL_MS / 1000))
        for sock, _ in poller.poll(int(timeout * 1000)):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
        if time.monotonic() >= next_beat:
            for sock in socks.values():
                sock.send_multipart([_HEARTBEAT], zmq.NOBLOCK)
            # After a pause (the bench freezes us while other setups run) beat once, not a burst.
            next_beat = max(next_beat + HEARTBEAT_S, time.monotonic())


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring for the arguments."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parent = os.getppid()
    endpoint, first, count = argv[0], int(argv[1]), int(argv[2])
    home = MeshHome.from_env()
    broker = server_key(home, "broker")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        socks = {name: curve_client(context, load_pair(home, name), broker, endpoint)
                 for name in idle_names(first, count)}
        _register_all(socks)
        print("ready", flush=True)
        _idle(socks, parent)
    finally:
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The raw pyzmq echo peer, one process, the same echo code for every setup.

``python -m bench.echo serve <endpoint>``: the direct baseline. A CURVE
ROUTER (server key: the ``echo`` identity) with a minimal ZAP handler that
admits the allow-listed keys; the bench client connects straight to it.

``python -m bench.echo connect <endpoint> <server-name>``: a DEALER connecting
as ``echo`` to a broker (the minimal forwarder or the full broker, pinned by
``<server-name>``'s key), registering as ``echo``, answering ``echo.echo``.

Either way each request's header is decoded and a ``rep`` header is encoded;
the body frame is sent back untouched. Prints ``ready`` on stdout when it can
take requests; exits when its parent is gone or on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

import msgpack
import zmq

from shared import MeshHome

from .wire import (
    BATCH,
    IDLE_POLL_MS,
    MiniZap,
    allow_list,
    curve_client,
    curve_server,
    load_pair,
    orphaned,
    reply_header,
    server_key,
    unpack,
)

_REGISTER_TIMEOUT_MS = 30_000


def _register(sock: zmq.Socket[bytes]) -> None:
    """Register as ``echo``; libzmq queues the message until the connection is up."""
    sock.send_multipart([msgpack.packb({"v": 1, "k": "reg", "id": 1, "name": "echo"})])
    sock.rcvtimeo = _REGISTER_TIMEOUT_MS
    while True:
        try:
            frames = sock.recv_multipart()
        except zmq.Again:
            raise SystemExit("echo: no answer to registration within 30 s") from None
        header = unpack(frames[0])
        if header.get("k") == "hb":
            continue
        if header.get("k") != "rep" or header.get("id") != 1:
            raise SystemExit(f"echo: registration refused: {header.get('code')} {header.get('msg')}")
        return


def echo_loop(sock: zmq.Socket[bytes], routed: bool, parent: int) -> None:
    """Answer every ``req`` with its body until the parent process goes away."""
    head = 1 if routed else 0
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        if not sock.poll(IDLE_POLL_MS):
            if orphaned(parent):
                return
            continue
        for _ in range(BATCH):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            header = unpack(frames[head].bytes)
            if header.get("k") != "req":
                continue  # heartbeats and anything else: nothing to answer.
            out: list[zmq.Frame | bytes] = [reply_header(header["id"]), *frames[head + 1:]]
            if routed:
                out.insert(0, frames[0])
            send(out, copy=False)


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring for the arguments."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    parent = os.getppid()
    mode, endpoint = argv[0], argv[1]
    home = MeshHome.from_env()
    pair = load_pair(home, "echo")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    zap: MiniZap | None = None
    try:
        if mode == "serve":
            zap = MiniZap(context, allow_list(home))
            zap.start()
            sock = curve_server(context, pair, endpoint)
        else:
            sock = curve_client(context, pair, server_key(home, argv[2]), endpoint)
            _register(sock)
        print("ready", flush=True)
        echo_loop(sock, mode == "serve", parent)
        sock.close(linger=0)
    finally:
        if zap is not None:
            zap.stop()
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

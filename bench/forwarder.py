"""The minimal forwarding broker: the baseline the full broker is held to.

``python -m bench.forwarder <endpoint>`` (with ``CURVEMESH_HOME`` set). One
CURVE ROUTER (the broker's keypair) with a ZAP handler in its own context,
admitting the allow-listed keys, and a synchronous poll loop shaped like
``services.broker.core.Broker.run``: drain the socket in non-blocking batches
of zero-copy frames; per message read the sender's ``User-Id`` from the frame
metadata, decode the msgpack header, re-encode it with the sender stamped and
forward the body frame untouched.

It does nothing else: no validation, ACL, rate limit, liveness, deadlines,
counters or audit. The only state is what routing needs: registered service
name -> routing id, and broker id -> (caller routing id, caller's id) for the
requests in flight. Prints ``ready`` once bound.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys

import msgpack
import zmq

from shared import MeshHome

from .wire import BATCH, IDLE_POLL_MS, MiniZap, allow_list, curve_server, load_pair, orphaned


def forward_loop(router: zmq.Socket[bytes], parent: int) -> None:
    """Route requests to registered services and replies back to their callers."""
    services: dict[str, bytes] = {}
    in_flight: dict[int, tuple[bytes, int]] = {}
    ids = itertools.count(1)
    recv, send = router.recv_multipart, router.send_multipart
    packb, unpackb = msgpack.packb, msgpack.unpackb
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    while True:
        if not poller.poll(IDLE_POLL_MS):
            if orphaned(parent):
                return
            continue
        for _ in range(BATCH):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            rid = frames[0].bytes
            header_frame = frames[1]
            sender = header_frame.get("User-Id")
            header = unpackb(header_frame.bytes, raw=False)
            kind = header["k"]
            if kind == "req":
                service = services.get(header["to"].partition(".")[0])
                if service is None:
                    send([rid, packb({"v": 1, "k": "err", "id": header["id"], "code": "UNAVAILABLE",
                                      "msg": "not registered", "from": "mesh"})], zmq.NOBLOCK)
                    continue
                broker_id = next(ids)
                in_flight[broker_id] = (rid, header["id"])
                header["id"] = broker_id
                header["from"] = sender
                send([service, packb(header), *frames[2:]], zmq.NOBLOCK, copy=False)
            elif kind in ("rep", "err"):
                entry = in_flight.pop(header["id"], None)
                if entry is None:
                    continue
                header["id"] = entry[1]
                header["from"] = sender
                send([entry[0], packb(header), *frames[2:]], zmq.NOBLOCK, copy=False)
            elif kind == "reg":
                services[header["name"]] = rid
                send([rid, packb({"v": 1, "k": "rep", "id": header["id"], "from": "mesh"})], zmq.NOBLOCK)


def main(argv: list[str]) -> int:
    """Entry point: ``python -m bench.forwarder <endpoint>``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # let a profiler wrapper write its output
    parent = os.getppid()
    home = MeshHome.from_env()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    zap = MiniZap(context, allow_list(home))
    try:
        zap.start()
        router = curve_server(context, load_pair(home, "broker"), argv[0])
        print("ready", flush=True)
        try:
            forward_loop(router, parent)
        finally:
            router.close(linger=0)
    finally:
        zap.stop()
        context.destroy(linger=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

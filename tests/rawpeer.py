"""A raw pyzmq peer for attack tests: speaks (or breaks) the wire protocol by hand."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from shared import KeyPair, decode_delivered, encode_header


class RawPeer:
    """A DEALER with full control over frames, routing id and CURVE settings."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, *, keypair: KeyPair | None,
                 broker_key: bytes | None, routing_id: bytes | None = None,
                 mechanism: str = "curve") -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.linger = 0
        if routing_id is not None:
            self.sock.routing_id = routing_id
        if mechanism == "curve":
            assert keypair is not None and broker_key is not None
            self.sock.curve_serverkey = broker_key
            self.sock.curve_publickey = keypair.certificate.public_key
            self.sock.curve_secretkey = keypair.secret_key
        elif mechanism == "plain":
            self.sock.plain_username = b"admin"
            self.sock.plain_password = b"admin"
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(endpoint)

    async def events(self, wanted: set[int], timeout: float) -> set[int]:
        """Monitor events seen until one in ``wanted`` arrives or ``timeout`` passes."""

        seen: set[int] = set()
        poller = zmq.asyncio.Poller()
        poller.register(self.monitor, zmq.POLLIN)
        end = time.monotonic() + timeout
        while not seen & wanted:
            left = end - time.monotonic()
            if left <= 0 or not await poller.poll(left * 1000):
                break
            seen.add(int(parse_monitor_message(await self.monitor.recv_multipart())["event"]))
        return seen

    async def send(self, header: dict[str, Any] | bytes, body: Any = None) -> None:
        frames = [header if isinstance(header, bytes) else encode_header(header)]
        if body is not None:
            frames.append(body if isinstance(body, bytes) else msgpack.packb(body))
        await self.sock.send_multipart(frames)

    async def recv(self, timeout: float, skip_heartbeats: bool = True) -> tuple[dict[str, Any], bytes | None]:
        """The next message (heartbeats skipped); raise TimeoutError after ``timeout`` seconds."""
        poller = zmq.asyncio.Poller()
        poller.register(self.sock, zmq.POLLIN)
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not await poller.poll(left * 1000):
                raise TimeoutError("no message")
            frames = await self.sock.recv_multipart()
            header = decode_delivered(frames[0], 65536)
            if skip_heartbeats and header["k"] == "hb":
                continue
            return header, frames[1] if len(frames) > 1 else None

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)

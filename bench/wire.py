"""Raw pyzmq building blocks shared by every bench process.

Keys come from the bench's provisioned mesh home; the sockets are plain
pyzmq CURVE sockets; :class:`MiniZap` is the smallest ZAP handler that still
fails closed (a key not on the allow-list is refused). The envelope helpers
build the same msgpack headers the mesh protocol uses, so the direct echo,
the minimal forwarder and the full broker all see identical traffic.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Final

import msgpack
import zmq
import zmq.utils.z85

from shared import KeyPair, MeshHome, certs

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: The broker's default ZAP domain; the minimal forwarder and direct echo use it too.
DOMAIN: Final = "curvemesh"
#: Messages drained per poll wake-up, as in services/broker/core.py.
BATCH: Final = 256
HWM: Final = 10_000
#: How often an idle bench child checks whether its parent is still alive.
IDLE_POLL_MS: Final = 500
TARGET: Final = "echo.echo"
#: Identities the bench provisions: the raw echo peer, the client, the runtime echo service.
IDENTITIES: Final = {"echo": "service", "bench": "operator", "rtecho": "service"}


def body_value(size: int = 100) -> dict[str, bytes]:
    """The request body as a Python value: ``{"data": <bin>}`` encoding to exactly ``size`` bytes."""
    value = {"data": b"\xa5" * (size - len(msgpack.packb({"data": b""})))}
    if len(msgpack.packb(value)) != size:
        raise ValueError(f"cannot build a {size}-byte body")
    return value


def body_frame(size: int = 100) -> bytes:
    """The request body frame: a valid msgpack map of exactly ``size`` bytes."""
    data: bytes = msgpack.packb(body_value(size), use_bin_type=True)
    return data


def request_header(request_id: int, target: str = TARGET, ttl: int = 10_000) -> bytes:
    """A caller's ``req`` header."""
    data: bytes = msgpack.packb({"v": 1, "k": "req", "id": request_id, "to": target, "ttl": ttl})
    return data


def reply_header(request_id: int) -> bytes:
    """A service's ``rep`` header."""
    data: bytes = msgpack.packb({"v": 1, "k": "rep", "id": request_id})
    return data


def unpack(data: bytes) -> Any:
    """Decode a header frame (peers trust what they receive in the bench)."""
    return msgpack.unpackb(data, raw=False)


def load_pair(home: MeshHome, name: str) -> KeyPair:
    """The keypair of identity ``name`` in ``home/keys``."""
    return certs.load_keypair(home.secret_key_path(name))


def server_key(home: MeshHome, name: str) -> bytes:
    """The Z85 public key of ``name`` (a server's key, pinned by its clients)."""
    return certs.load_certificate(home.public_key_path(name)).public_key


def allow_list(home: MeshHome) -> dict[bytes, str]:
    """Raw 32-byte public key -> identity name, for every certificate in ``certs/allowed``."""
    allowed: dict[bytes, str] = {}
    for path in sorted((home.certs / "allowed").glob("*.key")):
        cert = certs.load_certificate(path)
        allowed[zmq.utils.z85.decode(cert.public_key)] = cert.name
    return allowed


class MiniZap:
    """A ZAP handler thread in ``context``: CURVE only, our domain, allow-listed keys only.

    The user id of an admitted peer is its identity name (``frame.get("User-Id")``).
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], allowed: dict[bytes, str]) -> None:
        self._context = context
        self._allowed = dict(allowed)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mini-zap", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start and wait until the handler is bound; raise if it is not."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the ZAP handler did not start")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sock = self._context.socket(zmq.REP)
        sock.linger = 0
        sock.bind(ZAP_ENDPOINT)
        self._ready.set()
        domain = DOMAIN.encode()
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                frames = sock.recv_multipart()
                version, request_id, req_domain, _address, _identity, mechanism = frames[:6]
                name = self._allowed.get(frames[6]) if len(frames) == 7 else None
                if version == b"1.0" and req_domain == domain and mechanism == b"CURVE" and name:
                    sock.send_multipart([b"1.0", request_id, b"200", b"OK", name.encode(), b""])
                else:
                    sock.send_multipart([b"1.0", request_id, b"400", b"refused", b"", b""])
        finally:
            sock.close()


def curve_server(context: zmq.Context[zmq.Socket[bytes]], pair: KeyPair, endpoint: str) -> zmq.Socket[bytes]:
    """A bound CURVE ROUTER that asks ZAP (domain :data:`DOMAIN`, enforced) about every peer."""
    sock = context.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_secretkey = pair.secret_key
    sock.curve_publickey = pair.certificate.public_key
    sock.zap_domain = DOMAIN.encode()
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.sndhwm = sock.rcvhwm = HWM
    sock.linger = 0
    sock.bind(endpoint)
    return sock


def curve_client(context: zmq.Context[zmq.Socket[bytes]], pair: KeyPair, server: bytes, endpoint: str,
                 recv_timeout_ms: int = 10_000) -> zmq.Socket[bytes]:
    """A connected CURVE DEALER pinned to ``server``; every receive times out."""
    sock = context.socket(zmq.DEALER)
    sock.curve_serverkey = server
    sock.curve_publickey = pair.certificate.public_key
    sock.curve_secretkey = pair.secret_key
    sock.sndhwm = sock.rcvhwm = HWM
    sock.rcvtimeo = recv_timeout_ms
    sock.sndtimeo = recv_timeout_ms
    sock.linger = 0
    sock.connect(endpoint)
    return sock


def ipc(home: MeshHome, name: str) -> str:
    """An ipc endpoint in the home's run directory (short, below the unix socket limit)."""
    path = Path(home.run) / f"{name}.sock"
    if len(str(path).encode()) > 107:
        raise ValueError(f"ipc path too long: {path}")
    return f"ipc://{path}"


def orphaned(parent: int) -> bool:
    """True once the process that started us is gone (we were re-parented)."""
    return os.getppid() != parent

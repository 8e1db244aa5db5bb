"""The broker's ZAP handler: a pure decision function and a thread adapter.

:func:`decide` is a plain function over the ZAP request frames and an
immutable allow-list snapshot; it does no I/O. :class:`ZapHandler` serves it
on ``inproc://zeromq.zap.01`` inside the broker's own zmq Context, answers
from memory only, and never dies on an exception: a bug answers 500 and is
logged, so the peer is refused rather than admitted.
"""

from __future__ import annotations

import collections
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import structlog
import zmq

from shared import Certificate

from .connections import new_token

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
_VERSION: Final = b"1.0"
log = structlog.get_logger("broker.zap")


@dataclass(frozen=True, slots=True)
class ZapDecision:
    """The reply frames to send, and the raw key of a refused unknown peer (if any)."""

    reply: list[bytes]
    unknown_key: bytes | None = None
    address: str = ""


def _metadata(**props: bytes) -> bytes:
    # ZAP metadata is a ZMTP property list: 1-byte name length, name,
    # 4-byte big-endian value length, value. libzmq exposes each property
    # on every message of the connection (zmq_msg_gets).
    out = bytearray()
    for name, value in props.items():
        key = name.replace("_", "-").encode("ascii")
        out += bytes([len(key)]) + key + struct.pack(">I", len(value)) + value
    return bytes(out)


def decide(frames: list[bytes], domain: bytes, allowed: Mapping[bytes, Certificate],
           token: str | None = None) -> ZapDecision:
    """Answer one ZAP request.

    ``allowed`` maps raw 32-byte public keys to certificates. Admits only the
    CURVE mechanism, only our domain, only a key on the allow-list; the user
    id is the certificate's name and the metadata carry its role and Z85 key
    (``X-Role``, ``X-Key``) so the broker can re-check the key on every message,
    and ``X-Conn``, the connection token (``token``, or a fresh random one when
    None), so the broker can tell this connection from any later one that
    reuses its routing id (see :mod:`.connections`).
    """
    if len(frames) < 6:
        return ZapDecision([_VERSION, frames[1] if len(frames) > 1 else b"", b"500", b"malformed", b"", b""])
    version, request_id, req_domain, address, _identity, mechanism = frames[:6]
    credentials = frames[6:]

    def refuse(code: bytes, text: bytes) -> list[bytes]:
        return [_VERSION, request_id, code, text, b"", b""]

    if version != _VERSION:
        return ZapDecision(refuse(b"500", b"unsupported ZAP version"))
    if req_domain != domain:
        return ZapDecision(refuse(b"400", b"wrong domain"))
    if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
        return ZapDecision(refuse(b"400", b"CURVE required"))
    key = credentials[0]
    cert = allowed.get(key)
    if cert is None:
        return ZapDecision(refuse(b"400", b"unknown certificate"), key, address.decode("utf-8", "replace"))
    conn = (new_token() if token is None else token).encode("ascii")
    meta = _metadata(X_Role=cert.role.encode(), X_Key=cert.public_key, X_Conn=conn)
    return ZapDecision([_VERSION, request_id, b"200", b"OK", cert.name.encode(), meta])


class ZapHandler:
    """Serves :func:`decide` from a thread inside ``context``.

    ``snapshot`` is called for every request and must return the current
    raw-key allow-list without blocking (an attribute read). Refused unknown
    keys are queued in :attr:`unknown` (bounded) for the broker loop to record.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], domain: str,
                 snapshot: Callable[[], Mapping[bytes, Certificate]]) -> None:
        self._context = context
        self._domain = domain.encode()
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.unknown: collections.deque[tuple[bytes, str]] = collections.deque(maxlen=4096)
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    def start(self, timeout: float = 5.0) -> None:
        """Start the thread and wait until it is bound; raise if it is not."""
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError("the ZAP handler did not start; refusing to run without it")

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        sock = self._context.socket(zmq.ROUTER)
        sock.linger = 0
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            sock.close()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                msg = sock.recv_multipart()
                # A ROUTER-side ZAP socket sees [peer-id, empty, ...request].
                route, request = msg[:2], msg[2:]
                try:
                    decision = decide(request, self._domain, self._snapshot())
                except Exception:
                    self.errors += 1
                    log.exception("zap_handler_error")
                    rid = request[1] if len(request) > 1 else b""
                    decision = ZapDecision([_VERSION, rid, b"500", b"internal error", b"", b""])
                if decision.unknown_key is not None:
                    self.unknown.append((decision.unknown_key, decision.address))
                sock.send_multipart(route + decision.reply)
        finally:
            sock.close()

"""The broker: one CURVE ROUTER socket, identity stamping, ACL, limits, routing.

The hot path (:meth:`Broker._handle`) is a synchronous poll loop that drains
the socket in batches: per message it reads the peer's key from the ZAP
metadata (revocation check), decodes and validates the small header frame,
applies the rate limit and the ACL, and forwards the body frame untouched.
Bodies are never decoded here except for the broker's own ``mesh.*`` methods.

Replies are routed to the connection the request came from, remembered in the
in-flight table under a broker-chosen random id; a reply is accepted only from
the connection the request was forwarded to. State is bound to a connection,
not to its routing id: each message carries its connection's token (``X-Conn``,
from ZAP), and a routing id that is not libzmq's shape, or that shows up with
another connection's token, is refused (see :mod:`.connections`).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
import zmq
import zmq.utils.z85

from shared import (
    PROTOCOL_VERSION,
    BadRequest,
    Certificate,
    Forbidden,
    MeshConfig,
    MeshError,
    MeshHome,
    RateLimited,
    Spool,
    TokenBucket,
    certs,
    compile_grant,
    config_files,
    decode_header,
    encode_header,
    error_text,
)
from shared.files import write_atomic

from .certstore import CertStore
from .connections import CONN_PROPERTY, Admission, EndedConnections, RequestIds, seed_routing_id_counter
from .denials import DenyLog, caller_message
from .routing import Routing
from .service import Introspection
from .state import Counters, InFlight, Peer, Registration
from .upkeep import HANDSHAKE_EVENTS, Upkeep
from .zap import ZapHandler

log = structlog.get_logger("broker")

_TICK: Final = 0.02
_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST: Final = int(zmq.NOBLOCK)
_CURVE_OVERHEAD: Final = 64
_BATCH: Final = 256
#: The digest of the configuration file recorded at the last start, under the home's spool dir.
CONFIG_DIGEST_FILE: Final = "config.sha256"


class Broker(Admission, Routing, Upkeep):
    """The mesh broker. ``bind()`` then ``run()`` (blocking) until ``stop()``."""

    def __init__(self, config: MeshConfig, home: MeshHome, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 config_file: Path | None = None) -> None:
        self.config = config
        #: The files the configuration was read from, base first (audited at start as ``mesh.config``).
        self.config_files = (config_file,) if config_file is not None else config_files(home.root)
        self.cfg = config.broker
        self.home = home
        self.clock = clock
        self.wall = wall
        home.ensure()
        self.keypair = certs.load_keypair(home.secret_key_path("broker"))
        self.store = CertStore(home.certs, self.cfg.pending_max, self.cfg.pending_per_address_per_minute)
        self.spool = Spool(home.spool / "broker-audit.spool", self.cfg.spool_max_records)
        # Before the context makes its first ROUTER socket (ZAP's, then the broker's).
        seed_routing_id_counter()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = ZapHandler(self.context, self.cfg.zap_domain, lambda: self.store.snapshot.by_raw)
        self.endpoints: list[str] = []
        self.peers: dict[bytes, Peer] = {}
        self.services: dict[str, Registration] = {}
        self.in_flight: dict[int, InFlight] = {}
        self.deadlines: list[tuple[float, int]] = []
        self.counters: dict[str, Counters] = {}
        self.buckets: dict[str, TokenBucket] = {}
        #: Connections dropped since start (bounded): told to reconnect if they speak again
        #: after expiry, and their routing ids refused to any other connection.
        self.ended = EndedConnections()
        self._reported_totals: dict[str, int] = {}
        self.handshake_failures: dict[str, int] = dict.fromkeys(HANDSHAKE_EVENTS.values(), 0)
        self._handshake_reported = 0
        self.totals = {"undeliverable": 0, "bad_frames": 0, "expired": 0, "stray_replies": 0,
                       "revoked_refused": 0, "custom_routing_id_refused": 0, "internal_errors": 0,
                       "expired_refused": 0, "audit_ship_failures": 0}
        self.audit_shipped = 0  # spooled audit records audit has acknowledged
        self.started = wall()
        self._ids = RequestIds()
        self._stop = threading.Event()
        self._by_text = self.store.snapshot.by_text
        self.introspection = Introspection(self)
        self.denials = DenyLog()
        self._kinds: dict[str, Callable[[Peer, dict[str, Any], zmq.Frame | None, float], None]] = {
            "req": self._on_request, "rep": self._on_reply, "err": self._on_reply,
            "pub": self._on_publish, "sub": self._on_subscribe, "unsub": self._on_unsubscribe,
            "reg": self._on_register, "bye": self._on_bye, "hb": self._on_heartbeat,
        }
        self._hb_frame = encode_header({"v": PROTOCOL_VERSION, "k": "hb"})
        self.router: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None

    # -- setup --------------------------------------------------------------

    def bind(self) -> None:
        """Load the allow-list, start ZAP, bind every endpoint. Raises if anything is off."""
        self.audit_config()
        self.reload_certs("start")
        self.zap.start()
        router = self.context.socket(zmq.ROUTER)
        router.curve_server = True
        router.curve_secretkey = self.keypair.secret_key
        router.curve_publickey = self.keypair.certificate.public_key
        router.zap_domain = self.cfg.zap_domain.encode()
        router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # MAXMSGSIZE applies to the encrypted frame; allow for CURVE's overhead so a
        # plaintext frame of exactly max_message_bytes still passes.
        router.maxmsgsize = self.cfg.max_message_bytes + _CURVE_OVERHEAD
        router.sndhwm = router.rcvhwm = self.cfg.high_water_mark
        router.linger = 0
        self.monitor = router.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_DISCONNECTED)
        self._claim_ipc()
        for endpoint in (self.home.broker_endpoint, *self.cfg.tcp_endpoints):
            router.bind(endpoint)
            self.endpoints.append(router.get_string(zmq.LAST_ENDPOINT))
        os.chmod(self.home.broker_socket, 0o600)
        self.router = router
        log.info("broker_listening", endpoints=self.endpoints,
                 fingerprint=self.keypair.certificate.fingerprint)

    def _claim_ipc(self) -> None:
        path = self.home.broker_socket
        if not path.exists():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # a stale socket left by a killed broker.
            return
        finally:
            probe.close()
        raise RuntimeError(f"another broker is already listening on {path}")

    # -- main loop ------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; safe from any thread or a signal handler."""
        self._stop.set()

    def run(self) -> None:
        assert self.router is not None and self.monitor is not None
        router, monitor = self.router, self.monitor
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        next_tick = self.clock()
        try:
            while not self._stop.is_set():
                # Round up: pyzmq truncates a float timeout, and a 0 ms poll before each
                # tick would spin the loop on a core it shares with the services.
                timeout_ms = math.ceil(max(0.0, next_tick - self.clock()) * 1000)
                ready = dict(poller.poll(timeout_ms))
                if router in ready:
                    self._drain(router)
                if monitor in ready:
                    self._on_monitor(monitor)
                now = self.clock()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + _TICK
        finally:
            self.close()

    def _drain(self, router: zmq.Socket[bytes]) -> None:
        now = self.clock()
        recv = router.recv_multipart
        handle = self._handle
        for _ in range(_BATCH):
            try:
                frames = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                handle(frames, now)
            except Exception:  # a bug on one message must not stop the broker.
                # Fail closed: the message is answered INTERNAL, counted and logged.
                self.totals["internal_errors"] += 1
                log.exception("message_handling_failed")
                if len(frames) > 1:
                    try:
                        self._refuse(frames[0].bytes, frames[1], "INTERNAL", "internal error")
                    except zmq.ZMQError:
                        log.exception("internal_error_not_answered")

    def _handle(self, frames: list[zmq.Frame], now: float) -> None:
        header_frame = frames[1] if len(frames) > 1 else frames[0]
        rid = frames[0].bytes
        try:
            get = header_frame.get
            cert = self._by_text.get(get("X-Key"))
            conn = get(CONN_PROPERTY)
        except zmq.ZMQError:  # no ZAP metadata on the message: never admit it.
            cert = None
        if cert is None:
            # Admitted once, revoked since: refuse on this live connection (invariant 4).
            self.totals["revoked_refused"] += 1
            self._refuse(rid, header_frame, "UNAUTHENTICATED", "certificate revoked")
            return
        peer = self.peers.get(rid)
        if peer is None or peer.conn != conn:
            admitted = self._admit(rid, conn, cert, header_frame, now)
            if admitted is None:
                return
            peer = admitted
        elif peer.cert is not cert:
            # A reload made new certificate objects; the same certificate keeps its peer
            # (and its registration), a different one on this routing id starts afresh.
            if peer.cert == cert:
                peer.cert = cert
            else:
                self._drop_peer(peer, "certificate changed")
                peer = self._new_peer(rid, conn, cert, now)
        peer.last_seen = now
        counters = peer.counters
        counters.msgs_in += 1
        if not 2 <= len(frames) <= 3:
            self.totals["bad_frames"] += 1
            self._fail(peer, 0, BadRequest("a message is a header frame and at most one body frame"))
            return
        try:
            header = decode_header(header_frame.bytes, self.cfg.max_header_bytes)
        except BadRequest as exc:
            self.totals["bad_frames"] += 1
            self._fail(peer, 0, exc)
            return
        self._kinds[header["k"]](peer, header, frames[2] if len(frames) == 3 else None, now)

    def _refuse(self, rid: bytes, header_frame: zmq.Frame, code: str, message: str) -> None:
        # Answer with the request's own id when it has one, so the caller fails at once
        # instead of waiting for its timeout; nothing else in the message is used.
        try:
            request_id = decode_header(header_frame.bytes, self.cfg.max_header_bytes).get("id", 0)
        except BadRequest:
            request_id = 0
        self._send(rid, self._error_frame(request_id, code, message))

    def _new_peer(self, rid: bytes, conn: str, cert: Certificate, now: float) -> Peer:
        limit = (self.config.limits.identity.get(cert.name)
                 or self.config.limits.role.get(cert.role) or self.config.limits.default)
        counters = self.counters.setdefault(cert.name, Counters())
        # One bucket per identity, shared by all its connections: opening more
        # connections must not multiply an identity's rate.
        bucket = self.buckets.get(cert.name)
        if bucket is None:
            bucket = self.buckets[cert.name] = TokenBucket(limit.rate, limit.burst, now)
        peer = Peer(rid, conn, cert, compile_grant(self.config.acl, cert.name, cert.role), bucket, counters,
                    now, now)
        self.peers[rid] = peer
        self.ended.forget(rid)
        return peer

    # -- sending --------------------------------------------------------------

    def _send(self, rid: bytes, frames: list[Any]) -> bool:
        """Send without blocking; count what cannot be delivered (peer gone or full)."""
        router = self.router
        assert router is not None
        # Frame by frame with precomputed flags: cheaper than send_multipart. A ROUTER with
        # ROUTER_MANDATORY refuses (EHOSTUNREACH/EAGAIN) on the routing-id frame, before
        # anything of the message is queued.
        send = router.send
        try:
            send(rid, _MORE)
            last = len(frames) - 1
            for index, frame in enumerate(frames):
                send(frame, _MORE if index < last else _LAST)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EHOSTUNREACH, errno.EAGAIN):
                raise
            self.totals["undeliverable"] += 1
            if exc.errno == errno.EHOSTUNREACH:
                # No connection holds this routing id any more: whatever the broker still
                # tracks for it dies now, so a later connection on the id inherits nothing.
                gone = self.peers.get(rid)
                if gone is not None:
                    self._drop_peer(gone, "connection closed")
            return False
        return True

    def _error_frame(self, request_id: int, code: str, message: str) -> list[bytes]:
        return [encode_header({"v": PROTOCOL_VERSION, "k": "err", "id": request_id,
                               "code": code, "msg": error_text(message), "from": "mesh"})]

    def _fail(self, peer: Peer, request_id: int, exc: MeshError) -> None:
        peer.counters.errors += 1
        if self.peers.get(peer.rid) is not peer:
            return  # dropped (revoked or expired) since it asked: it gets nothing more.
        if self._send(peer.rid, self._error_frame(request_id, exc.code, exc.message)):
            peer.counters.msgs_out += 1

    def _ok(self, peer: Peer, request_id: int, body: bytes | None = None) -> None:
        frames: list[bytes] = [encode_header({"v": PROTOCOL_VERSION, "k": "rep", "id": request_id,
                                              "from": "mesh"})]
        if body is not None:
            frames.append(body)
        if self._send(peer.rid, frames):
            peer.counters.msgs_out += 1

    def audit(self, event: str, peer: Peer | None, **details: Any) -> None:
        """Spool an audit record (delivered to the audit service once it accepts them)."""
        record: dict[str, Any] = {"type": event, "time": self.wall()}
        if peer is not None:
            record["actor"] = peer.cert.name
            record["role"] = peer.cert.role
        record.update(details)
        if not self.spool.append(record):
            log.warning("audit_spool_full", dropped=self.spool.dropped)

    def audit_config(self) -> None:
        """Spool a ``mesh.config`` record: the configuration files' SHA-256, the one recorded at the last
        start and whether it changed. The digest is then kept in ``<home>/spool/config.sha256``
        (written atomically, 0600) for the next start. Never stops the broker from starting."""
        state = self.home.spool / CONFIG_DIGEST_FILE
        try:
            previous: str | None = state.read_text("ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            previous = None
        record: dict[str, Any] = {"outcome": "ok", "path": " + ".join(str(p) for p in self.config_files)}
        try:
            digests = [(hashlib.sha256(path.read_bytes()).hexdigest(), path) for path in self.config_files]
            # One file: its own SHA-256 (what `sha256sum mesh.toml` prints). With fragments: the
            # SHA-256 of their sha256sum-style listing, so adding, removing or editing any changes it.
            listing = "".join(f"{d}  {p}\n" for d, p in digests)
            digest: str | None = digests[0][0] if len(digests) == 1 else hashlib.sha256(listing.encode()).hexdigest()
        except OSError as exc:
            digest = None
            record.update(outcome="unreadable", error=exc.strerror or type(exc).__name__)
        record.update(sha256=digest, previous_sha256=previous, changed=digest != previous)
        dropped = self.spool.dropped
        self.audit("mesh.config", None, **record)
        self.spool.sync()
        spooled = self.spool.dropped <= dropped  # not lost to a full spool: else report it again
        if spooled and digest is not None and digest != previous:
            try:
                write_atomic(state, (digest + "\n").encode())
            except OSError as exc:
                log.warning("config_digest_not_saved", error=exc.strerror)

    def _deny(self, peer: Peer, request_id: int, action: str, target: str) -> None:
        peer.counters.denies += 1
        self.audit("mesh.deny", peer, action=action, target=target)
        self.denials.note(peer.cert.name, peer.cert.role, action, target, self.clock())
        self._fail(peer, request_id, Forbidden(caller_message(peer.cert.name, action, target)))

    def _limited(self, peer: Peer, request_id: int, now: float) -> bool:
        if peer.bucket.take(now):
            return False
        peer.counters.rate_limited += 1
        self._fail(peer, request_id, RateLimited("rate limit exceeded; slow down"))
        return True

    def close(self) -> None:
        if self.router is not None:
            self.router.disable_monitor()
            self.router.close(linger=0)
            self.router = None
        if self.monitor is not None:
            self.monitor.close(linger=0)
            self.monitor = None
        self.zap.stop()
        self.spool.close()
        self.context.term()
        try:
            self.home.broker_socket.unlink()
        except FileNotFoundError:
            pass


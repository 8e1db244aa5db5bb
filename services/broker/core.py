"""The broker: one CURVE ROUTER socket, identity stamping, ACL, limits, routing.

:class:`Broker` owns the socket and the loop, and the parts it is composed of. Calls go one way,
from the loop down, and no part knows the broker:

- the hot path (:meth:`Broker._handle`) is a synchronous poll loop that drains the socket in
  batches: per message it reads the peer's key from the ZAP metadata (revocation check), finds
  the connection's peer (:mod:`.connections` for a connection it does not track yet), decodes and
  validates the small header frame and hands the message to :mod:`.routing`, which applies the
  rate limit and the ACL and forwards the body frame untouched. Bodies are never decoded here
  except for the broker's own ``mesh.*`` methods (:mod:`.service`);
- on ticks and socket-monitor events it calls :mod:`.upkeep` (deadlines, liveness, certificate
  reloads through :mod:`.allowlist`, audit reports and the delivery of its audit spool through
  :mod:`.auditing`);
- below them all: :mod:`.outbox` sends (and drops connections found gone), :mod:`.state` keeps
  the tables, :mod:`.auditing` spools audit records;
- beside the loop, one thread of its own: :mod:`.flusher` fsyncs the audit spool, because the loop
  must never wait on the disk (a slow fsync once stopped routing and heartbeats for its duration).

Replies are routed to the connection the request came from, remembered in the in-flight table
under a broker-chosen random id; a reply is accepted only from the connection the request was
forwarded to. State is bound to a connection, not to its routing id: each message carries its
connection's token (``X-Conn``, from ZAP), and a routing id that is not libzmq's shape, or that
shows up with another connection's token, is refused (see :mod:`.connections`).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

import structlog
import zmq

from shared import BadRequest, MeshConfig, MeshHome, Spool, certs, config_files, decode_header

from .allowlist import CertMethods, CertWatch
from .auditing import AuditDelivery, AuditTrail
from .certstore import CertStore
from .configuration import Configuration
from .connections import CONN_PROPERTY, Admission, seed_routing_id_counter
from .devices import DeviceMethods
from .flusher import Flusher
from .outbox import Outbox
from .routing import Routing
from .service import Introspection, MeshService
from .state import MeshState
from .upkeep import Upkeep
from .zap import ZapHandler

log = structlog.get_logger("broker")

_TICK: Final = 0.02
_CURVE_OVERHEAD: Final = 64
_BATCH: Final = 256


class Broker:
    """The mesh broker. ``bind()`` then ``run()`` (blocking) until ``stop()``."""

    def __init__(self, config: MeshConfig, home: MeshHome, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 spool_checkpoint: Callable[[str], None] | None = None) -> None:
        """``spool_checkpoint``: the audit spool's step hook (:class:`shared.Spool`), for tests that
        stall or fail its disk steps."""
        self.cfg = cfg = config.broker
        self.home = home
        self.clock = clock
        home.ensure()
        # The configuration's files are checked (owner, mode) before anything is opened.
        files = config_files(home.root)
        self.keypair = certs.load_keypair(home.secret_key_path("broker"))
        self.store = CertStore(home.certs, cfg.pending_max, cfg.pending_per_address_per_minute)
        spool_path = home.spool / "broker-audit.spool"
        self.spool = (Spool(spool_path, cfg.spool_max_records) if spool_checkpoint is None
                      else Spool(spool_path, cfg.spool_max_records, checkpoint=spool_checkpoint))
        # Before the context makes its first ROUTER socket (ZAP's, then the broker's).
        seed_routing_id_counter()
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.zap = ZapHandler(self.context, cfg.zap_domain, lambda: self.store.snapshot.by_raw)
        self.endpoints: list[str] = []
        self._stop = threading.Event()
        self.router: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None

        # The parts, each given only what it calls; none of them is given the broker.
        self.state = state = MeshState(config)
        self.flusher = Flusher()
        self.trail = trail = AuditTrail(self.spool, self.flusher, wall)
        self.outbox = outbox = Outbox(state, cfg.max_header_bytes)
        self.admission = Admission(state, outbox)
        self.configuration = Configuration(home, files, state, trail, clock)
        self.certwatch = watch = CertWatch(self.store, state, outbox, trail, self.zap.unknown, wall,
                                           cfg.cert_reload_interval_ms / 1000.0)
        self.delivery = delivery = AuditDelivery(state, outbox, self.spool, cfg, clock)
        self.upkeep = Upkeep(state, outbox, watch, delivery, trail, cfg)
        self.mesh = MeshService(
            Introspection(state=state, store=self.store, spool=self.spool, delivery=delivery, flusher=self.flusher,
                          zap=self.zap, certificate=self.keypair.certificate, endpoints=self.endpoints,
                          clock=clock, wall=wall),
            CertMethods(self.store, watch, trail),
            DeviceMethods(self.store, watch, state, trail, self.endpoints, clock, wall),
            self.configuration,
            max_body=cfg.max_message_bytes)
        self.routing = Routing(state, outbox, trail, self.store, self.mesh, delivery, cfg, clock)
        self._peers = state.peers
        self._totals = state.totals
        self._kinds = self.routing.kinds

    # -- setup --------------------------------------------------------------

    def bind(self) -> None:
        """Load the allow-list, start ZAP, bind every endpoint. Raises if anything is off."""
        self.audit_config()
        self.certwatch.reload("start")
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
        self.router = self.outbox.router = router
        log.info("broker_listening", endpoints=self.endpoints,
                 fingerprint=self.keypair.certificate.fingerprint)

    def audit_config(self) -> str | None:
        """Spool the ``mesh.config`` record of this start (see :func:`.configuration.record_config_at_start`)."""
        return self.configuration.record_start()

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
        """Serve until :meth:`stop`, then close everything (see :meth:`close`)."""
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
                    self.upkeep.on_monitor(monitor)
                now = self.clock()
                if now >= next_tick:
                    self.upkeep.tick(now)
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
                self._totals["internal_errors"] += 1
                log.exception("message_handling_failed")
                if len(frames) > 1:
                    try:
                        self.outbox.refuse(frames[0].bytes, frames[1], "INTERNAL", "internal error")
                    except zmq.ZMQError:
                        log.exception("internal_error_not_answered")

    def _handle(self, frames: list[zmq.Frame], now: float) -> None:
        header_frame = frames[1] if len(frames) > 1 else frames[0]
        rid = frames[0].bytes
        try:
            # Metadata properties are text; pyzmq's stubs type every property as int | str.
            get = header_frame.get
            cert = self.certwatch.by_text.get(get("X-Key"))  # type: ignore[arg-type]
            conn: str = get(CONN_PROPERTY)  # type: ignore[assignment]
        except zmq.ZMQError:  # no ZAP metadata on the message: never admit it.
            cert = None
        if cert is None:
            # Admitted once, revoked since: refuse on this live connection (invariant 4).
            self._totals["revoked_refused"] += 1
            self.outbox.refuse(rid, header_frame, "UNAUTHENTICATED", "certificate revoked")
            return
        peer = self._peers.get(rid)
        if peer is None or peer.conn != conn:
            admitted = self.admission.admit(rid, conn, cert, header_frame, now)
            if admitted is None:
                return
            peer = admitted
        elif peer.cert is not cert:
            # A reload made new certificate objects: the same certificate keeps its peer.
            peer = self.admission.rekeyed(peer, cert, now)
        peer.last_seen = now
        counters = peer.counters
        counters.msgs_in += 1
        if not 2 <= len(frames) <= 3:
            self._totals["bad_frames"] += 1
            self.outbox.fail(peer, 0, BadRequest("a message is a header frame and at most one body frame"))
            return
        try:
            header = decode_header(header_frame.bytes, self.cfg.max_header_bytes)
        except BadRequest as exc:
            self._totals["bad_frames"] += 1
            self.outbox.fail(peer, 0, exc)
            return
        self._kinds[header["k"]](peer, header, frames[2] if len(frames) == 3 else None, now)

    def close(self) -> None:
        """Close the sockets, stop ZAP, close the spool and remove the ipc socket file."""
        if self.router is not None:
            self.router.disable_monitor()
            self.router.close(linger=0)
            self.router = self.outbox.router = None
        if self.monitor is not None:
            self.monitor.close(linger=0)
            self.monitor = None
        self.zap.stop()
        self.flusher.close()
        self.spool.close()
        self.context.term()
        try:
            self.home.broker_socket.unlink()
        except FileNotFoundError:
            pass

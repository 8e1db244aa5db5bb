"""The pairing service: devices join the mesh over a PAKE, and operators manage them (docs/pairing.md).

Handlers, by concern:

- ``start``, ``cancel``, ``window`` (here): the pairing window (``meshctl pair start``);
- ``devices.*`` (devices.py): the paired devices (``meshctl devices``).

A window opens the entry point (entry.py) on the host of the broker's first tcp endpoint; a device
that proves it knows the one-time code (SPAKE2 and key confirmation, :mod:`shared.pake`) is put on
the broker's allow-list with role ``device`` (``mesh.devices.enroll``), recorded in pairing's own
SQLCipher database, and told the broker's full public key and endpoints and the audit log's
signing key and latest checkpoint, so it can witness the log from then on. Windows, attempts and
devices are recorded in audit through a durable spool; window changes go out on
``pairing.window`` for the operator waiting on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog

from shared import (
    AuditRecorder,
    BadRequest,
    Conflict,
    MeshConfig,
    MeshError,
    MeshHome,
    Readiness,
    RequestContext,
    Sealed,
    Service,
    Unavailable,
    certs,
    handler,
    mesh_config,
    pake,
)
from shared.keeper import DatabaseKeeper

from .addresses import advertised_host, listen_host
from .devices import DeviceHandlers
from .entry import EntryPoint
from .schema import PairStart, WindowRef
from .store import Device, PairingDB
from .window import SourceLimiter, Window, WindowDesk

log = structlog.get_logger("pairing")

CALL_TIMEOUT_S: Final = 5.0
_SLUG = re.compile(r"[^a-z0-9_-]+")


def identity_for(label: str, taken: set[str]) -> str:
    """An identity name for a device labelled ``label``, unused so far (revoked ones included)."""
    base = _SLUG.sub("-", label.lower()).strip("-_")[:40] or "device"
    if not base[0].isalpha():
        base = f"device-{base}"[:40]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


class Pairing(DeviceHandlers, Service):
    """Mesh name ``pairing``; handlers: ``start``, ``cancel``, ``window``, ``devices.*``, ``health``."""

    name = "pairing"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        self.settings = self.config.pairing
        self.clock = clock
        self.desk = WindowDesk()
        self.recorder = AuditRecorder("pairing", self.home.spool / "pairing-audit.spool")
        self.keeper = DatabaseKeeper(PairingDB, self.home.data / "pairing" / "pairing.db", "pairing", self._call,
                                     service="pairing")
        self.entry = EntryPoint(self.desk, SourceLimiter(self.settings.per_source_per_minute),
                                max_connections=self.settings.max_connections,
                                step_timeout_s=self.settings.step_timeout_s, admit=self._admit,
                                record=self._record_attempt, ended=self._ended_by_attempt, clock=clock)
        self._timer: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._audit_key = b""
        self._checkpoint = b""

    async def _call(self, target: str, body: Any = None, *, timeout: float = CALL_TIMEOUT_S) -> Any:
        if self.mesh is None:
            raise Sealed("pairing is not connected to the mesh")
        return await self.mesh.call(target, body, timeout=timeout)

    async def on_start(self) -> None:
        self.recorder.open(self.mesh)
        await self.keeper.start(self.mesh.subscribe if self.mesh is not None else None)

    async def on_stop(self) -> None:
        window = self.desk.current(self.clock())
        if window is not None:
            await self._end(window, "stopped")
        await self.entry.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
        await self.keeper.stop()
        await self.recorder.close()

    def readiness(self) -> Readiness:
        # A spool that could not be made durable outranks the keys: nothing may be recorded now.
        override = self.recorder.readiness or self.keeper.readiness
        return super().readiness() if override is None else override

    def db(self) -> PairingDB:
        return self.keeper.require()

    # -- the window -----------------------------------------------------------------------------

    @handler("start", request=PairStart, sensitive=("code", "offer"))
    async def start(self, ctx: RequestContext, req: PairStart) -> dict[str, Any]:
        """``pairing.start {name?, ttl_s?, host?}`` → ``{window, code, endpoint, offer,
        broker_fingerprint, expires_at, ttl_s}``: opens the one pairing window there may be
        (``CONFLICT`` while another is open) and its entry point. ``code`` is the one-time code
        (``1234-5678``) to type on the device, ``offer`` the same as the QR code carries
        (``curvemesh-pair:1?...``). Needs a tcp endpoint in ``[broker] tcp_endpoints`` (detached
        mode) and audit running (a device receives its checkpoint). Operators only.
        ``meshctl pair start [--name N] [--ttl S] [--host H]``."""
        settings = self.settings
        ttl = settings.window_default_s if req.ttl_s is None else req.ttl_s
        if not 10 <= ttl <= settings.window_max_s:
            raise BadRequest(f"ttl_s: from 10 to {settings.window_max_s} seconds ([pairing] window_max_s)")
        label = (req.name or "").strip()
        if req.name is not None and (not label or not label.isprintable()):
            raise BadRequest("name: printable text, at most 64 characters")
        self.db()  # sealed or failed: refuse before opening anything
        bind_host = listen_host(self.config.broker.tcp_endpoints)
        host = advertised_host(bind_host, req.host or settings.advertise_host)
        audit = await self._call("audit.public_key", {})
        self._audit_key = bytes(audit["public_key"])
        self._checkpoint = await self._latest_checkpoint()
        now = self.clock()
        window = self.desk.open(label, ttl, "", settings.max_failures, now)
        try:
            port = await self.entry.open(bind_host, settings.port)
        except OSError as exc:
            self.desk.end(window, "stopped")
            raise Unavailable(f"cannot listen for devices on {bind_host}:{settings.port} ({exc.strerror}); "
                              "set [pairing] port to a free port") from None
        window.endpoint = f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"
        broker = certs.load_certificate(self.home.public_key_path("broker"))
        offer = pake.encode_offer(pake.Offer(window.endpoint, broker.fingerprint, window.code))
        try:
            self.recorder.record("pairing.window_opened", ctx, "ok", window=window.id, name=label, ttl_s=ttl,
                                 endpoint=window.endpoint)
        except Unavailable:
            await self._end(window, "stopped")  # a window that cannot be recorded does not stay open
            raise
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(ttl, self._expire, window)
        await self._announce(window)
        return {"window": window.id, "code": f"{window.code[:4]}-{window.code[4:]}", "endpoint": window.endpoint,
                "offer": offer, "broker_fingerprint": broker.fingerprint, "expires_at": window.expires_at,
                "ttl_s": ttl}

    @handler("cancel", request=WindowRef)
    async def cancel(self, ctx: RequestContext, req: WindowRef) -> dict[str, Any]:
        """``pairing.cancel {window?}`` → the window, ``cancelled``: its entry point closes at once.
        Operators only. ``meshctl pair cancel``."""
        window = self._window(req.window)
        if window.open:
            self.recorder.record("pairing.window_closed", ctx, "ok", window=window.id, reason="cancelled",
                                 failures=window.failures, refused=window.refused)
            await self._end(window, "cancelled")
        return window.view(self.clock())

    @handler("window", request=WindowRef)
    async def window_handler(self, ctx: RequestContext, req: WindowRef) -> dict[str, Any]:
        """``pairing.window {window?}`` → ``{window, state, name, endpoint, opened_at, expires_at,
        remaining_s, failures, max_failures, device}`` (never the code). ``meshctl pair status``."""
        self.desk.current(self.clock())  # ends a window past its deadline before it is shown
        return self._window(req.window).view(self.clock())

    def _window(self, wanted: str | None) -> Window:
        window = self.desk.window
        if window is None or (wanted is not None and wanted != window.id):
            raise BadRequest("no such pairing window (meshctl pair start opens one)")
        return window

    async def _end(self, window: Window, how: str) -> None:
        self.desk.end(window, how)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.entry.close()
        await self._announce(window)

    def _expire(self, window: Window) -> None:
        if window.open:
            self._record_closed(window, "expired")
            self._spawn(self._end(window, "expired"))

    def _ended_by_attempt(self, window: Window) -> None:
        """An attempt ended the window (joined, or the guesses ran out): close it from its own task,
        since the attempt's task belongs to the entry point being closed."""
        self._record_closed(window, window.state)
        self._spawn(self._end(window, window.state))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _record_closed(self, window: Window, reason: str) -> None:
        try:
            self.recorder.record("pairing.window_closed", None, "ok", window=window.id, reason=reason,
                                 failures=window.failures, refused=window.refused)
        except Unavailable:
            log.error("pairing_audit_unavailable", window=window.id)

    async def _announce(self, window: Window) -> None:
        if self.mesh is None:
            return
        try:
            await self.mesh.publish("pairing.window", window.view(self.clock()), timeout=CALL_TIMEOUT_S)
        except MeshError as exc:  # the window's state stands; an operator can ask (pairing.window)
            log.warning("pairing_announce_failed", error=type(exc).__name__)

    # -- what the entry point calls -------------------------------------------------------------

    def _record_attempt(self, window: Window, source: str, outcome: str, reason: str) -> None:
        try:
            self.recorder.record("pairing.attempt", None, outcome, window=window.id, address=source, reason=reason)
        except Unavailable:
            # Fail closed: an attempt that cannot be recorded ends the window.
            log.error("pairing_audit_unavailable", window=window.id)
            if window.open:
                self._spawn(self._end(window, "stopped"))

    async def _latest_checkpoint(self) -> bytes:
        reply = await self._call("audit.checkpoint", {"since": 0})
        return bytes(reply["checkpoint"])

    async def _admit(self, window: Window, hello: pake.DeviceHello,
                     source: str) -> tuple[pake.Welcome, Callable[[], Awaitable[None]]]:
        db = self.db()
        label = window.name or hello.name.strip() or "device"
        taken = db.identities()
        for _ in range(5):  # a name the broker holds for a service is skipped, like one pairing gave
            identity = identity_for(label, taken)
            try:
                enrolled = await self._call("mesh.devices.enroll",
                                            {"public_key": hello.public_key.decode(), "name": identity})
                break
            except Conflict as exc:
                if "name" not in exc.message:
                    raise
                taken.add(identity)
        else:
            raise Conflict("no free identity name for this device; pair it with --name")
        now = self.clock()
        device = Device(identity, label, str(enrolled["fingerprint"]), hello.public_key.decode(), now, source,
                        hello.client_version, window.id, now, source, None, None)

        async def undo() -> None:
            await self._call("mesh.devices.revoke", {"name": identity})
            with contextlib.suppress(MeshError):
                self.db().revoke(identity, "pairing: the device was not welcomed", self.clock())

        try:
            db.add(device)
            self.recorder.record("pairing.device_paired", None, "ok", target=identity, window=window.id,
                                 device=identity, fingerprint=device.fingerprint, address=source,
                                 client_version=hello.client_version)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the enrolment must be undone
            # Enrolled but not kept or not recorded: the key leaves the allow-list again (fail closed).
            log.error("pairing_device_not_kept", device=identity, error=type(exc).__name__)
            await undo()
            raise Unavailable("the device could not be recorded; it was not admitted") from None
        try:
            checkpoint = await self._latest_checkpoint()
        except MeshError:  # the window's checkpoint is a little older; still a sound witness start
            checkpoint = self._checkpoint
        broker = certs.load_certificate(self.home.public_key_path("broker"))
        host = window.endpoint.rsplit(":", 1)[0].removeprefix("tcp://")
        endpoints = tuple(_reachable(e, host) for e in enrolled["endpoints"])
        return pake.Welcome(broker.public_key, endpoints, identity, self._audit_key, checkpoint), undo


def _reachable(endpoint: str, host: str) -> str:
    """The broker's bound endpoint as a device must dial it: a wildcard host becomes ``host``."""
    scheme, _, rest = endpoint.partition("://")
    bound, _, port = rest.rpartition(":")
    if bound in ("0.0.0.0", "*", "[::]", "::"):  # noqa: S104 - a wildcard the broker bound, replaced
        bound = host
    return f"{scheme}://{bound}:{port}"

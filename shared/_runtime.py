"""The service runtime: registration, the mailbox, dispatch, deadlines, graceful shutdown.

Actor semantics: requests wait in a mailbox and a single worker takes them
one at a time, unless a handler is declared ``concurrent`` (then it runs as
its own task, at most ``runtime.max_concurrent`` at once). The runtime looks
handlers up in the service's explicit table only. A handler's failure is
answered with its error code; anything unexpected becomes ``INTERNAL`` with
a generic message, and the traceback stays in the local log.

On SIGTERM the service deregisters (new requests get ``UNAVAILABLE`` from the
broker), finishes what is in its mailbox and in flight (up to
``runtime.shutdown_grace_ms``), calls ``on_stop`` and exits.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import time
import traceback
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

from ._client import MeshClient
from ._codec import PROTOCOL_VERSION, decode_body, encode_body, encode_header, error_text
from ._config import MeshConfig, RuntimeConfig
from ._errors import (
    BadRequest,
    CertificateError,
    ConfigError,
    HandshakeError,
    Internal,
    MeshError,
    StateError,
    Unavailable,
)
from ._home import MeshHome
from ._layers import mesh_config
from ._logging import configure_logging, get_logger
from ._service import HandlerSpec, RequestContext, Service

log = get_logger("runtime")

_MAILBOX = 10_000


def unknown_method(service: Service, method: str) -> str:
    """``unknown method svc.m; methods: a, b``: the names an operator meant to type, nothing else.

    Only a caller the broker let through gets here (it answers FORBIDDEN before the service sees
    a call the ACL refuses). A grant may be narrower than the whole service, though:
    ``svc.group.*`` reaches ``svc.group.nope``. So only the public methods in the requested name's
    own namespace are listed (``group.*`` for ``group.nope``; every method for ``nope``, which only
    ``svc.*``, ``*.nope`` or an exact grant of that missing name reaches): a caller learns no
    method name its grant does not already cover.
    """
    name = f"{service.name}.{method}"[:200]
    namespace = method.rpartition(".")[0]
    prefix = f"{namespace}." if namespace else ""
    public = sorted(m for m in service.handlers if m.startswith(prefix) and not m.rpartition(".")[2].startswith("_"))
    if not public:
        return f"unknown method {name}"
    return error_text(f"unknown method {name}; methods: {', '.join(public)}")


class Mailbox:
    """The runtime's bounded FIFO of requests for its one worker: what the runtime used of
    ``asyncio.Queue`` (``put_nowait``, ``get``, ``task_done``, ``join``, ``qsize``), at less cost per
    message (issue 18: no ``QueueFull`` exception machinery, one waiter, one counter)."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._items: collections.deque[tuple[dict[str, Any], bytes | None, float]] = collections.deque()
        self._getter: asyncio.Future[None] | None = None
        self._unfinished = 0  # taken but not yet done, plus queued
        self._idle = asyncio.Event()
        self._idle.set()

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: tuple[dict[str, Any], bytes | None, float]) -> bool:
        """Queue ``item``; False (and nothing queued) when the mailbox is full."""
        if len(self._items) >= self.bound:
            return False
        self._items.append(item)
        if not self._unfinished:
            self._idle.clear()
        self._unfinished += 1
        getter, self._getter = self._getter, None
        if getter is not None and not getter.done():
            getter.set_result(None)
        return True

    async def get(self) -> tuple[dict[str, Any], bytes | None, float]:
        """The oldest item, waiting for one (a single consumer: the runtime's worker)."""
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            await self._getter
        return self._items.popleft()

    def task_done(self) -> None:
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.set()

    async def join(self) -> None:
        """Wait until every item put has been taken and marked done."""
        await self._idle.wait()


async def _until(deadline: float, handler_call: Awaitable[Any]) -> Any:
    """``await handler_call``, cancelled at ``deadline`` (``time.monotonic()``) with :class:`TimeoutError`.

    The call is run to its first suspension at once; only a handler that then waits gets the
    deadline armed (``asyncio.timeout``, a timer on the loop) for the rest of its run. One that
    finishes without waiting needs none (issue 18: the timer was a large part of a short
    handler's cost), and could not have been stopped by it anyway: a timeout only cancels a task
    at an ``await`` that suspends. ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for``
    hands back a result that lands in the same turn as a cancellation (the runtime stopping) and
    loses the cancellation.
    """
    if type(handler_call) is not types.CoroutineType:  # another kind of awaitable: the plain way
        async with asyncio.timeout(deadline - time.monotonic()):
            return await handler_call
    try:
        waiting_on = handler_call.send(None)
    except StopIteration as finished:
        return finished.value
    async with asyncio.timeout(deadline - time.monotonic()):
        return await _resume(handler_call, waiting_on)


@types.coroutine
def _resume(call: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """The rest of ``await call`` once its first step has yielded ``waiting_on``: what ``yield from``
    does (PEP 380), from the second step on. What ``call`` yields goes to the task as it is, and
    what the task sends or throws back (a cancellation included) goes into ``call``."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            call.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the handler, as ``yield from`` does.
            try:
                waiting_on = call.throw(exc)
            except StopIteration as finished:
                return finished.value
        else:
            try:
                waiting_on = call.send(sent)
            except StopIteration as finished:
                return finished.value


class ServiceRunner:
    """Runs one :class:`Service` on a connected :class:`MeshClient`."""

    def __init__(self, service: Service, client: MeshClient, config: RuntimeConfig,
                 max_body: int = 1 << 20) -> None:
        self.service = service
        self.client = client
        self.config = config
        self.max_body = max_body
        self.mailbox = Mailbox(_MAILBOX)
        self.stopping = False
        self.registered = asyncio.Event()
        self._registered_generation = 0
        self._register_lock = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._concurrent: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.max_concurrent)

    async def start(self) -> None:
        """Run ``on_start``, take requests, register under the service's own name."""
        self.service.mesh = self.client
        await self.service.on_start()
        self.client.connection.on_request = self._enqueue
        self.client.connect_hooks.insert(0, self._register)
        self._worker = asyncio.create_task(self._work(), name=f"{self.service.name}-worker")
        await self._register()

    async def _register(self) -> None:
        async with self._register_lock:
            generation = self.client.connection.generation
            if self.stopping or generation == self._registered_generation:
                return
            await self.client.connection.request({"k": "reg", "name": self.service.name}, None,
                                                 self.config.default_timeout_ms / 1000)
            self._registered_generation = generation
            self.registered.set()
            log.info("registered", service=self.service.name, connection=generation)

    def _enqueue(self, header: dict[str, Any], body: bytes | None) -> None:
        if self.stopping:
            self._reply_error(header, Unavailable(f"{self.service.name} is shutting down"))
            return
        if not self.mailbox.put_nowait((header, body, time.monotonic())):
            self._reply_error(header, Unavailable(f"{self.service.name} is overloaded"))

    async def _work(self) -> None:
        while True:
            header, body, received = await self.mailbox.get()
            try:
                spec = self._lookup(header)
                if spec is not None and spec.concurrent:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._dispatch(spec, header, body, received))
                    self._concurrent.add(task)
                    task.add_done_callback(self._concurrent_done)
                elif spec is not None:
                    await self._dispatch(spec, header, body, received)
            finally:
                self.mailbox.task_done()

    def _concurrent_done(self, task: asyncio.Task[None]) -> None:
        self._concurrent.discard(task)
        self._slots.release()

    def _lookup(self, header: dict[str, Any]) -> HandlerSpec | None:
        target = header.get("to")
        method = target.partition(".")[2] if isinstance(target, str) else ""
        spec = self.service.handlers.get(method) if not method.startswith("_") else None
        if spec is None:
            self._reply_error(header, BadRequest(unknown_method(self.service, method)))
        return spec

    async def _dispatch(self, spec: HandlerSpec, header: dict[str, Any], body: bytes | None,
                        received: float) -> None:
        ttl = header.get("ttl")
        deadline = received + (ttl if isinstance(ttl, int) else self.config.default_timeout_ms) / 1000
        if deadline <= time.monotonic():
            return  # The broker has already answered the caller with TIMEOUT.
        try:
            request = spec.request.from_wire(None if body is None else decode_body(body, self.max_body))
            ctx = RequestContext(caller=str(header.get("from")), role=str(header.get("role")),
                                 method=spec.wire_name, deadline=deadline, fingerprint=str(header.get("fp") or ""))
            result = await _until(deadline, spec.function(self.service, ctx, request))
            frames = [encode_header({"v": PROTOCOL_VERSION, "k": "rep", "id": header["id"]}),
                      self._check_reply(spec, result)]
        except MeshError as exc:
            self._reply_error(header, exc)
            return
        except TimeoutError:
            log.warning("handler_deadline_passed", method=spec.wire_name)
            return
        except Exception as exc:  # noqa: BLE001 - answer INTERNAL; details stay in our log.
            # Log where it failed, not what the exception says: its message may quote
            # request data (a password, a token) that must never reach a log.
            where = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)]
            log.error("handler_failed", method=spec.wire_name, error_type=type(exc).__name__, where=where)
            self._reply_error(header, MeshError("internal error"))
            return
        self._send(frames)

    @staticmethod
    def _check_reply(spec: HandlerSpec, result: Any) -> bytes:
        """Encode what a handler returned; a reply that breaks its declared type or cannot
        be encoded is the handler's fault (``INTERNAL``), never the caller's."""
        try:
            if spec.reply is not None and not isinstance(result, spec.reply):
                result = spec.reply.from_wire(result)
            return encode_body(result.to_wire() if hasattr(result, "to_wire") else result)
        except BadRequest:
            log.error("reply_schema_violation", method=spec.wire_name)
            raise Internal("internal error") from None

    def _reply_error(self, header: dict[str, Any], exc: MeshError) -> None:
        frame = encode_header({"v": PROTOCOL_VERSION, "k": "err", "id": header.get("id", 0),
                               "code": exc.code if exc.code != "CONFIG" else "INTERNAL",
                               "msg": error_text(exc.message)})
        self._send([frame])

    def _send(self, frames: list[bytes]) -> None:
        """Send a reply now: the connection queues it without waiting (or it is lost with the connection)."""
        try:
            self.client.connection.send_now(frames)
        except Unavailable:
            log.warning("reply_not_sent", reason="not connected to the broker")

    async def stop(self) -> None:
        """Deregister, finish queued and in-flight work within the grace period, then stop."""
        if self.stopping:
            return
        self.stopping = True
        try:
            await self.client.connection.request({"k": "bye"}, None, 2.0)
        except MeshError as exc:
            log.warning("deregister_failed", reason=exc.message)
        grace = self.config.shutdown_grace_ms / 1000
        try:
            async with asyncio.timeout(grace):
                await self.mailbox.join()
            if self._concurrent:
                await asyncio.wait(set(self._concurrent), timeout=grace)
        except TimeoutError:
            log.warning("shutdown_grace_exceeded", queued=self.mailbox.qsize())
        if self._worker is not None:
            self._worker.cancel()
        for task in list(self._concurrent):
            task.cancel()
        await self.service.on_stop()


async def serve(service: Service, home: MeshHome, *, stop: asyncio.Event) -> None:
    """Connect ``service`` to the mesh in ``home`` and run it until ``stop`` is set."""
    config = mesh_config(home.root)
    client = await connect_patiently(home, service.name, config)
    runner = ServiceRunner(service, client, config.runtime, config.broker.max_message_bytes)
    try:
        await runner.start()
        stopped = asyncio.ensure_future(stop.wait())
        refused = asyncio.ensure_future(client.connection.failed.wait())
        await asyncio.wait({stopped, refused}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        refused.cancel()
        if not stop.is_set() and client.connection.handshake_error is not None:
            # Refused for good (revoked, or a broker with another key): exit with a clear
            # error so supervisord shows the process FATAL instead of it retrying forever.
            raise client.connection.handshake_error
        log.info("stopping", service=service.name)
        await runner.stop()
    finally:
        await client.close()


async def connect_patiently(home: MeshHome, name: str, config: MeshConfig) -> MeshClient:
    """Wait for the broker (it may be starting too); fail at once on a handshake refusal."""
    delay = config.runtime.reconnect_min_ms / 1000
    while True:
        try:
            return await MeshClient.connect(home, name, config=config)
        except Unavailable as exc:
            log.warning("broker_not_reachable", reason=exc.message, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.runtime.reconnect_max_ms / 1000)


def run_service(service_class: type[Service]) -> None:
    """Entry point of ``python -m services.<name>``: run until SIGTERM or SIGINT."""
    configure_logging(service_class.name)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(service_class(), MeshHome.from_env(), stop=stop)

    try:
        asyncio.run(main())
    except (ConfigError, CertificateError, HandshakeError, StateError) as exc:
        log.error("cannot_start", service=service_class.name, error=exc.code, reason=exc.message)
        print(f"{service_class.name}: {exc.message}", file=sys.stderr)
        sys.exit(2)

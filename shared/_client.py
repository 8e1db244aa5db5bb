"""The client API, used by services and tools alike: call, publish, subscribe.

::

    client = await MeshClient.connect(home, "meshctl")
    health = await client.call("storage.health", timeout=2.0)
    async with await client.subscribe("alerts.") as events:
        event = await events.next(timeout=5.0)
    await client.close()

Every wait has a deadline. Errors arrive as the :class:`~shared.MeshError`
subclass the broker or the service answered.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq.asyncio

from ._certs import load_certificate, load_keypair
from ._codec import decode_body, encode_body
from ._config import MeshConfig, RuntimeConfig
from ._connection import Connection
from ._errors import Timeout
from ._home import MeshHome
from ._layers import mesh_config
from ._provision import missing_keypair

_MAX_BODY = 64 << 20


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its topic, the publisher's authenticated identity, and its body."""

    topic: str
    sender: str
    body: Any


class Subscription:
    """Events whose topic starts with :attr:`prefix`, in arrival order (bounded queue)."""

    def __init__(self, client: MeshClient, prefix: str, capacity: int = 10_000) -> None:
        self.client = client
        self.prefix = prefix
        self.queue: asyncio.Queue[Event] = asyncio.Queue(capacity)
        self.overflow = 0

    def _offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflow += 1

    async def next(self, timeout: float) -> Event:
        """The next event; :class:`Timeout` if none arrives within ``timeout`` seconds."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns an event that arrives in the
        # same turn as a cancellation and loses the cancellation (the caller's task never stops).
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            raise Timeout(f"no event on {self.prefix!r} within {timeout:.3f} s") from None

    async def close(self) -> None:
        await self.client._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class MeshClient:
    """A mesh peer's API over one :class:`Connection`."""

    def __init__(self, connection: Connection, config: RuntimeConfig) -> None:
        self.connection = connection
        self.config = config
        self.subscriptions: list[Subscription] = []
        self.connect_hooks: list[Callable[[], Awaitable[None]]] = []
        connection.on_event = self._on_event
        connection.on_connect = self._on_connect

    @classmethod
    async def connect(cls, home: MeshHome, name: str, *, config: MeshConfig | None = None,
                      endpoint: str | None = None, broker_key: bytes | None = None,
                      context: zmq.asyncio.Context | None = None,
                      timeout: float | None = None) -> MeshClient:
        """Connect as identity ``name`` with the keypair in ``home/keys``.

        The broker key is pinned from ``home/keys/broker.key`` unless given. No keypair for
        ``name`` raises :class:`~shared.CertificateError` naming its path and what creates it.
        """
        config = config or mesh_config(home.root)
        if not os.path.lexists(home.secret_key_path(name)):
            raise missing_keypair(home, name, config)  # say where it should be and what creates it
        keypair = load_keypair(home.secret_key_path(name))
        if broker_key is None:
            broker_key = load_certificate(home.public_key_path("broker")).public_key
        connection = Connection(keypair, broker_key, endpoint or home.broker_endpoint, config.runtime,
                                context=context)
        client = cls(connection, config.runtime)
        try:
            await connection.open(timeout)
        except BaseException:
            await connection.close()
            raise
        return client

    @property
    def name(self) -> str:
        return self.connection.name

    def _timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self.config.default_timeout_ms / 1000

    async def call(self, target: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``service.method`` with ``body``; return the decoded reply body."""
        seconds = self._timeout(timeout)
        ttl = max(1, int(seconds * 1000))
        _, reply = await self.connection.request(
            {"k": "req", "to": target, "ttl": ttl}, None if body is None else encode_body(body), seconds)
        return None if reply is None else decode_body(reply, _MAX_BODY)

    async def publish(self, topic: str, body: Any = None, *, timeout: float | None = None) -> None:
        """Publish an event; returns once the broker has accepted it (ACL checked)."""
        await self.connection.request({"k": "pub", "topic": topic},
                                      None if body is None else encode_body(body), self._timeout(timeout))

    async def subscribe(self, prefix: str, *, timeout: float | None = None) -> Subscription:
        """Subscribe to topics starting with ``prefix`` (``"*"``: every topic, if the ACL
        grants it); kept across reconnects."""
        await self.connection.request({"k": "sub", "topic": prefix}, None, self._timeout(timeout))
        subscription = Subscription(self, prefix)
        self.subscriptions.append(subscription)
        return subscription

    async def _unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)
        if not any(s.prefix == subscription.prefix for s in self.subscriptions):
            await self.connection.request({"k": "unsub", "topic": subscription.prefix}, None,
                                          self._timeout(None))

    def _on_event(self, topic: str, sender: str, body: bytes | None) -> None:
        value = None if body is None else decode_body(body, _MAX_BODY)
        event = Event(topic, sender, value)
        for subscription in self.subscriptions:
            if subscription.prefix == "*" or topic.startswith(subscription.prefix):
                subscription._offer(event)

    async def _on_connect(self) -> None:
        # A new connection (first, or after a broker restart): hooks (registration) first,
        # then the subscriptions this client holds.
        for hook in self.connect_hooks:
            await hook()
        for prefix in sorted({s.prefix for s in self.subscriptions}):
            await self.connection.request({"k": "sub", "topic": prefix}, None, self._timeout(None))

    async def close(self) -> None:
        await self.connection.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

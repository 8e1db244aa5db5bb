"""Testing helpers: a real in-process mesh with real CURVE keys in a temporary home.

With the project's broker class (``from services.broker import Broker``)::

    async with InProcessMesh(tmp_path, config_text, broker=Broker) as mesh:
        await mesh.start_service(MyService())
        client = await mesh.client("meshctl")
        assert (await client.call("my.health", timeout=2))["status"] == "ok"

The broker is a service, not part of ``shared``, so the mesh is given one: ``broker`` is any
:data:`BrokerFactory`, called with the parsed configuration and the home, whose result has the
:class:`InProcessBroker` methods (the project's ``services.broker.Broker`` class is one). It runs in
a thread with its own zmq Context (so its ZAP handler is real); services and clients run on the
test's event loop. Everything is torn down on exit. To call one handler directly, without a mesh,
use :func:`call_handler` with a :class:`~shared.RequestContext` you build.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import zmq.asyncio

from ._client import MeshClient
from ._config import MeshConfig, parse_config
from ._home import MeshHome
from ._provision import add_identity, provision
from ._runtime import ServiceRunner
from ._service import RequestContext, Service

__all__ = ["BrokerFactory", "InProcessBroker", "InProcessMesh", "call_handler"]


class InProcessBroker(Protocol):
    """What :class:`InProcessMesh` needs of a broker: ``bind()`` its endpoints (raising if it cannot),
    then ``run()`` its loop, blocking, until ``stop()`` (called from another thread) ends it."""

    def bind(self) -> None: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...


#: Makes the broker of a mesh from its configuration and home (a broker class is one).
BrokerFactory: TypeAlias = Callable[[MeshConfig, MeshHome], InProcessBroker]


async def call_handler(service: Service, method: str, body: Any = None, *, caller: str = "test",
                       role: str = "operator", timeout: float = 5.0, fingerprint: str = "") -> Any:
    """Call one handler of ``service`` directly, through its dispatch table and schema;
    a reply message comes back as the map the wire would carry. ``fingerprint`` stands for the
    caller's key fingerprint the broker would stamp."""
    spec = service.handlers[method]
    ctx = RequestContext(caller=caller, role=role, method=method, deadline=time.monotonic() + timeout,
                         fingerprint=fingerprint)
    result = await asyncio.wait_for(spec.function(service, ctx, spec.request.from_wire(body)), timeout)
    return result.to_wire() if hasattr(result, "to_wire") else result


class InProcessMesh:
    """A broker thread plus services and clients on the current event loop.

    ``root`` becomes the mesh home, provisioned with a keypair for the broker and for each of
    ``identities`` (name to role; when None, the identities ``config_text`` declares);
    ``config_text`` is the mesh.toml written into it; ``broker`` makes the broker that
    :meth:`start_broker` (and entering the context) starts.
    """

    def __init__(self, root: Path, config_text: str = "", identities: dict[str, str] | None = None, *,
                 broker: BrokerFactory) -> None:
        self.broker_factory = broker
        self.home = MeshHome(root)
        self.config_text = config_text
        self.config: MeshConfig = parse_config(config_text, "test mesh.toml")
        self.pairs = provision(self.home, identities if identities is not None else self.config.identities())
        (self.home.root / "mesh.toml").write_text(config_text)
        self.context = zmq.asyncio.Context()
        #: The running broker (what the factory made), None while stopped.
        self.broker: InProcessBroker | None = None
        self._thread: threading.Thread | None = None
        self.runners: list[ServiceRunner] = []
        self.clients: list[MeshClient] = []

    def add_identity(self, name: str, role: str) -> None:
        add_identity(self.home, name, role, self.pairs)

    def start_broker(self) -> None:
        """Make a fresh broker with the factory, bind it and run it in a thread."""
        self.broker = broker = self.broker_factory(self.config, self.home)
        broker.bind()
        self._thread = threading.Thread(target=broker.run, name="broker", daemon=True)
        self._thread.start()

    def stop_broker(self) -> None:
        if self.broker is not None and self._thread is not None:
            self.broker.stop()
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                raise RuntimeError("broker thread did not stop")
        self.broker = None
        self._thread = None

    async def client(self, name: str, **kwargs: Any) -> MeshClient:
        client = await MeshClient.connect(self.home, name, config=self.config, context=self.context, **kwargs)
        self.clients.append(client)
        return client

    async def start_service(self, service: Service, name: str | None = None) -> ServiceRunner:
        client = await self.client(name or service.name)
        runner = ServiceRunner(service, client, self.config.runtime, self.config.broker.max_message_bytes)
        await runner.start()
        self.runners.append(runner)
        return runner

    async def __aenter__(self) -> InProcessMesh:
        self.start_broker()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for runner in self.runners:
            if not runner.stopping:
                runner.stopping = True
                if runner._worker is not None:
                    runner._worker.cancel()
        for client in self.clients:
            await client.close()
        self.stop_broker()
        self.context.term()

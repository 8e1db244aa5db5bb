"""The broker's side of ``meshctl status``: what the broker and each process answer about themselves.

What status asks is one conversation, written once (:func:`_conversation`): ``mesh.stats`` and
``mesh.services`` first; then, at once, the ``health`` of every registered process and (for the
details) ``keyvault.status`` and ``storage.status``. Each round waits at most
:data:`CALL_TIMEOUT_S`, and one process that does not answer delays none of the others.

Two drivers carry it. :func:`fetch_once` makes the calls over :class:`shared.OneShot`, without an
event loop, for a plain ``meshctl status``: asyncio and zmq's asyncio binding together cost more to
import than the interpreter takes to start (issue 13), and a mesh that is down (no broker socket)
loads no zmq at all. :class:`MeshProbe` keeps one :class:`shared.MeshClient` across the polls of
``status --watch``, ``up`` and ``restart`` (libzmq reconnects it if the broker restarts), which
run an event loop anyway.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Final

from shared import HandshakeError, MeshError, MeshHome, Unavailable

if TYPE_CHECKING:
    from shared import MeshClient

OPERATOR: Final = "meshctl"
#: The longest the handshake, and each round of calls, may take.
CALL_TIMEOUT_S: Final = 2.0
#: The details a status asks of two services when they are registered.
_DETAILS: Final = ("keyvault.status", "storage.status")

#: A round of calls: ``(target, body)`` each; the driver sends back each reply or MeshError, in order.
Requests = list[tuple[str, Any]]


class MeshView:
    """What the mesh answered: ``mesh.stats`` (None when the broker could not be asked, and then
    ``problem`` says why), the registrations and health replies by name, and the replies (or
    errors) of ``keyvault.status`` and ``storage.status`` (None when not asked)."""

    __slots__ = ("health", "problem", "registered", "stats", "storage", "vault")

    def __init__(self, problem: str | None = None, stats: dict[str, Any] | None = None,
                 registered: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
                 vault: Any = None, storage: Any = None) -> None:
        self.problem = problem
        self.stats = stats
        self.registered = registered or {}
        self.health = health or {}
        self.vault = vault
        self.storage = storage


def _unreachable(exc: MeshError) -> MeshView:
    if isinstance(exc, HandshakeError):
        return MeshView(f"the broker refused meshctl: {exc.message}")
    return MeshView(f"the broker is not reachable: {exc.message}")


def _conversation(details: bool) -> Generator[Requests, list[Any], MeshView]:
    """The calls of one status, as rounds: each ``yield`` hands a round to the driver and gets back
    its replies (a MeshError in place of each call that failed)."""
    stats, services = yield [("mesh.stats", None), ("mesh.services", None)]
    for reply in (stats, services):
        if isinstance(reply, MeshError):
            return _unreachable(reply)
    registered = {s["name"]: s for s in services}
    asked = [target for target in _DETAILS if details and target.split(".")[0] in registered]
    replies = yield [(f"{name}.health", None) for name in registered] + [(target, None) for target in asked]
    health = {name: {"status": "not answering", "error": reply.code} if isinstance(reply, MeshError) else reply
              for name, reply in zip(registered, replies, strict=False)}
    answers = dict(zip(asked, replies[len(registered):], strict=True))
    return MeshView(None, stats, registered, health, answers.get("keyvault.status"), answers.get("storage.status"))


def fetch_once(home: MeshHome, details: bool) -> MeshView:
    """The view over one fresh connection, closed before returning (a plain ``meshctl status``)."""
    if not home.broker_socket.exists():
        return _unreachable(Unavailable("the broker is not listening (no socket in run/)"))
    from shared import OneShot  # zmq: only for a broker that may be listening

    try:
        peer = OneShot(home, OPERATOR, timeout=CALL_TIMEOUT_S).open()
    except MeshError as exc:
        return _unreachable(exc)
    conversation = _conversation(details)
    try:
        requests = next(conversation)
        while True:
            requests = conversation.send(peer.calls(requests, timeout=CALL_TIMEOUT_S))
    except StopIteration as finished:
        view: MeshView = finished.value
        return view
    finally:
        peer.close()


class MeshProbe:
    """meshctl's connection to the broker, opened on first use and kept across polls
    (libzmq reconnects it if the broker restarts)."""

    def __init__(self, home: MeshHome) -> None:
        self.home = home
        self.client: MeshClient | None = None

    async def get(self, timeout: float = CALL_TIMEOUT_S) -> MeshClient:
        """The client; :class:`Unavailable` or :class:`HandshakeError` if the broker cannot be had."""
        if self.client is None:
            if not self.home.broker_socket.exists():
                raise Unavailable("the broker is not listening (no socket in run/)")
            from shared import MeshClient

            self.client = await MeshClient.connect(self.home, OPERATOR, timeout=timeout)
        return self.client

    async def view(self, details: bool) -> MeshView:
        """The view over the kept connection: each round's calls made concurrently."""
        import asyncio

        try:
            client = await self.get()
        except MeshError as exc:
            return _unreachable(exc)
        conversation = _conversation(details)
        try:
            requests = next(conversation)
            while True:
                replies = await asyncio.gather(*(client.call(target, body, timeout=CALL_TIMEOUT_S)
                                                 for target, body in requests), return_exceptions=True)
                for reply in replies:
                    if isinstance(reply, BaseException) and not isinstance(reply, MeshError):
                        raise reply  # a bug or a cancellation, not an answer: never a status row
                requests = conversation.send(replies)
        except StopIteration as finished:
            view: MeshView = finished.value
            return view

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

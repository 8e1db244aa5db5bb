"""meshctl as a mesh peer, the parts every command shares without an event loop: whether the mesh
can be reached at all, the one-line error for each way a connection or a call fails, and ``ping``,
which makes one call over :class:`shared.OneShot` (no asyncio to import: issue 13)."""

from __future__ import annotations

import time
from typing import Any, Final

from shared import HandshakeError, MeshError, MeshHome, Unavailable

from ._output import CliError

OPERATOR: Final = "meshctl"


def reachable(home: MeshHome) -> None:
    """Refuse at once, naming what to do, when there is no operator key or no broker socket."""
    if not home.secret_key_path(OPERATOR).exists():
        raise CliError(f"no operator certificate in {home.keys}: run `meshctl init` first", kind="not_initialised")
    if not home.broker_socket.exists():
        raise CliError(f"cannot reach the broker at {home.broker_endpoint} (no socket): is the mesh up? (meshctl up)",
                       kind="unavailable")


def not_connected(home: MeshHome, exc: MeshError) -> CliError:
    """The one-line error for a connection that could not be made."""
    if isinstance(exc, HandshakeError):
        return CliError(f"handshake with the broker failed: {exc.message}", kind="handshake")
    if isinstance(exc, Unavailable):
        return CliError(f"cannot reach the broker at {home.broker_endpoint}: is the mesh up? (meshctl up)",
                        kind="unavailable")
    return CliError(exc.message, kind=exc.code.lower())


def refused(exc: MeshError) -> CliError:
    """The one-line error for a call the mesh answered with an error: its wire code is the JSON
    error's code, in lower case (FORBIDDEN, NOT_FOUND, SEALED, ...)."""
    return CliError(f"{exc.code}: {exc.message}", kind=exc.code.lower())


def ping(home: MeshHome, service: str, timeout: float) -> dict[str, Any]:
    """Round trip to ``mesh.ping`` (service ``mesh``/``broker``) or ``SERVICE.health``; ``rtt_ms``
    is the request's own round trip, the handshake before it not counted."""
    from shared import OneShot

    target = "mesh.ping" if service in ("mesh", "broker") else f"{service}.health"
    reachable(home)
    try:
        peer = OneShot(home, OPERATOR, timeout=timeout).open()
    except MeshError as exc:
        raise not_connected(home, exc) from None
    try:
        started = time.perf_counter()
        reply = peer.call(target)
        elapsed = time.perf_counter() - started
    except MeshError as exc:
        raise refused(exc) from None
    finally:
        peer.close()
    return {"service": service, "target": target, "rtt_ms": round(elapsed * 1000, 3), "reply": reply}


def ping_text(result: dict[str, Any]) -> str:
    """``meshctl ping``'s line: pong (the broker) or the process's state, the round trip, its pid
    and uptime, and the reason when it is not ready."""
    from ._output import duration, paint

    reply = result["reply"] if isinstance(result["reply"], dict) else {}
    extra = ""
    if "pid" in reply:
        uptime = duration(reply.get("uptime_s"))
        extra = f" (pid {reply['pid'] if reply['pid'] is not None else '-'}, up {uptime or '-'})"
    word = "pong" if result["target"] == "mesh.ping" else paint(str(reply.get("state", "answered")))
    why = f" ({reply['reason']})" if reply.get("reason") else ""
    return f"{result['service']}: {word} in {result['rtt_ms']:.2f} ms{extra}{why}"

"""The bootstrap that runs in a plugin's child process, before and around the plugin's code.

plugin-host starts it as ``python -I -B -c BOOT`` (process.py) with the socket as the only
descriptor besides 0, 1 and 2. Before any plugin code runs, in this order:

1. read the setup frame; move the socket to fd 3 and close every other descriptor above 2;
2. ``netns``: a new network namespace; ``tmpfs``: a private mount namespace and a tmpfs over
   the scratch directory, which becomes the working directory;
3. drop every capability (layers.drop_capabilities says why); a failure here ends the child;
4. ``rlimits``; 5. ``no_new_privs``; 6. ``landlock`` (+ ``landlock_net``, ``landlock_scope``);
7. ``seccomp``: the host's precompiled filter;
8. a layer the spec requires that failed: send ``unavailable`` and exit 78, plugin code unread;
9. expose the SDK as ``curvemesh_plugin``, leave only the plugin's directory and the standard
   library on ``sys.path``, import the entry module, send ``ready``; then serve one call or
   event at a time until the host closes the socket (exit 0).

Everything the bootstrap needs is imported before step 2, and nothing is imported lazily after
it: once Landlock applies the project and the virtualenv are unreadable (and without root, the
user namespace of step 2 may already hide what the host's uid reached through a capability).
A MemoryError from plugin code ends the child with EXIT_MEMORY (the host's "memory_quota").
"""

from __future__ import annotations

import errno
import importlib
import importlib.machinery
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any, NoReturn

from . import frames, layers, sdk
from .exits import EXIT_BOOT, EXIT_IMPORT, EXIT_MEMORY, EXIT_PROTOCOL, EXIT_UNAVAILABLE, printable
from .spec import HARD_MAX_FRAME

SOCKET_FD = 3
_PEEK = bytearray(1)


class Link:
    """The child's end of the socketpair: blocking, one frame at a time; requests only while a
    call runs (then serialized, and the result waits for a request in flight)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._call: int | None = None
        self._next_id = 0

    def send(self, frame: dict[str, Any]) -> None:
        self.send_bytes(frames.encode(frame))

    def send_bytes(self, data: bytes) -> None:
        """One packet; EMSGSIZE (larger than the socket allows) raises, any other error means the
        host is gone, and so the child goes too."""
        try:
            self._sock.send(data)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise
            os._exit(0)

    def send_result(self, result: dict[str, Any]) -> None:
        """A result, or a failure saying why it could not travel (not msgpack, too large)."""
        try:
            data = frames.encode(result)
        except frames.EncodeError as exc:
            data = frames.encode(_failure(result["id"], TypeError(f"the return value cannot be sent: {exc}")))
        try:
            self.send_bytes(data)
        except OSError:
            self.send(_failure(result["id"], TypeError("the return value cannot be sent: it is too large")))

    def receive(self) -> dict[str, Any]:
        """The next host frame; exits 0 when the host closed the socket, EXIT_PROTOCOL on a bad one."""
        size = self._sock.recv_into(_PEEK, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        if size == 0:
            os._exit(0)  # the host is done with this plugin
        if size > HARD_MAX_FRAME:
            os._exit(EXIT_PROTOCOL)
        try:
            return frames.check_from_host(frames.decode(self._sock.recv(size), HARD_MAX_FRAME))
        except frames.ProtocolError:
            os._exit(EXIT_PROTOCOL)

    def begin(self, call_id: int) -> None:
        self._call = call_id

    def end(self) -> None:
        with self._lock:  # a request another thread has in flight finishes before the result goes
            self._call = None

    def request(self, op: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if self._call is None:
                raise sdk.Error("UNAVAILABLE", "requests are possible only while the host calls the plugin")
            self._next_id += 1
            try:
                data = frames.encode({"t": "request", "id": self._next_id, "op": op, "args": args})
            except frames.EncodeError as exc:
                raise TypeError(f"request arguments: {exc}") from None
            self.send_bytes(data)
            reply = self.receive()
            if reply["t"] != "reply" or reply["id"] != self._next_id:
                os._exit(EXIT_PROTOCOL)
            if reply["ok"]:
                return reply["value"]
            error = sdk.Error if reply["code"] == "UNAVAILABLE" else sdk.Denied
            raise error(reply["code"], reply["message"])


def _adopt(fd: int) -> socket.socket:
    if fd != SOCKET_FD:
        os.dup2(fd, SOCKET_FD, inheritable=False)
        os.close(fd)
    sock = socket.socket(fileno=SOCKET_FD)
    sock.setblocking(True)
    return sock


def _import_path(setup: dict[str, Any]) -> list[str]:
    """The plugin's directory, then the entries of sys.path inside the runtime's read paths (the
    standard library: not the project, not the virtualenv). Computed while paths still resolve."""
    allowed = tuple(os.path.realpath(path).rstrip("/") + "/" for path in setup["read_paths"])
    return [setup["package_dir"], *(p for p in sys.path if (os.path.realpath(p).rstrip("/") + "/").startswith(allowed))]


def _confine_imports(import_path: list[str]) -> None:
    """Only the plugin's directory and the standard library stay importable."""
    sys.path[:] = import_path
    standard = (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter,
                importlib.machinery.PathFinder)
    sys.meta_path[:] = [finder for finder in sys.meta_path if finder in standard]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()


def _failure(call_id: int, exc: Exception) -> dict[str, Any]:
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a plugin's __str__ may raise anything
        message = ""
    return {"t": "result", "id": call_id, "ok": False, "type": printable(type(exc).__name__, frames.MAX_NAME_LEN),
            "message": printable(message, 1000), "denied": _denied(exc)}


def _denied(exc: Exception) -> bool:
    """The kernel refused something: PermissionError, or any OSError carrying EPERM or EACCES."""
    return isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in (errno.EPERM, errno.EACCES))


def _run(link: Link, frame: dict[str, Any]) -> None:
    call_id = frame["id"]
    link.begin(call_id)
    try:
        if frame["t"] == "call":
            fn = sdk._functions.get(frame["fn"])
            if fn is None:
                raise LookupError(f"the plugin exports no function {frame['fn']!r}")
            value = fn(frame["args"])
        else:
            for prefix, handler in sdk._handlers:
                if frame["topic"].startswith(prefix):
                    handler(frame["topic"], frame["body"])
            value = None
        result = {"t": "result", "id": call_id, "ok": True, "value": value}
    except MemoryError:
        os._exit(EXIT_MEMORY)
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised goes back as a failed result
        result = _failure(call_id, exc)
    finally:
        link.end()
    link.send_result(result)


def _serve(link: Link) -> NoReturn:
    while True:
        frame = link.receive()
        if frame["t"] not in ("call", "event"):
            os._exit(EXIT_PROTOCOL)
        _run(link, frame)


def main(fd: int) -> NoReturn:
    try:
        layers.die_with_parent()
        sock = _adopt(fd)
        link = Link(sock)
        setup = link.receive()
        if setup["t"] != "setup":
            os._exit(EXIT_PROTOCOL)
        os.closerange(SOCKET_FD + 1, max(os.sysconf("SC_OPEN_MAX"), 1024))
        # prctl and Landlock confine the calling thread only: there must be no other.
        tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["main"]
        if threading.active_count() != 1 or len(tasks) != 1:
            os._exit(EXIT_BOOT)
        import_path = _import_path(setup)
    except OSError:
        os._exit(EXIT_BOOT)

    def unavailable(layer: str, reason: str) -> NoReturn:
        link.send({"t": "unavailable", "layer": layer, "reason": printable(reason, 500)})
        os._exit(EXIT_UNAVAILABLE)

    try:
        applied = layers.apply_all(setup, set(setup["requires"]), unavailable)
    except OSError:
        os._exit(EXIT_BOOT)
    _confine_imports(import_path)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # a file beyond its limit ends it (Python ignores it)
    sys.stdout.reconfigure(line_buffering=True, errors="backslashreplace")  # type: ignore[union-attr]
    sdk._link = link
    sys.modules["curvemesh_plugin"] = sdk
    try:
        importlib.import_module(setup["entry"])
    except MemoryError:
        os._exit(EXIT_MEMORY)
    except BaseException:  # noqa: BLE001 - SystemExit too: the plugin never became ready
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(EXIT_IMPORT)
    topics = list(dict.fromkeys(prefix for prefix, _ in sdk._handlers))
    link.send({"t": "ready", "functions": list(sdk._functions), "topics": topics, "layers": applied})
    _serve(link)

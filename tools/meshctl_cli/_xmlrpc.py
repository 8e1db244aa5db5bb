"""XML-RPC to supervisord over its unix socket, with the standard library alone.

supervisord's own client transport (``supervisor.xmlrpc.SupervisorTransport``) would do the same,
but importing it loads most of the supervisor package (its HTTP server, its option parser and
``importlib.metadata`` among them): about as long as the interpreter takes to start, paid by every
``meshctl status`` (issue 13). What meshctl needs of it is small: an HTTP connection whose socket
is a unix socket, and the basic authentication supervisord's ``[unix_http_server]`` demands.
``xmlrpc.client.Transport`` does the rest (the request, the status check, the parsing), so
supervisord's answers and refusals arrive as before: a reply, an ``xmlrpc.client.Fault``, an
``xmlrpc.client.ProtocolError`` (401 for wrong credentials) or the socket's ``OSError``.
"""

from __future__ import annotations

import base64
import http.client
import socket
import xmlrpc.client
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to ``localhost`` whose socket is the unix socket at ``path``."""

    def __init__(self, path: str, timeout: float) -> None:
        # The host name only fills the Host header; supervisord does not look at it.
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Every wait on supervisord has a deadline: connecting, sending and each read.
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """``xmlrpc.client.Transport`` over the unix socket at ``path``, with basic authentication
    when ``username`` and ``password`` are given (without them supervisord answers 401)."""

    # supervisord does not compress its answers, and its own client never asked it to.
    accept_gzip_encoding = False

    def __init__(self, path: str, username: str | None, password: str | None, timeout: float) -> None:
        headers: list[tuple[str, str]] = []
        if username is not None and password is not None:
            token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            headers.append(("Authorization", f"Basic {token}"))
        super().__init__(headers=headers)
        self.path = path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # One connection per transport, kept for its calls, as the base class keeps its own.
        if self._connection[1] is None:
            self._connection = host, _UnixConnection(self.path, self.timeout)
        connection: http.client.HTTPConnection = self._connection[1]
        return connection


def server_proxy(path: str, username: str | None, password: str | None, timeout: float) -> Any:
    """A proxy whose ``supervisor.<method>(...)`` calls supervisord at the unix socket ``path``."""
    transport = UnixTransport(path, username, password, timeout)
    return xmlrpc.client.ServerProxy("http://localhost", transport=transport)

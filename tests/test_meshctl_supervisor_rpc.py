"""meshctl's XML-RPC client of supervisord (tools/meshctl_cli/_xmlrpc.py) against a small XML-RPC server
on a unix socket that checks basic authentication as supervisord's ``[unix_http_server]`` does: the
answers, the refusals and the one-line errors they become. The real supervisord is driven by the
end-to-end tests (test_operations_e2e.py); here each way a call can end is made to happen on purpose.
"""

from __future__ import annotations

import base64
import re
import socket
import socketserver
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest

from shared import MeshHome
from tools.meshctl_cli._output import CliError
from tools.meshctl_cli._supervisor import Credentials, NotRunning, Supervisor, SupervisorFault

CREDENTIALS = Credentials("meshctl-test", "not a real password")


class _Handler(SimpleXMLRPCRequestHandler):
    server: _Server
    disable_nagle_algorithm = False  # a TCP option: a unix socket refuses it

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.server.seen.append(dict(self.headers))
        expected = "Basic " + base64.b64encode(b"meshctl-test:not a real password").decode()
        refusal = self.server.answer_status or (401 if self.headers.get("Authorization") != expected else None)
        if refusal is None:
            return True
        # The whole request is read before the refusal, as supervisord does: a refusal sent while the
        # client still writes would reach it as a broken pipe instead.
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_error(refusal)
        return False

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a unix socket has no client address to log, and the test has nothing to say


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher):
    daemon_threads = True
    logRequests = False  # read by the handler: nothing to log in a test

    def __init__(self, path: str) -> None:
        socketserver.UnixStreamServer.__init__(self, path, _Handler)
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
        self.seen: list[dict[str, str]] = []
        self.answer_status: int | None = None


@pytest.fixture
def home(tmp_path: Path) -> MeshHome:
    home = MeshHome(tmp_path)
    home.run.mkdir(mode=0o700)
    return home


@pytest.fixture
def server(home: MeshHome) -> Iterator[_Server]:
    server = _Server(str(home.run / "supervisord.sock"))

    def fault(name: str, wait: bool) -> None:
        raise xmlrpc.client.Fault(10, "BAD_NAME: nope")

    server.register_function(lambda: {"statename": "RUNNING", "statecode": 1}, "supervisor.getState")
    server.register_function(lambda name, offset, length: ["é and more\n", 0, False],
                             "supervisor.tailProcessStdoutLog")
    server.register_function(fault, "supervisor.startProcess")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_call_is_answered_over_the_unix_socket_with_basic_authentication(
        home: MeshHome, server: _Server) -> None:
    supervisor = Supervisor(home, CREDENTIALS)
    assert supervisor.call("getState") == {"statename": "RUNNING", "statecode": 1}
    assert supervisor.running() is True
    assert supervisor.call("tailProcessStdoutLog", "mesh:storage", 0, 100) == ["é and more\n", 0, False]
    headers = server.seen[-1]
    assert headers["Content-Type"] == "text/xml" and headers["Accept-Encoding"] == "identity"  # never gzip


def test_refusals_and_faults_become_one_line_errors(home: MeshHome, server: _Server) -> None:
    for credentials in (None, Credentials("meshctl-test", "wrong"), Credentials("root", CREDENTIALS.password)):
        with pytest.raises(CliError, match="supervisord refused our credentials") as refused:
            Supervisor(home, credentials).call("getState")
        assert not isinstance(refused.value, NotRunning)
    with pytest.raises(SupervisorFault) as fault:
        Supervisor(home, CREDENTIALS).call("startProcess", "mesh:nope", False)
    assert (fault.value.code, fault.value.message) == (10, "supervisord: BAD_NAME: nope")
    server.answer_status = 503
    with pytest.raises(CliError, match=r"^supervisord answered HTTP 503 Service Unavailable$"):
        Supervisor(home, CREDENTIALS).call("getState")


def test_no_supervisord_is_not_running_whether_or_not_its_socket_is_left(home: MeshHome) -> None:
    supervisor = Supervisor(home, CREDENTIALS)
    with pytest.raises(NotRunning, match="supervisord is not running for"):
        supervisor.call("getState")
    assert supervisor.running() is False
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(supervisor.socket))  # bound, never listening: what a killed supervisord leaves
    try:
        with pytest.raises(NotRunning):
            supervisor.call("getAllProcessInfo")
    finally:
        stale.close()


def test_a_supervisord_that_does_not_answer_is_named_within_the_deadline(
        home: MeshHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tools.meshctl_cli._supervisor.RPC_TIMEOUT_S", 0.2)
    supervisor = Supervisor(home, CREDENTIALS)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(supervisor.socket))
    silent.listen()  # connections wait in the backlog: nobody reads the request or answers it
    try:
        where = re.escape(str(supervisor.socket))
        with pytest.raises(CliError, match=f"^cannot reach supervisord at {where}: timed out$") as error:
            supervisor.call("getState")
        assert not isinstance(error.value, NotRunning)
    finally:
        silent.close()

"""supervisord of one mesh home: its credentials, its XML-RPC control socket, starting it.

supervisord listens only on ``<home>/run/supervisord.sock`` (a 0700 directory,
socket mode 0700) and demands a user name and password that ``meshctl init``
generated and keeps in ``<home>/keys/supervisord.credentials`` (0600, created
with ``O_EXCL``). supervisord itself is given only ``{SHA}`` + the SHA-1 of the
password, through its environment, so the password never sits in a config
file, a command line or a child's environment.

meshctl speaks XML-RPC to it with the standard library (:mod:`._xmlrpc`), never importing the
``supervisor`` package, and loads even that only when the socket exists: ``status`` of a mesh
that is down learns it from the missing socket (issue 13: start-up is most of a command's time).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shared import MeshHome

from ._output import CliError

REPO: Final = Path(__file__).resolve().parents[2]
CONF: Final = REPO / "supervisord.conf"
CREDENTIALS: Final = "supervisord.credentials"
_MAX_SOCKET_PATH: Final = 107
#: The longest meshctl waits for one answer of supervisord.
RPC_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """The control socket's user name and password. Never print or log the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials({self.username!r}, password=<redacted>)"

    def supervisord_hash(self) -> str:
        """The form supervisord.conf takes: ``{SHA}`` + hex SHA-1 of the password. The
        password is 256 random bits, so the hash reveals nothing usable."""
        import hashlib  # here: only starting supervisord needs it

        return "{SHA}" + hashlib.sha1(self.password.encode(), usedforsecurity=False).hexdigest()


def credentials_path(home: MeshHome) -> Path:
    return home.keys / CREDENTIALS


def create_credentials(home: MeshHome) -> Credentials:
    """Generate and store new credentials (0600, ``O_EXCL``: an existing file is an error)."""
    import secrets  # here: only init generates credentials

    from shared.files import write_exclusive

    creds = Credentials("meshctl-" + secrets.token_hex(4), secrets.token_urlsafe(32))
    data = json.dumps({"username": creds.username, "password": creds.password}).encode()
    write_exclusive(credentials_path(home), data, 0o600)
    return creds


def load_credentials(home: MeshHome) -> Credentials:
    """Read the credentials; refuse a file others may read (as for CURVE secret keys)."""
    path = credentials_path(home)
    try:
        info = os.stat(path, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise CliError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise CliError(f"{path} is accessible by group or others (mode "
                           f"{stat.S_IMODE(info.st_mode):04o}); it must be 0600")
        data = json.loads(path.read_text("utf-8"))
        return Credentials(str(data["username"]), str(data["password"]))
    except FileNotFoundError:
        raise CliError(f"no supervisord credentials in {home.keys}: run `meshctl init` first",
                       kind="not_initialised") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CliError(f"{path} cannot be read as supervisord credentials") from None


class NotRunning(CliError):
    """supervisord of this home is not running (no socket, or nobody listening on it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="unavailable")


class SupervisorFault(CliError):
    """supervisord answered an XML-RPC fault; ``code`` is its fault code (supervisor.xmlrpc.Faults)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Supervisor:
    """XML-RPC client of one home's supervisord, over its unix socket, with credentials."""

    def __init__(self, home: MeshHome, credentials: Credentials | None) -> None:
        self.home = home
        self.credentials = credentials
        self.socket = home.run / "supervisord.sock"
        self.pidfile = home.run / "supervisord.pid"
        if len(str(self.socket).encode()) > _MAX_SOCKET_PATH:
            raise CliError(f"the mesh home {home.root} is too deep for a unix socket path; use a shorter one")

    def _unreachable(self, exc: OSError) -> CliError:
        """The error for a socket that cannot be reached: nobody there is a mesh that is down."""
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)) or exc.errno in (
                errno.ENOENT, errno.ECONNREFUSED):
            return NotRunning(f"supervisord is not running for {self.home.root}")
        return CliError(f"cannot reach supervisord at {self.socket}: {exc.strerror or exc}")

    def call(self, method: str, *args: Any) -> Any:
        """Call ``supervisor.<method>``; errors become one-line :class:`CliError` s."""
        try:
            # No socket, no supervisord: said without loading the XML-RPC client. The connection
            # below would fail the same way (ENOENT, or EACCES where stat does), and is still
            # mapped the same way for a socket that vanishes or that nobody listens on.
            os.stat(self.socket)
        except OSError as exc:
            raise self._unreachable(exc) from None
        import xmlrpc.client

        from ._xmlrpc import server_proxy

        user = self.credentials.username if self.credentials else None
        password = self.credentials.password if self.credentials else None
        try:
            # A fresh connection per call, with a deadline on every wait: supervisord may be busy
            # stopping a process, but meshctl never waits for it forever.
            proxy = server_proxy(str(self.socket), user, password, RPC_TIMEOUT_S)
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.ProtocolError as exc:
            if exc.errcode == 401:
                raise CliError("supervisord refused our credentials (keys/supervisord.credentials does not "
                               "match the running supervisord)") from None
            raise CliError(f"supervisord answered HTTP {exc.errcode} {exc.errmsg}") from None
        except xmlrpc.client.Fault as exc:
            raise SupervisorFault(f"supervisord: {exc.faultString}", exc.faultCode) from None
        except OSError as exc:
            raise self._unreachable(exc) from None

    def running(self) -> bool:
        try:
            state = self.call("getState")
        except NotRunning:
            return False
        return bool(state.get("statename") in ("RUNNING", "RESTARTING"))

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def processes(self) -> list[dict[str, Any]]:
        info: list[dict[str, Any]] = self.call("getAllProcessInfo")
        return info

    def start(self) -> None:
        """Start supervisord (it daemonizes once its control socket is bound)."""
        if self.credentials is None:
            raise CliError("cannot start supervisord without credentials")
        if not CONF.is_file():
            raise CliError(f"{CONF} not found: meshctl up runs from a curvemesh checkout")
        import subprocess  # here: only `up` starts supervisord

        env = dict(os.environ)
        env.update(CURVEMESH_HOME=str(self.home.root), CURVEMESH_PYTHON=sys.executable, CURVEMESH_REPO=str(REPO),
                   CURVEMESH_SUPERVISOR_USER=self.credentials.username,
                   CURVEMESH_SUPERVISOR_PASSWORD_SHA=self.credentials.supervisord_hash())
        tighten_files(self.home)
        try:
            # A fixed argv (our interpreter, our config), no shell. umask 077 from the first
            # instruction: supervisord opens its own log before it applies umask=077 from its
            # config, so without this the log (and every rotation of it) came out 0644.
            argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(CONF)]
            done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,  # noqa: S603
                                  timeout=60, check=False, umask=0o077)
        except subprocess.TimeoutExpired:
            raise CliError("supervisord did not daemonize within 60 s") from None
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise CliError(f"supervisord did not start: {reason}")


def tighten_files(home: MeshHome) -> None:
    """Close to group and others the files an earlier version left readable: supervisord's own log
    and its rotated backups (created 0644 before supervisord was started with umask 077), and the
    public certificates in ``keys/`` and ``certs/`` (written 0644 before every file of the mesh was
    made 0600). Symlinks are left alone: chmod would follow them out of the home. A secret key
    others could read is never "fixed" here: the process that owns it refuses to start (fail
    closed), and the operator learns that it was exposed."""
    for top, pattern in ((home.log, "*"), (home.keys, "*.key"), (home.certs, "*.key")):
        if not top.is_dir():
            continue
        for path in top.rglob(pattern):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
                os.chmod(path, 0o600)


def _environ(pid: str) -> list[bytes]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return handle.read().split(b"\0")


def _cmdline(pid: str) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]


def alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a daemon's new parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc here: kill(0) is all we can know.


def home_processes(home: MeshHome) -> list[tuple[int, str]]:
    """Live processes of this home: supervisord and ``python -m services.*`` whose environment
    names it (``CURVEMESH_HOME``). Linux only (reads /proc); elsewhere an empty list."""
    marker = f"CURVEMESH_HOME={home.root}".encode()
    ours = {os.getpid(), os.getppid()}
    found: list[tuple[int, str]] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if int(pid) in ours:
            continue
        try:
            if marker not in _environ(pid):
                continue
            argv = _cmdline(pid)
        except OSError:
            continue  # gone meanwhile, or not ours to read.
        modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
        if any(m.startswith("services.") for m in modules) or any("supervisord" in a for a in argv[:3]):
            found.append((int(pid), " ".join(argv)[:120]))
    return sorted(found)

"""Host side: how a child is started, and what of the Python runtime it may read.

The child runs the host's own interpreter in isolated mode (``-I``: no user site, no PYTHON*
variables, no script directory on the path; ``-B``: no bytecode written), with an environment
that names nothing but its scratch directory: no CURVE key, no token, no CURVEMESH_HOME.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Final

from .exits import ChildGone, ExitInfo
from .spec import SandboxSpec

#: The project root: the child imports its bootstrap from here, before Landlock hides it.
PROJECT_ROOT: Final = str(Path(__file__).resolve().parents[3])
#: The child's program. The parent packages are registered bare, so that their __init__ (the
#: plugin-host service and all it imports) never runs in a child: only this package does.
BOOT: Final = """\
import sys, types
sys.path.insert(0, {root!r})
for name in ("services", "services.plugin_host"):
    package = sys.modules[name] = types.ModuleType(name)
    package.__path__ = [{root!r} + "/" + name.replace(".", "/")]
from services.plugin_host.sandbox.child import main
main({fd})
"""


def argv(fd: int) -> list[str]:
    """The child's command line; ``fd`` is its end of the socketpair (passed with pass_fds)."""
    return [sys.executable, "-I", "-B", "-c", BOOT.format(root=PROJECT_ROOT, fd=fd)]


def environment(scratch_dir: Path) -> dict[str, str]:
    """Everything the child's environment holds."""
    return {"LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(scratch_dir), "HOME": str(scratch_dir)}


def _libc_dir() -> str | None:
    """The directory the running libc was loaded from (where the system's shared libraries are:
    libffi for ctypes, libz, libssl... that extension modules load when imported)."""
    with contextlib.suppress(OSError), open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.basename(parts[5].strip()).startswith("libc.so"):
                return os.path.dirname(os.path.realpath(parts[5].strip()))
    multiarch = sysconfig.get_config_var("MULTIARCH")
    return f"/usr/lib/{multiarch}" if multiarch else None


@functools.cache
def read_paths() -> tuple[str, ...]:
    """What a plugin may read besides its own directory: the base interpreter's standard library
    (sysconfig of ``sys.base_prefix``, not the virtualenv), its extension modules (lib-dynload)
    and the system library directory. Existing directories only, none inside another."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
            "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    candidates = [sysconfig.get_path("stdlib", vars=base), sysconfig.get_path("platstdlib", vars=base),
                  sysconfig.get_config_var("DESTSHARED"), _libc_dir()]
    found: list[str] = []
    for path in candidates:
        if path and os.path.isdir(path):
            real = os.path.realpath(path)
            if real not in found:
                found.append(real)
    return tuple(path for path in found
                 if not any(other != path and path.startswith(other.rstrip("/") + "/") for other in found))


def spawn(spec: SandboxSpec) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start a child (not yet set up): its process, and the host's non-blocking end of the socketpair.
    ChildGone (start_failed) when it cannot be started at all (no scratch directory, say)."""
    host_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for end in (host_sock, child_sock):  # room for one frame of the largest size allowed
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, spec.max_message_bytes + 65536)
        host_sock.setblocking(False)
        popen = subprocess.Popen(  # noqa: S603 - our interpreter and bootstrap, no shell
            argv(child_sock.fileno()), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(child_sock.fileno(),), close_fds=True, start_new_session=True, cwd=spec.scratch_dir,
            env=environment(spec.scratch_dir))
    except OSError as exc:
        host_sock.close()
        raise ChildGone(ExitInfo("start_failed", f"could not start the child: {exc.strerror or exc}", None)) from None
    finally:
        child_sock.close()
    return popen, host_sock


def setup_frame(spec: SandboxSpec, bpf: bytes) -> dict[str, Any]:
    """The first frame a child reads: everything its bootstrap applies."""
    return {"t": "setup", "name": spec.name, "entry": spec.entry, "package_dir": str(spec.package_dir),
            "scratch_dir": str(spec.scratch_dir), "limits": spec.limits.as_wire(), "bpf": bpf,
            "requires": sorted(spec.requires), "read_paths": list(read_paths())}

"""A plugin host running as an unprivileged uid (nobody), as plugin-host does outside a test
machine: the child then takes the non-root way to its namespaces (a user namespace of its own,
CLONE_NEWUSER|CLONE_NEWNET, then a mount namespace inside it for the tmpfs).

``python -m tests.sandbox_nobody_host TMPDIR`` (started as root) compiles the filter, becomes
uid and gid 65534, probes the layers and starts the inspect plugin requiring every layer the
probe found working; prints one JSON line.

One artefact of this machine: its interpreter lives under /root (mode 0700), which nobody could
not even execute. The helper keeps CAP_DAC_READ_SEARCH as an ambient capability so that the
child can exec it and load its bootstrap; the child drops it with every other capability before
any plugin code runs (the test checks the child holds none).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.plugin_host.sandbox import (
    LAYERS,
    Child,
    Limits,
    SandboxSpec,
    SandboxUnavailable,
    compile_filter,
    probe_layers,
)

PLUGINS = Path(__file__).resolve().parent / "plugins"
NOBODY = 65534
CAP_DAC_READ_SEARCH = 2
LIMITS = Limits(memory_mb=256, cpu_s=30, open_files=64, file_size_mb=1, processes=64, scratch_mb=4)


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def become_nobody() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(8, 1, 0, 0, 0) != 0:  # PR_SET_KEEPCAPS: keep the permitted set across setresuid
        raise OSError(ctypes.get_errno(), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    data = (_Data * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = 1 << CAP_DAC_READ_SEARCH
    if libc.capset(ctypes.byref(_Header(0x20080522, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    if libc.prctl(47, 2, CAP_DAC_READ_SEARCH, 0, 0) != 0:  # PR_CAP_AMBIENT_RAISE
        raise OSError(ctypes.get_errno(), "PR_CAP_AMBIENT_RAISE")


async def _nothing(op: str, args: dict[str, Any]) -> Any:
    return None


async def run(tmp: Path) -> dict[str, Any]:
    bpf = compile_filter()
    become_nobody()
    out: dict[str, Any] = {"host": [os.getuid(), os.geteuid()], "probe": await probe_layers(bpf, timeout=20)}
    working = frozenset(layer for layer in LAYERS if out["probe"][layer] is None)
    scratch = tmp / "scratch"
    scratch.mkdir()
    spec = SandboxSpec(name="nobody", package_dir=PLUGINS / "inspect", entry="plugin", scratch_dir=scratch,
                       limits=LIMITS, requires=frozenset(LAYERS))
    try:
        child = await Child.start(spec, bpf=bpf, on_log=lambda s, line: None, start_timeout=20)
    except SandboxUnavailable as exc:
        out["all_required"] = {"layer": exc.layer, "reason": exc.reason}
        spec = SandboxSpec(name="nobody", package_dir=PLUGINS / "inspect", entry="plugin", scratch_dir=scratch,
                           limits=LIMITS, requires=working)
        child = await Child.start(spec, bpf=bpf, on_log=lambda s, line: None, start_timeout=20)
    out["layers"] = child.layers
    for function in ("ids", "capabilities", "fds", "environ"):
        out[function] = await child.call(function, None, timeout=20, on_request=_nothing)
    out["stopped"] = (await child.stop()).reason
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(Path(sys.argv[1])))))

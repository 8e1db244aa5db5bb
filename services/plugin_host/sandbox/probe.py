"""Host side: which layers this machine can apply, found by starting a real sandboxed child.

Nothing is inferred from kernel versions or files in /proc: a child applies every layer it can,
says which applied, and then checks from inside what it can see for itself (no_new_privs and
the seccomp mode through prctl, its address-space limit, that "/" is unreadable (Landlock), that
it may not even signal plugin-host (Landlock scopes), that its scratch is the tmpfs of the size
asked). A layer that did not apply is tried once more in a child that requires it, which
refuses with the kernel's reason in plain words.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Final

from .exits import ChildGone, PluginFailed, RequestDenied, SandboxUnavailable
from .process import Child
from .spec import LAYERS, Limits, SandboxSpec

PROBE_LIMITS: Final = Limits(memory_mb=256, cpu_s=5, open_files=32, file_size_mb=1, processes=1, scratch_mb=1)

PROBE_PLUGIN: Final = '''\
"""The layer probe: what the sandbox looks like from inside."""
import ctypes
import os
import resource

import curvemesh_plugin as cp


@cp.function()
def observe(args):
    libc = ctypes.CDLL(None, use_errno=True)
    seen = {"no_new_privs": libc.prctl(39, 0, 0, 0, 0) == 1,   # PR_GET_NO_NEW_PRIVS
            "seccomp": libc.prctl(21, 0, 0, 0, 0) == 2,        # PR_GET_SECCOMP: filter mode
            "rlimits": resource.getrlimit(resource.RLIMIT_AS)[0] == args["memory"]}
    try:
        os.listdir("/")
        seen["landlock"] = False
    except PermissionError:
        seen["landlock"] = True
    try:
        os.kill(os.getppid(), 0)
        seen["landlock_scope"] = False
    except PermissionError:
        seen["landlock_scope"] = True
    vfs = os.statvfs(".")
    seen["tmpfs"] = vfs.f_blocks * vfs.f_frsize == args["scratch"]
    return seen
'''


async def _refuse(op: str, args: dict[str, Any]) -> Any:
    raise RequestDenied("DENIED", "the probe asks for nothing")


def _ignore(stream: str, line: str) -> None:
    return None


async def probe_layers(bpf: bytes, *, timeout: float = 10.0) -> dict[str, str | None]:
    """Every layer -> None when it works on this machine, else why not (plain words)."""
    with tempfile.TemporaryDirectory(prefix="curvemesh-probe-") as tmp:
        package = Path(tmp, "probe")
        package.mkdir()
        (package / "layer_probe.py").write_text(PROBE_PLUGIN, encoding="utf-8")

        def spec(requires: frozenset[str], n: int) -> SandboxSpec:
            scratch = Path(tmp, f"scratch-{n}")
            scratch.mkdir(mode=0o700)
            return SandboxSpec(name="layer-probe", package_dir=package, entry="layer_probe", scratch_dir=scratch,
                               limits=PROBE_LIMITS, requires=requires)

        try:
            child = await Child.start(spec(frozenset(), 0), bpf=bpf, on_log=_ignore, start_timeout=timeout)
        except (ChildGone, SandboxUnavailable) as exc:
            why = exc.exit.detail if isinstance(exc, ChildGone) else exc.reason
            return dict.fromkeys(LAYERS, f"no sandboxed child could start here: {why}")
        try:
            seen = await child.call("observe", {"memory": PROBE_LIMITS.memory_mb * 1024 * 1024,
                                                "scratch": PROBE_LIMITS.scratch_mb * 1024 * 1024},
                                    timeout=timeout, on_request=_refuse)
        except (ChildGone, PluginFailed) as exc:
            seen = {"probe": str(exc)}
        finally:
            await child.stop()
        result: dict[str, str | None] = {}
        for n, layer in enumerate(LAYERS, start=1):
            if not child.layers.get(layer):
                result[layer] = await _why(spec(frozenset({layer}), n), bpf, timeout)
            elif "probe" in seen:
                result[layer] = f"the probe could not look from inside: {seen['probe']}"[:200]
            elif seen.get(layer) is False:
                result[layer] = "it reported the layer applied, but from inside it is not in force"
            else:
                result[layer] = None
        return result


async def _why(spec: SandboxSpec, bpf: bytes, timeout: float) -> str:
    """The reason a child that requires the layer gives for refusing to start."""
    try:
        child = await Child.start(spec, bpf=bpf, on_log=_ignore, start_timeout=timeout)
    except SandboxUnavailable as exc:
        return exc.reason or "the kernel refused it"
    except ChildGone as exc:
        return f"a child requiring it did not start: {exc.exit.detail}"
    await child.stop()
    return "it did not apply in one child and did in the next"

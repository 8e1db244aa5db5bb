"""A plugin host whose own process runs under a seccomp filter that refuses some system calls,
the way a container runtime's default profile refuses unshare and mount: on such a machine some
sandbox layers really cannot be applied (the kernel says no), with no fake anywhere.

``python -m tests.sandbox_denying_host MODE TMPDIR`` loads the refusal for MODE, then probes
the layers, starts the good plugin requiring the refused layer, and starts it again requiring
nothing; prints one JSON line with what happened (test_plugin_sandbox_unavailable.py).
"""

from __future__ import annotations

import asyncio
import errno
import json
import sys
from pathlib import Path
from typing import Any

import pyseccomp

from services.plugin_host.sandbox import (
    Child,
    Limits,
    SandboxSpec,
    SandboxUnavailable,
    compile_filter,
    probe_layers,
)

PLUGINS = Path(__file__).resolve().parent / "plugins"
LIMITS = Limits(memory_mb=256, cpu_s=30, open_files=64, file_size_mb=1, processes=8, scratch_mb=4)
#: What each mode refuses, and the layer it takes away.
MODES = {
    "netns": ("netns", [("unshare", errno.EPERM, ())]),
    "landlock": ("landlock", [("landlock_create_ruleset", errno.ENOSYS, ())]),
    "seccomp": ("seccomp", [("prctl", errno.EINVAL, (pyseccomp.Arg(0, pyseccomp.EQ, 22),)),  # PR_SET_SECCOMP
                            ("seccomp", errno.ENOSYS, ())]),
}


def refuse(rules: list[tuple[str, int, tuple[Any, ...]]]) -> None:
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name, err, args in rules:
        flt.add_rule(pyseccomp.ERRNO(err), name, *args)
    flt.load()


async def run(mode: str, tmp: Path) -> dict[str, Any]:
    bpf = compile_filter()
    layer, rules = MODES[mode]
    refuse(rules)
    out: dict[str, Any] = {"probe": await probe_layers(bpf, timeout=20)}

    def spec(name: str, requires: frozenset[str]) -> SandboxSpec:
        scratch = tmp / name
        scratch.mkdir()
        return SandboxSpec(name=name, package_dir=PLUGINS / "good", entry="plugin", scratch_dir=scratch,
                           limits=LIMITS, requires=requires)

    logs: list[str] = []
    try:
        child = await Child.start(spec("strict", frozenset({layer})), bpf=bpf, on_log=lambda s, line: logs.append(line),
                                  start_timeout=20)
    except SandboxUnavailable as exc:
        out["required"] = {"layer": exc.layer, "reason": exc.reason, "imported": "good plugin imported" in logs}
    else:
        out["required"] = {"started": child.layers}
        await child.stop()
    child = await Child.start(spec("lenient", frozenset()), bpf=bpf, on_log=lambda s, line: None, start_timeout=20)
    out["lenient"] = {"layers": child.layers,
                      "ping": await child.call("ping", 1, timeout=20, on_request=_nothing)}
    stopped = await child.stop()
    out["lenient"]["stopped"] = stopped.reason
    return out


async def _nothing(op: str, args: dict[str, Any]) -> Any:
    return None


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(sys.argv[1], Path(sys.argv[2])))))

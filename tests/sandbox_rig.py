"""Starting real sandboxed plugin children for the tests (tests/plugins/<name>/plugin.py).

Every child a test starts is stopped when the test ends; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.plugin_host.sandbox import Child, ExitInfo, Limits, SandboxSpec, compile_filter

PLUGINS = Path(__file__).resolve().parent / "plugins"
LIMITS = Limits(memory_mb=256, cpu_s=30, open_files=64, file_size_mb=4, processes=8, scratch_mb=8)
START_TIMEOUT = 10.0
CALL_TIMEOUT = 10.0
WAIT = 10.0


@functools.cache
def bpf() -> bytes:
    return compile_filter()


@dataclass
class Store:
    """What a plugin's requests reach: a dict per (store, category), and every request seen."""

    data: dict[tuple[str, str, bytes], bytes] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        self.seen.append((op, args))
        store, action = op.split(".")
        if action == "put":
            self.data[(store, args["category"], args["key"])] = args["value"]
            return None
        if action == "get":
            return self.data.get((store, args["category"], args["key"]))
        rows = sorted((key, value) for (s, c, key), value in self.data.items()
                      if s == store and c == args["category"] and key.startswith(args["prefix"]))
        return [[key, value] for key, value in rows[: args["limit"]]]


class Rig:
    """Starts plugins from tests/plugins with a scratch directory each, records their output."""

    def __init__(self, tmp: Path, bpf: bytes) -> None:
        self.tmp = tmp
        self.bpf = bpf
        self.children: list[Child] = []
        self.logs: dict[str, list[tuple[str, str]]] = {}
        self.store = Store()

    def spec(self, plugin: str, *, name: str | None = None, limits: Limits = LIMITS,
             requires: frozenset[str] = frozenset(), **options: Any) -> SandboxSpec:
        name = name or plugin.replace("_", "-")
        scratch = self.tmp / f"scratch-{name}"
        scratch.mkdir(mode=0o700, exist_ok=True)
        return SandboxSpec(name=name, package_dir=PLUGINS / plugin, entry="plugin", scratch_dir=scratch,
                           limits=limits, requires=requires, **options)

    async def start(self, plugin: str, **options: Any) -> Child:
        spec = self.spec(plugin, **options)
        log = self.logs.setdefault(spec.name, [])
        child = await Child.start(spec, bpf=self.bpf, on_log=lambda stream, line: log.append((stream, line)),
                                  start_timeout=START_TIMEOUT)
        self.children.append(child)
        return child

    async def call(self, child: Child, function: str, args: Any = None, *, timeout: float = CALL_TIMEOUT,
                   on_request: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None) -> Any:
        return await child.call(function, args, timeout=timeout, on_request=on_request or self.store)

    async def close(self) -> None:
        for child in self.children:
            await asyncio.wait_for(child.stop(grace=1.0), WAIT)


async def gone(child: Child) -> ExitInfo:
    """The child's exit, within WAIT seconds."""
    return await asyncio.wait_for(child.wait(), WAIT)


def fds_open() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}

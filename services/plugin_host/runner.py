"""One plugin's life: started in its sandbox, called, restarted with backoff, disabled, stopped.

A :class:`Runner` owns at most one sandboxed child process (:class:`.sandbox.Child`) at a time.
Before every start the installed copy of the package is verified again (signature and content hash:
a file changed on disk since installing refuses to run) and the layers its manifest requires are
checked against what this kernel applies (a missing one disables the plugin: never run weaker).

Whatever ends the child other than plugin-host stopping it is a failure (:mod:`.failures`): audited
as ``plugin.killed`` with the reason (a quota, a sandbox rule, a flood, a protocol violation, a
crash), which raises the ``plugin_faults`` alert; the plugin restarts after a backoff, or is
disabled after repeated failures. A function that ends in a refusal of the kernel (a
``PermissionError``: Landlock or seccomp said no) counts as breaking a rule: the child is killed.
Nothing a child does raises out of here into plugin-host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from shared import AuditRecorder, MeshError, NotFound, PluginsConfig, Unavailable
from shared.plugins import Manifest, PackageRefused, parse_manifest, verify_package

from .bridge import Bridge, Person
from .failures import FailureBook
from .grants import CapabilityDenied, check_request, may_receive
from .logbook import Logbook
from .sandbox import Child, ChildGone, ExitInfo, Limits, PluginFailed, RequestDenied, SandboxSpec, SandboxUnavailable
from .shelf import Shelf
from .store import Installed

log = structlog.get_logger("plugin-host")

EVENT_QUEUE = 100
MAX_ERROR = 500


@dataclass
class Deps:
    """What every runner shares with the service."""

    settings: PluginsConfig
    shelf: Shelf
    logbook: Logbook
    recorder: AuditRecorder
    call: Callable[..., Awaitable[Any]]
    clock: Callable[[], float]
    bpf: bytes
    layers: dict[str, str | None]
    disable: Callable[[str, str], None]   # persist "disabled" with a reason


class Runner:
    """The running side of one installed plugin."""

    def __init__(self, installed: Installed, deps: Deps) -> None:
        self.installed = installed
        self.manifest: Manifest = parse_manifest(installed.manifest)
        self.deps = deps
        self.name = installed.name
        self.bridge = Bridge(self.name, deps.call)
        settings = deps.settings
        self.book = FailureBook(settings.max_failures, settings.failure_window_s, settings.restart_backoff_min_s,
                                settings.restart_backoff_max_s)
        self.state = "stopped"   # starting | running | backoff | stopped | disabled
        self.child: Child | None = None
        self.reason: str | None = installed.disabled_reason
        self.last_exit: dict[str, Any] | None = None
        self.restart_at: float | None = None
        self.events_dropped = 0
        self._violation: ExitInfo | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._restart: asyncio.TimerHandle | None = None
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(EVENT_QUEUE)
        self._start_lock = asyncio.Lock()
        #: Set once the current child's end has been handled (recorded, restart or disable decided).
        self._settled = asyncio.Event()

    # -- starting and stopping --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the plugin (after verifying its package again); a refusal disables it."""
        async with self._start_lock:
            if self.state in ("running", "starting"):
                return
            self.state, self.restart_at = "starting", None
            problem = await self._startable()
            if problem is not None:
                self._disable(problem)
                return
            spec = self._spec()
            try:
                child = await Child.start(spec, bpf=self.deps.bpf, on_log=self.deps.logbook.writer(self.name),
                                          start_timeout=self.deps.settings.start_timeout_s)
            except SandboxUnavailable as exc:
                self._disable(f"the sandbox layer {exc.layer} it requires cannot be applied here ({exc.reason})")
                return
            except ChildGone as gone:
                self.state = "stopped"
                self._failed(gone.exit)
                return
            self.child, self.state, self._violation = child, "running", None
            self._settled = asyncio.Event()
            self._spawn(self._watch(child))
            self._spawn(self._deliver(child))
            self.deps.logbook.note(self.name, f"started (pid {child.pid})")
            try:
                self._record("plugin.started", "ok", pid=child.pid,
                             layers=",".join(sorted(k for k, v in child.layers.items() if v)))
            except MeshError:
                # Audit is fail-closed: a plugin whose start cannot be recorded does not run.
                log.warning("plugin start not recorded (audit spool); stopped", plugin=self.name)
                self.child, self.state = None, "stopped"
                with contextlib.suppress(Exception):
                    await child.stop(grace=0.0)

    async def _startable(self) -> str | None:
        missing = sorted(layer for layer in self.manifest.requires if self.deps.layers.get(layer, "unknown layer"))
        if missing:
            why = "; ".join(f"{layer}: {self.deps.layers.get(layer) or 'unknown'}" for layer in missing)
            return f"this machine cannot apply the sandbox layers it requires ({why})"
        try:
            verified = await asyncio.to_thread(verify_package, Path(self.installed.directory),
                                               self.deps.settings.publishers)
        except PackageRefused as exc:
            return f"its installed package no longer verifies ({exc.reason}: {exc.message})"
        if not hmac.compare_digest(verified.content_hash, self.installed.content_hash):
            return "its installed package is not the content that was approved (content hash differs)"
        return None

    def _spec(self) -> SandboxSpec:
        q, s = self.manifest.quotas, self.deps.settings
        return SandboxSpec(name=self.name, package_dir=Path(self.installed.directory), entry=self.manifest.entry,
                           scratch_dir=self.deps.shelf.scratch(self.name),
                           limits=Limits(memory_mb=q.memory_mb, cpu_s=q.cpu_s, open_files=q.open_files,
                                         file_size_mb=q.file_size_mb, processes=q.processes, scratch_mb=q.scratch_mb),
                           requires=self.manifest.requires, max_message_bytes=s.max_message_bytes,
                           messages_per_s=s.messages_per_s, log_bytes_per_s=s.log_bytes_per_s)

    async def stop(self, state: str = "stopped") -> None:
        """Stop the child (if any) and stay in ``state``; no failure is counted."""
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        self.state, self.restart_at = state, None
        child, self.child = self.child, None
        if child is not None:
            with contextlib.suppress(Exception):
                await child.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.deps.shelf.clear_scratch(self.name)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, child: Child) -> None:
        settled = self._settled
        try:
            exit_info = await child.wait()
            if self.child is not child:
                return  # stopped on purpose (stop() cleared it first)
            self.child = None
            self.deps.shelf.clear_scratch(self.name)
            self._failed(self._violation or exit_info)
        finally:
            settled.set()

    async def _after_gone(self) -> Unavailable:
        """Once the failure of the child that just went is handled: what to tell the caller."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._settled.wait(), 5.0)
        return self._unavailable()

    # -- failures ------------------------------------------------------------------------------

    def _failed(self, exit_info: ExitInfo) -> None:
        now = self.deps.clock()
        self.last_exit = {"reason": exit_info.reason, "detail": exit_info.detail, "at": now}
        delay = self.book.failed(now)
        self.deps.logbook.note(self.name, f"stopped: {exit_info.reason} ({exit_info.detail})")
        try:
            self._record("plugin.killed", "failure", reason=exit_info.reason, detail=exit_info.detail,
                         failures=self.book.recent(now), backoff_s=delay)
        except MeshError:
            log.warning("plugin failure not recorded (audit spool)", plugin=self.name, reason=exit_info.reason)
        if delay is None:
            self._disable(f"disabled after {self.deps.settings.max_failures} failures within "
                          f"{self.deps.settings.failure_window_s:g} s; the last: {exit_info.reason}")
            return
        self.state, self.restart_at = "backoff", now + delay
        self._restart = asyncio.get_running_loop().call_later(delay, lambda: self._spawn(self.start()))

    def _disable(self, reason: str) -> None:
        self.state, self.reason, self.restart_at = "disabled", reason, None
        self.deps.logbook.note(self.name, f"disabled: {reason}")
        with contextlib.suppress(MeshError):
            self._record("plugin.disabled", "failure", reason=reason[:300])
        self.deps.disable(self.name, reason)

    def _record(self, event: str, outcome: str, **details: Any) -> None:
        self.deps.recorder.record(event, None, outcome, target=f"plugin:{self.name}", plugin=self.name,
                                  version=self.installed.version, subject=f"plugin:{self.name}", **details)

    async def _kill_for(self, child: Child, reason: str, detail: str) -> None:
        self._violation = ExitInfo(reason=reason, detail=detail[:200], returncode=None)
        with contextlib.suppress(Exception):
            await child.stop(grace=0.0)

    # -- calls and events ------------------------------------------------------------------------

    def _unavailable(self) -> Unavailable:
        if self.state == "disabled":
            return Unavailable(f"plugin {self.name} is disabled ({self.reason}); meshctl plugins enable {self.name}")
        if self.state == "backoff" and self.restart_at is not None:
            wait = max(0.0, self.restart_at - self.deps.clock())
            last = (self.last_exit or {}).get("reason", "a failure")
            return Unavailable(f"plugin {self.name} was stopped ({last}); it restarts in {wait:.0f} s, retry then")
        return Unavailable(f"plugin {self.name} is {self.state}; retry shortly")

    async def call(self, function: str, args: Any, person: Person | None) -> dict[str, Any]:
        """``{ok: true, value}`` or ``{ok: false, error}`` (the function raised);
        :class:`Unavailable` when the plugin is not running or was stopped meanwhile."""
        child = self.child
        if child is None or self.state != "running":
            raise self._unavailable()
        if function not in child.functions:
            raise NotFound(f"plugin {self.name} has no function {function!r}; it has: "
                           f"{', '.join(child.functions) or 'none'}")
        try:
            value = await child.call(function, args, timeout=self.manifest.quotas.call_timeout_s,
                                     on_request=functools.partial(self._request, person))
        except ChildGone:
            raise await self._after_gone() from None
        except PluginFailed as failed:
            if failed.denied:
                await self._kill_for(child, "sandbox_denied", f"the kernel refused an operation ({failed.type_name})")
                raise await self._after_gone() from None
            return {"ok": False, "error": f"{failed.type_name}: {failed.message}"[:MAX_ERROR]}
        return {"ok": True, "value": value}

    def offer_event(self, topic: str, body: Any) -> bool:
        """Queue an event on ``topic`` when the plugin is granted it and handles it; False when not."""
        child = self.child
        if child is None or not may_receive(self.manifest.capabilities, topic):
            return False
        if not any(topic.startswith(prefix) for prefix in child.topics):
            return False
        try:
            self._events.put_nowait((topic, body))
        except asyncio.QueueFull:
            self.events_dropped += 1
            return False
        return True

    async def _deliver(self, child: Child) -> None:
        while True:
            topic, body = await self._events.get()
            try:
                await child.event(topic, body, timeout=self.manifest.quotas.call_timeout_s,
                                  on_request=functools.partial(self._request, None))
            except ChildGone:
                return
            except PluginFailed as failed:
                if failed.denied:
                    await self._kill_for(child, "sandbox_denied",
                                         f"the kernel refused an operation ({failed.type_name})")
                    return
                self.deps.logbook.note(self.name, f"event {topic[:64]} failed: {failed.type_name}")

    async def _request(self, person: Person | None, op: str, args: dict[str, Any]) -> Any:
        """A request from the plugin: checked against its grants, then run by the bridge."""
        try:
            request = check_request(self.manifest.capabilities, op, args)
            return await self.bridge.run(request, person)
        except CapabilityDenied as denied:
            if denied.code == "FORBIDDEN":
                with contextlib.suppress(MeshError):
                    self._record("plugin.denied", "denied", op=op if isinstance(op, str) else "?",
                                 grant=denied.grant or None, reason=denied.message[:300])
            raise RequestDenied(denied.code, denied.message) from None

    def view(self) -> dict[str, Any]:
        child = self.child
        return {"state": self.state, "pid": child.pid if child is not None else None,
                "functions": list(child.functions) if child is not None else [],
                "layers_applied": dict(child.layers) if child is not None else {},
                "failures": self.book.recent(self.deps.clock()), "restart_at": self.restart_at,
                "last_exit": self.last_exit, "disabled_reason": self.reason if self.state == "disabled" else None,
                "events_dropped": self.events_dropped}

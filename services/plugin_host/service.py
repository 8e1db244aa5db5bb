"""The plugin-host service: signed, capability-scoped plugins in kernel-sandboxed processes (docs/plugins.md).

Handlers, by concern:

- ``call`` (here): a service calls a plugin's function, optionally for a person (their token);
- ``plugins.*`` (admin.py): operators install, inspect, list, show, enable, disable, remove plugins
  and read their logs (``meshctl plugins``).

At start plugin-host compiles its seccomp filter once (libseccomp, :mod:`.sandbox`) and starts a
real probe child that applies every sandbox layer, so what ``meshctl plugins list`` reports is what
this kernel does, not what it should. Each enabled plugin then runs as its own child process
(:mod:`.runner`): no key, token or secret in it, no descriptor but its socket and stdio, limited by
rlimits, no-new-privs, seccomp, Landlock and a network namespace. Everything it asks for goes
through its grants (:mod:`.grants`) and, for a person's data, authz and the person's consent
(:mod:`.bridge`). Installed plugins, version floors and logs live in plugin-host's own SQLCipher
database (:mod:`.store`); plugins run only while it is open (the mesh unsealed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from shared import (
    AuditRecorder,
    Forbidden,
    MeshConfig,
    MeshError,
    MeshHome,
    NotFound,
    Readiness,
    RequestContext,
    Sealed,
    Service,
    handler,
    mesh_config,
)
from shared.keeper import DatabaseKeeper

from .admin import PluginAdmin
from .bridge import Person
from .events import EventFeed
from .logbook import Logbook
from .runner import Deps, Runner
from .sandbox import compile_filter, probe_layers
from .schema import PluginCall
from .shelf import Shelf
from .store import Installed, PluginDB

log = structlog.get_logger("plugin-host")

CALL_TIMEOUT_S: Final = 5.0


class PluginHost(PluginAdmin, Service):
    """Mesh name ``plugin-host``; handlers: ``call``, ``plugins.*``, ``health``."""

    name = "plugin-host"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        self.settings = self.config.plugins
        self.clock = clock
        self.shelf = Shelf(self.home.data / "plugin-host", self.home.root)
        self.recorder = AuditRecorder("plugin-host", self.home.spool / "plugin-host-audit.spool")
        self.keeper = DatabaseKeeper(PluginDB, self.home.data / "plugin-host" / "plugins.db", "plugins", self._call,
                                     service="plugin-host", loaded=self._loaded, sealed=self._sealed)
        self.logbook = Logbook(self.keeper.require, self.settings.log_lines, clock)
        self.layers: dict[str, str | None] = {}
        self.bpf = b""
        self.runners: dict[str, Runner] = {}
        self.feed = EventFeed(self._runner_list)
        self._background: set[asyncio.Task[None]] = set()

    async def _call(self, target: str, body: Any = None, *, timeout: float = CALL_TIMEOUT_S) -> Any:
        if self.mesh is None:
            raise Sealed("plugin-host is not connected to the mesh")
        return await self.mesh.call(target, body, timeout=timeout)

    async def on_start(self) -> None:
        self.shelf.prepare()
        self.bpf = await asyncio.to_thread(compile_filter)
        self.layers = await probe_layers(self.bpf)
        missing = {name: reason for name, reason in self.layers.items() if reason is not None}
        if missing:
            log.warning("sandbox layers this kernel does not apply; plugins requiring them are refused", **missing)
        self.recorder.open(self.mesh)
        self.logbook.start()
        await self.keeper.start(self.mesh.subscribe if self.mesh is not None else None)

    async def on_stop(self) -> None:
        for name in list(self.runners):
            await self.drop_runner(name)
        await self.feed.close()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.logbook.stop()
        await self.keeper.stop()
        await self.recorder.close()
        self.shelf.close()

    def readiness(self) -> Readiness:
        # A spool that could not be made durable outranks the keys: nothing may be recorded now.
        override = self.recorder.readiness or self.keeper.readiness
        return super().readiness() if override is None else override

    def db(self) -> PluginDB:
        return self.keeper.require()

    # -- runners ------------------------------------------------------------------------------

    def _deps(self) -> Deps:
        return Deps(settings=self.settings, shelf=self.shelf, logbook=self.logbook, recorder=self.recorder,
                    call=self._call, clock=self.clock, bpf=self.bpf, layers=self.layers, disable=self._persist_disabled)

    def runner_for(self, installed: Installed) -> Runner:
        runner = Runner(installed, self._deps())
        if not installed.enabled:
            runner.state = "disabled"
        return runner

    async def start_runner(self, name: str) -> None:
        runner = self.runners.get(name)
        if runner is None:
            return
        await runner.start()
        if self.mesh is not None:
            await self.feed.follow(self.mesh, runner, self.recorder)

    async def drop_runner(self, name: str) -> None:
        runner = self.runners.get(name)
        if runner is not None:
            await runner.stop("disabled" if runner.state == "disabled" else "stopped")

    def _runner_list(self) -> list[Runner]:
        return list(self.runners.values())

    def _persist_disabled(self, name: str, reason: str) -> None:
        try:
            self.db().set_enabled(name, False, reason)
        except MeshError:
            log.warning("a disabled plugin could not be recorded as disabled (database sealed)", plugin=name)

    def _loaded(self, db: PluginDB) -> None:
        """The database opened (unseal): start every enabled plugin."""
        self._spawn(self._start_all(db))

    async def _start_all(self, db: PluginDB) -> None:
        for installed in db.plugins():
            await self.drop_runner(installed.name)
            self.runners[installed.name] = self.runner_for(installed)
            if installed.enabled:
                await self.start_runner(installed.name)

    def _sealed(self) -> None:
        """The database closed (sealing): no plugin runs without it."""
        for name in list(self.runners):
            self._spawn(self.drop_runner(name))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- calls ----------------------------------------------------------------------------------

    @handler("call", request=PluginCall, concurrent=True)
    async def call(self, ctx: RequestContext, req: PluginCall) -> dict[str, Any]:
        """``plugin-host.call {plugin, function, args?, access_token?, presenter?}`` → ``{ok: true,
        value}``, or ``{ok: false, error}`` when the plugin's function raised. With ``access_token``
        (a person's, from authn) the plugin may reach that person's data through its ``userdata``
        grants, with their consent; the plugin never sees the token. ``presenter``: the key fingerprint
        of the peer that presented the token, when the caller relays it (services only).
        ``NOT_FOUND`` for an unknown plugin or function, ``UNAVAILABLE`` while it is disabled,
        restarting, or was stopped during the call (a quota or rule broken). Services and operators.
        ``meshctl plugins call NAME FUNCTION [JSON]``."""
        self.db()
        runner = self.runners.get(req.plugin)
        if runner is None:
            raise NotFound(f"no plugin {req.plugin!r} is installed (meshctl plugins list)")
        person = None
        if req.access_token is not None:
            if req.presenter is not None and ctx.role != "service":
                raise Forbidden("only a service relays a token presented to it (presenter)")
            person = Person(req.access_token, req.presenter or ctx.fingerprint)
        return await runner.call(req.function, req.args, person)


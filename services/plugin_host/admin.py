"""The operator's handlers: ``plugins.inspect``, ``install``, ``list``, ``show``, ``enable``,
``disable``, ``remove``, ``logs`` (``meshctl plugins ...``).

Installing is two steps so that what runs is what the operator saw: ``inspect`` verifies the
package (signature by a publisher listed in mesh.toml, content hash) and shows its manifest, the
grants it requests in plain words, its quotas and sandbox layers; ``install`` stages the package
again, verifies it again, and refuses unless its content hash is the one approved and it requests
no grant beyond those approved. It also refuses quotas above ``[plugins]`` limits, sandbox layers
this kernel lacks, and any version below the highest ever installed (or the same version with other
content): the floor survives ``remove``. Each install and each refusal is audited
(``plugin.installed``, ``plugin.install_refused`` with the precise reason).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared import (
    AuditRecorder,
    BadRequest,
    Forbidden,
    NoFields,
    NotFound,
    PluginsConfig,
    RequestContext,
    handler,
)
from shared.plugins import PackageRefused, VerifiedPackage, describe_quotas, stage_package, verify_package, version_key

from .events import EventFeed
from .logbook import Logbook
from .runner import Runner
from .schema import Install, Logs, PackagePath, PluginRef
from .shelf import Shelf
from .store import Installed, PluginDB


class PluginAdmin:
    """Mixed into :class:`~.service.PluginHost`, which owns the attributes declared here."""

    settings: PluginsConfig
    shelf: Shelf
    recorder: AuditRecorder
    clock: Callable[[], float]
    layers: dict[str, str | None]
    runners: dict[str, Runner]
    logbook: Logbook
    feed: EventFeed

    def db(self) -> PluginDB: ...
    def runner_for(self, installed: Installed) -> Runner: ...
    async def start_runner(self, name: str) -> None: ...
    async def drop_runner(self, name: str) -> None: ...

    @handler("plugins.inspect", request=PackagePath)
    async def inspect(self, ctx: RequestContext, req: PackagePath) -> dict[str, Any]:
        """``plugin-host.plugins.inspect {path}`` → ``{name, version, publisher, publisher_fingerprint,
        content_hash, description, entry, capabilities: [{grant, words}], quotas, requires,
        missing_layers, installed_version, problems}``: what installing ``path`` would install, verified
        (a bad package is refused and audited). ``problems`` lists what would make install refuse it.
        ``meshctl plugins install PATH`` shows this before asking for approval."""
        _operator(ctx)
        db = self.db()
        verified, staging = await self._verified(ctx, req.path)
        try:
            return self._package_view(db, verified)
        finally:
            self.shelf.discard(staging)

    @handler("plugins.install", request=Install)
    async def install(self, ctx: RequestContext, req: Install) -> dict[str, Any]:
        """``plugin-host.plugins.install {path, approve_hash, approve_capabilities, enable?}`` → the
        plugin (``plugins.show``). Refused (``BAD_REQUEST``, audited) unless the package verifies, is the
        content approved, requests only approved grants, fits the ``[plugins]`` limits and this kernel's
        sandbox, and is newer than every version installed before. An upgrade keeps the plugin's enabled
        state (and restarts it). ``meshctl plugins install PATH --approve [--enable]``."""
        _operator(ctx)
        db = self.db()
        verified, staging = await self._verified(ctx, req.path)
        try:
            manifest = verified.manifest
            if not hmac.compare_digest(verified.content_hash.encode(), req.approve_hash.encode()):
                raise PackageRefused("not_approved", "the package is not the content that was approved (its hash "
                                     "changed since it was shown); run meshctl plugins install again and review it")
            unapproved = sorted(c.text for c in manifest.capabilities if c.text not in set(req.approve_capabilities))
            if unapproved:
                raise PackageRefused("not_approved", f"the manifest requests {', '.join(unapproved)}, which was not "
                                                     "approved")
            problems = self._problems(db, verified)
            if problems:
                raise PackageRefused(problems[0][0], problems[0][1])
        except PackageRefused as exc:
            self.shelf.discard(staging)
            self._refused(ctx, req.path, exc, name=verified.manifest.name, version=verified.manifest.version)
            raise
        previous = db.plugin(manifest.name)
        floor = db.floor(manifest.name)
        enabled = req.enable or (previous is not None and previous.enabled)
        try:
            self._record_installed(ctx, verified, previous)
        except BaseException:
            self.shelf.discard(staging)
            raise
        await self.drop_runner(manifest.name)
        directory = self.shelf.keep(verified.path, manifest.name, manifest.version, verified.content_hash)
        self.shelf.discard(staging)
        manifest_text = (directory / "plugin.toml").read_text("utf-8")
        installed = Installed(manifest.name, manifest.version, verified.publisher, verified.publisher_fingerprint,
                              verified.content_hash, manifest_text, str(directory),
                              tuple(c.text for c in manifest.capabilities), self.clock(), ctx.caller, enabled, None)
        raised = floor is None or version_key(manifest.version) > version_key(floor.version)
        db.install(installed, floor_raised=raised)
        if previous is not None and previous.directory != str(directory):
            self.shelf.discard(Path(previous.directory))
        self.runners[manifest.name] = self.runner_for(installed)
        if enabled:
            await self.start_runner(manifest.name)
        return self._view(installed)

    def _record_installed(self, ctx: RequestContext, verified: VerifiedPackage, previous: Installed | None) -> None:
        manifest = verified.manifest
        self.recorder.record("plugin.installed", ctx, "ok", target=f"plugin:{manifest.name}", plugin=manifest.name,
                             version=manifest.version, publisher=verified.publisher,
                             publisher_fp=verified.publisher_fingerprint, content_hash=verified.content_hash,
                             capabilities=",".join(c.text for c in manifest.capabilities),
                             previous_version=previous.version if previous is not None else None)

    async def _verified(self, ctx: RequestContext, path: str) -> tuple[VerifiedPackage, Path]:
        """The package at ``path`` copied to staging and verified, and the staging directory (the
        caller discards it); refusals audited and raised."""
        source = Path(path)
        if not source.is_absolute():
            raise BadRequest("path: an absolute path (plugin-host runs in another working directory)")
        staging = self.shelf.new_staging()
        try:
            staged = await asyncio.to_thread(stage_package, source, staging)
            verified = await asyncio.to_thread(verify_package, staged, self.settings.publishers)
        except PackageRefused as exc:
            self.shelf.discard(staging)
            self._refused(ctx, path, exc)
            raise
        except BaseException:
            self.shelf.discard(staging)
            raise
        return verified, staging

    def _refused(self, ctx: RequestContext, path: str, exc: PackageRefused, **about: Any) -> None:
        self.recorder.record("plugin.install_refused", ctx, "denied", target=f"plugin:{about.get('name') or '?'}",
                             plugin=about.get("name"), version=about.get("version"), reason=exc.reason,
                             detail=exc.message[:300], path=path[:300])

    def _problems(self, db: PluginDB, verified: VerifiedPackage) -> list[tuple[str, str]]:
        """Why install would refuse this verified package: (reason code, message) pairs."""
        manifest, s = verified.manifest, self.settings
        problems: list[tuple[str, str]] = []
        q = manifest.quotas
        for what, value, limit in (("memory_mb", q.memory_mb, s.max_memory_mb), ("cpu_s", q.cpu_s, s.max_cpu_s),
                                   ("call_timeout_s", q.call_timeout_s, s.max_call_timeout_s)):
            if value > limit:
                problems.append(("quota", f"quotas.{what} = {value:g} exceeds [plugins] max_{what} = {limit:g}"))
        for layer in sorted(manifest.requires):
            reason = self.layers.get(layer, "not a layer this plugin-host knows")
            if reason is not None:
                problems.append(("sandbox", f"requires the sandbox layer {layer}, which this machine cannot apply "
                                            f"({reason}); it is not run weaker"))
        floor = db.floor(manifest.name)
        if floor is not None:
            if version_key(manifest.version) < version_key(floor.version):
                problems.append(("rollback", f"version {manifest.version} is older than {floor.version}, installed "
                                             "before (rollback protection; publish a newer version)"))
            elif (version_key(manifest.version) == version_key(floor.version)
                  and not hmac.compare_digest(floor.content_hash.encode(), verified.content_hash.encode())):
                problems.append(("rollback", f"version {manifest.version} was installed before with other content; "
                                             "a changed package needs a new version"))
        return problems

    def _package_view(self, db: PluginDB, verified: VerifiedPackage) -> dict[str, Any]:
        manifest = verified.manifest
        current = db.plugin(manifest.name)
        return {"name": manifest.name, "version": manifest.version, "publisher": verified.publisher,
                "publisher_fingerprint": verified.publisher_fingerprint, "content_hash": verified.content_hash,
                "description": manifest.description, "entry": manifest.entry,
                "capabilities": [{"grant": c.text, "words": c.words()} for c in manifest.capabilities],
                "quotas": describe_quotas(manifest.quotas), "requires": sorted(manifest.requires),
                "missing_layers": sorted(layer for layer in manifest.requires if self.layers.get(layer, "?")),
                "installed_version": current.version if current is not None else None,
                "problems": [message for _, message in self._problems(db, verified)]}

    # -- the installed plugins --------------------------------------------------------------------

    @handler("plugins.list")
    async def list_plugins(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``plugin-host.plugins.list`` → ``{layers: {name: {available, reason}}, plugins: [{name,
        version, publisher, enabled, state, failures, ...}]}``: every installed plugin and which sandbox
        layers this kernel applies. ``meshctl plugins list``."""
        _operator(ctx)
        installed = self.db().plugins()
        layers = {name: {"available": reason is None, "reason": reason} for name, reason in self.layers.items()}
        return {"layers": layers, "plugins": [self._view(p) for p in installed]}

    @handler("plugins.show", request=PluginRef)
    async def show(self, ctx: RequestContext, req: PluginRef) -> dict[str, Any]:
        """``plugin-host.plugins.show {name}`` → the plugin: version, publisher, content hash, grants in
        plain words, quotas, required and applied layers, state, failures, last exit. ``meshctl plugins
        show NAME`` adds the person's consent grants to ``plugin:NAME`` (from authz)."""
        _operator(ctx)
        return self._view(self._installed(req.name))

    @handler("plugins.enable", request=PluginRef)
    async def enable(self, ctx: RequestContext, req: PluginRef) -> dict[str, Any]:
        """``plugin-host.plugins.enable {name}`` → the plugin, started (its failure count cleared).
        ``meshctl plugins enable NAME``."""
        _operator(ctx)
        installed = self._installed(req.name)
        self.recorder.record("plugin.enabled", ctx, "ok", target=f"plugin:{installed.name}", plugin=installed.name,
                             version=installed.version)
        self.db().set_enabled(installed.name, True, None)
        await self.drop_runner(installed.name)
        self.runners[installed.name] = self.runner_for(self._installed(req.name))
        await self.start_runner(installed.name)
        return self._view(self._installed(req.name))

    @handler("plugins.disable", request=PluginRef)
    async def disable(self, ctx: RequestContext, req: PluginRef) -> dict[str, Any]:
        """``plugin-host.plugins.disable {name}`` → the plugin, stopped; it stays installed and stopped
        across restarts until enabled. ``meshctl plugins disable NAME``."""
        _operator(ctx)
        installed = self._installed(req.name)
        self.recorder.record("plugin.disabled", ctx, "ok", target=f"plugin:{installed.name}", plugin=installed.name,
                             version=installed.version, reason="disabled by an operator")
        self.db().set_enabled(installed.name, False, "disabled by an operator")
        await self.drop_runner(installed.name)
        self.runners[installed.name] = self.runner_for(self._installed(req.name))
        return self._view(self._installed(req.name))

    @handler("plugins.remove", request=PluginRef)
    async def remove(self, ctx: RequestContext, req: PluginRef) -> dict[str, Any]:
        """``plugin-host.plugins.remove {name}`` → ``{removed, name, version}``: stopped, its package and
        logs deleted; its data in storage stays, and so does its version floor (an older version is
        still refused). ``meshctl plugins remove NAME``."""
        _operator(ctx)
        installed = self._installed(req.name)
        self.recorder.record("plugin.removed", ctx, "ok", target=f"plugin:{installed.name}", plugin=installed.name,
                             version=installed.version)
        await self.drop_runner(installed.name)
        self.runners.pop(installed.name, None)
        self.db().remove(installed.name)
        self.shelf.discard(Path(installed.directory))
        return {"removed": True, "name": installed.name, "version": installed.version}

    @handler("plugins.logs", request=Logs)
    async def logs(self, ctx: RequestContext, req: Logs) -> dict[str, Any]:
        """``plugin-host.plugins.logs {name, limit?}`` → ``{name, lines: [{at, stream, line}]}``: the last
        ``limit`` (1-1000) lines the plugin wrote to stdout or stderr, and plugin-host's own notes about
        it (``host``: started, stopped and why). ``meshctl plugins logs NAME [-n N]``."""
        _operator(ctx)
        if not 1 <= req.limit <= 1000:
            raise BadRequest("limit: from 1 to 1000")
        self._installed(req.name)
        self.logbook.flush()
        return {"name": req.name, "lines": self.db().logs(req.name, req.limit)}

    def _installed(self, name: str) -> Installed:
        installed = self.db().plugin(name)
        if installed is None:
            raise NotFound(f"no plugin {name!r} is installed (meshctl plugins list)")
        return installed

    def _view(self, installed: Installed) -> dict[str, Any]:
        runner = self.runners.get(installed.name)
        manifest = runner.manifest if runner is not None else None
        view: dict[str, Any] = {
            "name": installed.name, "version": installed.version, "publisher": installed.publisher,
            "publisher_fingerprint": installed.publisher_fp, "content_hash": installed.content_hash,
            "installed_at": installed.installed_at, "installed_by": installed.installed_by,
            "enabled": installed.enabled, "disabled_reason": installed.disabled_reason}
        if manifest is not None and runner is not None:
            view |= {"description": manifest.description,
                     "capabilities": [{"grant": c.text, "words": c.words()} for c in manifest.capabilities],
                     "quotas": describe_quotas(manifest.quotas), "requires": sorted(manifest.requires),
                     **runner.view(), "events": self.feed.problems(runner)}
            view["disabled_reason"] = view["disabled_reason"] or installed.disabled_reason
        return view


def _operator(ctx: RequestContext) -> None:
    """Operators only, whatever the ACL says (it grants these to operators; this holds if it is ever
    widened by mistake)."""
    if ctx.role != "operator":
        raise Forbidden("only an operator may do this")

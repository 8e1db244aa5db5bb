"""The people rig (tests/people_rig.py) with plugin-host: a real plugin-host service in process, its
sandboxed plugins real child processes under the real kernel sandbox, its database real SQLCipher,
its records in the real audit log. A publisher key (``test``) is generated per rig and listed in
``[plugins.publishers]``; a second key (``other``) is listed too, and a third is listed nowhere.

Packages are built per test: a plugin directory from tests/host_plugins/ copied, given a manifest,
and signed for real (:mod:`shared.plugins`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import tomli_w

from services.plugin_host.service import PluginHost
from shared import MeshError, plugins

from .conftest import eventually
from .people_rig import PeopleRig, people_rig

SOURCES = Path(__file__).parent / "host_plugins"
#: The sandbox tests' plugins (escape attempts, hogs): installed through plugin-host here too.
ESCAPES = Path(__file__).parent / "plugins"

PLUGIN_CONFIG = """
[services.plugin-host]
process = "none"
keys = ["plugins"]
roles = ["user-data"]
subscribe = ["security.", "notes."]
[services.plugin-host.expose]
"*" = ["operator"]
"call" = ["service", "operator"]

[acl.identity.frontend]
publish = ["notes."]

[plugins]
restart_backoff_min_s = 0.2
restart_backoff_max_s = 0.4
start_timeout_s = 20.0
"""


class PluginRig:
    """The people rig, plugin-host, publisher keys, and helpers to build, install and call plugins."""

    def __init__(self, rig: PeopleRig, root: Path, host: PluginHost) -> None:
        self.rig = rig
        self.root = root
        self.host = host

    def __getitem__(self, name: str) -> Any:
        return self.rig[name]

    @property
    def operator(self) -> Any:
        return self.rig["meshctl"]

    def package(self, name: str, version: str = "1.0.0", capabilities: list[str] | None = None, *,
                source: str = "notes", key: str = "test", quotas: dict[str, Any] | None = None,
                requires: list[str] | None = None, sign_as: str | None = None,
                sources: Path = SOURCES) -> Path:
        """A signed package directory of ``sources/source`` named ``name`` at ``version``."""
        directory = self.root / "packages" / f"{name}-{version}-{key}"
        if directory.exists():
            shutil.rmtree(directory)
        shutil.copytree(sources / source, directory, ignore=shutil.ignore_patterns("__pycache__"))
        manifest: dict[str, Any] = {"name": name, "version": version, "publisher": sign_as or key, "entry": "plugin",
                                    "description": f"test plugin {name}",
                                    "capabilities": capabilities if capabilities is not None else CAPABILITIES}
        if quotas:
            manifest["quotas"] = quotas
        if requires is not None:
            manifest["sandbox"] = {"requires": requires}
        (directory / "plugin.toml").write_text(tomli_w.dumps(manifest))
        plugins.sign_package(directory, plugins.load_publisher_key(self.root / f"{key}.pem"), sign_as or key)
        return directory

    async def inspect(self, path: Path) -> dict[str, Any]:
        return dict(await self.operator.call("plugin-host.plugins.inspect", {"path": str(path)}, timeout=30))

    async def install(self, path: Path, *, enable: bool = True, approve: list[str] | None = None,
                      approve_hash: str | None = None) -> dict[str, Any]:
        shown = await self.inspect(path)
        grants = [c["grant"] for c in shown["capabilities"]] if approve is None else approve
        return dict(await self.operator.call("plugin-host.plugins.install", {
            "path": str(path), "approve_hash": approve_hash or shown["content_hash"],
            "approve_capabilities": grants, "enable": enable}, timeout=30))

    async def show(self, name: str) -> dict[str, Any]:
        return dict(await self.operator.call("plugin-host.plugins.show", {"name": name}, timeout=10))

    async def call(self, plugin: str, function: str, args: Any = None, *, token: str | None = None,
                   via: str = "frontend", timeout: float = 30) -> Any:
        body: dict[str, Any] = {"plugin": plugin, "function": function, "args": args}
        if token is not None:
            body["access_token"] = token
        return await self.rig[via].call("plugin-host.call", body, timeout=timeout)

    async def state(self, name: str, wanted: str, deadline: float = 30) -> dict[str, Any]:
        """The plugin's view once it is in state ``wanted``."""
        async def reached() -> dict[str, Any] | None:
            shown = await self.show(name)
            return shown if shown["state"] == wanted else None
        return dict(await eventually(reached, deadline=deadline))

    async def records(self, kind: str) -> list[dict[str, Any]]:
        """plugin-host's audit records of type ``kind`` so far, from the log itself."""
        async def drained() -> bool:
            spool = self.host.recorder.spool
            return spool is not None and len(spool) == 0
        await eventually(drained, deadline=20)
        tail = await self.operator.call("audit.tail", {"type": kind, "limit": 1000}, timeout=10)
        return list(tail["records"])


CAPABILITIES = ["storage.kv:read:summaries", "storage.kv:write:summaries", "userdata:notes:read",
                "events:subscribe:notes."]


async def code_of(awaitable: Any) -> str | None:
    try:
        await awaitable
    except MeshError as exc:
        return exc.code
    return None


@contextlib.asynccontextmanager
async def plugin_rig(root: Path, extra_config: str = "", *, plugins_config: str = "") -> AsyncIterator[PluginRig]:
    """The running rig; ``plugins_config``: lines added to its ``[plugins]`` table."""
    root.mkdir(parents=True, exist_ok=True)
    keys = {name: plugins.generate_publisher_key(root / f"{name}.pem") for name in ("test", "other", "stranger")}
    config = PLUGIN_CONFIG.replace("[plugins]\n", "[plugins]\n" + plugins_config, 1)
    config += f'\n[plugins.publishers]\ntest = "{keys["test"]}"\nother = "{keys["other"]}"\n'
    async with people_rig(root / "mesh", config + extra_config, identities={"plugin-host": "service"}) as rig:
        host = PluginHost(rig.home, rig.mesh.config)
        await rig.mesh.start_service(host)
        await eventually(lambda: rig.ready("plugin-host"), deadline=30)
        try:
            yield PluginRig(rig, root, host)
        finally:
            await host.on_stop()

"""Message types of plugin-host, checked strictly at the wire boundary (:func:`shared.message`)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

_NAME = {"max_len": 32}
_PATH = {"max_len": 4096}


@message
class PluginRef:
    name: str = field(metadata=_NAME)


@message
class PackagePath:
    """``path``: an absolute path plugin-host can read, to a package directory or archive."""

    path: str = field(metadata=_PATH)


@message
class Install:
    """``approve_hash`` and ``approve_capabilities``: what the operator was shown and approved (from
    ``plugins.inspect``); the package installed must be that very content and request nothing else.
    ``enable``: start it once installed."""

    path: str = field(metadata=_PATH)
    approve_hash: str = field(metadata={"max_len": 80})
    approve_capabilities: list[str] = field(metadata={"max_len": 256})
    enable: bool = False


@message
class Logs:
    name: str = field(metadata=_NAME)
    limit: int = 100


@message
class PluginCall:
    """``plugin-host.call``: ``args`` any msgpack value; ``access_token`` the person's token when the
    plugin may reach their data (never shown to the plugin); ``presenter`` the key fingerprint of the
    peer that presented it when the caller relays it."""

    plugin: str = field(metadata=_NAME)
    function: str = field(metadata={"max_len": 64})
    args: Any = field(default=None, metadata={"sensitive": True})
    access_token: str | None = field(default=None, metadata={"sensitive": True, "max_len": 8192})
    presenter: str | None = field(default=None, metadata={"max_len": 64})

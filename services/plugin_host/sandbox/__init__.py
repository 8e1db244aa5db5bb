"""The kernel sandbox a plugin runs in, and the protocol between plugin-host and the plugin.

Each enabled plugin runs as its own child process (:class:`Child`), started from plugin-host's
own interpreter, that the kernel confines before any plugin code runs: a network namespace of
its own and a tmpfs over its scratch directory, no capabilities, rlimits, no_new_privs, Landlock
(read-only: its own directory and the Python runtime; read-write: its scratch; no TCP; no
signals or abstract unix sockets outside its domain) and a seccomp filter (:func:`compile_filter`,
computed once by the host). It reaches nothing but plugin-host, through an inherited
``SOCK_SEQPACKET`` socketpair carrying one msgpack map per packet (frames.py). Plugins import
the SDK (sdk.py) as ``curvemesh_plugin``.

Contract for plugin-host:

- call :func:`compile_filter` once, then :func:`probe_layers` at start: it runs a real child and
  names every layer that does not work on this machine and why (None: it works);
- :meth:`Child.start` never runs a plugin weaker than ``SandboxSpec.requires``: a required layer
  that cannot be applied raises :class:`SandboxUnavailable` before the plugin's code is read;
- :meth:`Child.call` and :meth:`Child.event` run one at a time per child; requests the plugin
  makes meanwhile go to ``on_request(op, args)``, whose :class:`RequestDenied` reaches the plugin
  as ``curvemesh_plugin.Denied``, and whose other exceptions reach it only as ``UNAVAILABLE``;
- whatever a child does, it ends as an :class:`ExitInfo` (``Child.exit``, :meth:`Child.wait`),
  and a call it breaks raises :class:`ChildGone`; its own exceptions raise :class:`PluginFailed`.

The child imports this package too, so :class:`Child`, :func:`compile_filter` and
:func:`probe_layers` are loaded on first use: they pull in asyncio, subprocess and libseccomp,
which the child never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exits import ChildGone, ExitInfo, PluginFailed, RequestDenied, SandboxUnavailable
from .spec import LAYERS, Limits, SandboxSpec

if TYPE_CHECKING:
    from .probe import probe_layers
    from .process import Child
    from .seccomp_filter import compile_filter

__all__ = ["LAYERS", "Child", "ChildGone", "ExitInfo", "Limits", "PluginFailed", "RequestDenied", "SandboxSpec",
           "SandboxUnavailable", "compile_filter", "probe_layers"]

_LAZY = {"Child": "process", "compile_filter": "seccomp_filter", "probe_layers": "probe"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

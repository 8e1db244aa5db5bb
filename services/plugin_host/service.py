"""The plugin-host service.

It runs signed plugins in sandboxes (loading and sandboxing come with their issue). Until then it
registers with the broker under its own certificate and answers only ``plugin-host.health``,
inherited from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class PluginHost(Service):
    """Mesh name ``plugin-host``; handlers: ``health``."""

    name = "plugin-host"

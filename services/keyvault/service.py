"""The keyvault service.

It keeps the master key and releases purpose keys (its key hierarchy comes with the keyvault issue).
Until then it registers with the broker under its own certificate and answers only
``keyvault.health``, inherited from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Keyvault(Service):
    """Mesh name ``keyvault``; handlers: ``health``."""

    name = "keyvault"

"""The authn service.

It authenticates users and devices (accounts, tokens and MFA come with their issue). Until then it
registers with the broker under its own certificate and answers only ``authn.health``, inherited
from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Authn(Service):
    """Mesh name ``authn``; handlers: ``health``."""

    name = "authn"

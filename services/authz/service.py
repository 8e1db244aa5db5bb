"""The authz service.

It decides user- and plugin-level access (RBAC, ABAC and consent come with their issue). Until then
it registers with the broker under its own certificate and answers only ``authz.health``, inherited
from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Authz(Service):
    """Mesh name ``authz``; handlers: ``health``."""

    name = "authz"

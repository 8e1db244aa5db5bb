"""The audit service.

It keeps the tamper-evident audit log (records and checkpoints come with the audit issue). Until
then it registers with the broker under its own certificate and answers only ``audit.health``,
inherited from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Audit(Service):
    """Mesh name ``audit``; handlers: ``health``."""

    name = "audit"

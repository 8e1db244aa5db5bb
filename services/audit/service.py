"""The audit service.

It will keep the tamper-evident audit log. The pure core it will be built on is here
already (:mod:`.merkle`, :mod:`.chain`, :mod:`.proofs`: RFC 9162 Merkle trees, the hash
chain, signed checkpoints, offline bundles), but nothing stores records yet: the service
registers with the broker under its own certificate and answers only ``audit.health``,
inherited from :class:`shared.Service`; it claims nothing else. Until it accepts
records, the broker and keyvault keep their audit records in their spools.
"""

from __future__ import annotations

from shared import Service


class Audit(Service):
    """Mesh name ``audit``; handlers: ``health``."""

    name = "audit"

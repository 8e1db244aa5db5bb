"""The pairing service.

It pairs devices over a PAKE (the protocol comes with its issue). Until then it registers with the
broker under its own certificate and answers only ``pairing.health``, inherited from
:class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Pairing(Service):
    """Mesh name ``pairing``; handlers: ``health``."""

    name = "pairing"

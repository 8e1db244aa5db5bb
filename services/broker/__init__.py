"""The broker: CURVE allow-list (ZAP), identity stamping, mesh ACL, limits, registry, routing.

:class:`Broker` is what ``python -m services.broker`` runs, and what a test passes to
:class:`shared.testing.InProcessMesh` as its ``broker``.
"""

from .core import Broker

__all__ = ["Broker"]

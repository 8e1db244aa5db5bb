"""The storage service.

It guards encrypted stores (SQLCipher, DuckDB, RocksDB, files come with the storage issue). Until
then it registers with the broker under its own certificate and answers only ``storage.health``,
inherited from :class:`shared.Service`; it claims nothing else.
"""

from __future__ import annotations

from shared import Service


class Storage(Service):
    """Mesh name ``storage``; handlers: ``health``."""

    name = "storage"

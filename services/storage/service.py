"""The storage service: the companion's memories, conversations and files, encrypted at rest.

Four engines behind the mesh, each in its own module with its handlers in a mixin:

- key-value in RocksDB (:mod:`.kv`): values and names sealed by the application;
- records in SQLCipher (:mod:`.records`): msgpack documents, indexed fields;
- analytics in DuckDB (:mod:`.analytics`): encrypted per namespace, sandboxed
  read-only SELECTs;
- files (:mod:`.files`): a STREAM format (:mod:`.core.stream`), uploaded and read in pieces.

Keys, sealing and worker threads are in :mod:`.core`; re-encryption after a key rotation in
:mod:`.rotation`; backup and restore in :mod:`.archive.backup`; operator handlers in :mod:`.admin_api`.
docs/storage.md describes the formats, the namespaces and what each call guarantees.
"""

from __future__ import annotations

import shutil

from .admin_api import AdminApi
from .analytics.engine import AnalyticsApi
from .core.stream import DEFAULT_CHUNK_SIZE
from .files.engine import FilesApi, piece_bytes
from .kv.engine import KvApi
from .records.engine import RecordsApi


class Storage(KvApi, RecordsApi, AnalyticsApi, FilesApi, AdminApi):
    """Mesh name ``storage``; handlers: ``kv.*``, ``records.*``, ``analytics.*``, ``files.*``, ``status``,
    ``verify``, ``backup.*``, ``jobs``, ``health``."""

    name = "storage"

    async def on_start(self) -> None:
        """Check the message cap leaves room for file chunks, remove what an interrupted backup or
        restore left in the work directory, then start."""
        piece_bytes(self.config.broker.max_message_bytes, DEFAULT_CHUNK_SIZE)  # refuse a cap no file chunk fits
        if self.layout.work.exists():
            for leftover in self.layout.work.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        await super().on_start()

    async def on_stop(self) -> None:
        await self.jobs.close()
        await super().on_stop()

    async def seal(self, reason: str) -> None:
        """Abort open uploads (their encryption keys go with the rest), then seal."""
        if self.files is not None:
            for entry in list(self._open_uploads().values()):
                await self.run("files", self.files.abort, entry.upload)
        self._open_uploads().clear()
        await super().seal(reason)

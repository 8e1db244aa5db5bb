"""The files engine under the service: ``storage.files.put.begin|chunk|commit|abort``, ``get``,
``info``, ``list``, ``delete`` over the file store (:mod:`.store`).

Files travel in pieces so no message comes near the size cap: an upload is begun, fed pieces of at
most :data:`~.schema.FILE_PIECE_BYTES` in order, and committed; only the commit makes the file
visible, durably, replacing any file of that name. Pieces are encrypted as they arrive (the
plaintext never touches the disk). An upload belongs to the caller that began it: another caller
naming its id gets ``NOT_FOUND``. Uploads idle for :data:`UPLOAD_IDLE_S` are discarded, and a
caller may have at most :data:`MAX_UPLOADS` open. Sealing aborts every open upload: its
encryption key goes with the rest. The handlers that answer these calls on the wire are the
service's (``Storage.files_*``); they delegate here.
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from shared import NotFound, RateLimited, RequestContext, StateError

from ..core.context import StorageCore
from ..core.engine import StepwiseEngine
from ..core.keys import KeySet
from .schema import FILE_PIECE_BYTES, FileBegin, FileList, FileName, FilePiece, FileRead, FileUpload
from .store import FileStore, Upload

UPLOAD_IDLE_S: Final = 600.0
MAX_UPLOADS: Final = 8
#: Room for the envelope and the other fields of a files message beside its data.
_FRAMING: Final = 16 * 1024


def piece_bytes(max_message_bytes: int, chunk_size: int) -> int:
    """Bytes of file data per message: :data:`FILE_PIECE_BYTES`, or fewer (whole chunks) so a message
    stays within ``broker.max_message_bytes``. ``StateError`` when not even one chunk fits."""
    fits = min(FILE_PIECE_BYTES, max_message_bytes - _FRAMING) // chunk_size * chunk_size
    if fits < chunk_size:
        raise StateError(f"broker.max_message_bytes = {max_message_bytes} leaves no room for a "
                         f"{chunk_size}-byte file chunk: storage needs at least {chunk_size + _FRAMING}")
    return fits


@dataclass
class _OpenUpload:
    """An upload between ``files.put.begin`` and its commit or abort: whose, and when last used."""

    owner: str
    upload: Upload
    touched: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FilesEngine(StepwiseEngine):
    """The file store (``store``, None while sealed), the uploads open on it, and the requests over
    them. ``clock`` (monotonic seconds) times idle uploads."""

    name = "files"
    purpose = "files"
    #: Two threads: reads open their blob under the store's lock and read outside it, so one large
    #: read does not hold up the next request.
    threads = 2

    def __init__(self, core: StorageCore, clock: Callable[[], float]) -> None:
        super().__init__(core)
        self.clock = clock
        self.store: FileStore | None = None
        self._uploads: dict[str, _OpenUpload] = {}

    def _opened(self) -> FileStore:
        """The store, open: call it after :meth:`~..core.context.StorageCore.require`."""
        assert self.store is not None
        return self.store

    def _piece_bytes(self, store: FileStore) -> int:
        return piece_bytes(self.core.config.broker.max_message_bytes, store.chunk_size)

    # -- uploads ----------------------------------------------------------------------------

    async def _expire_uploads(self) -> None:
        now = self.clock()
        for upload_id in [u for u, entry in self._uploads.items() if now - entry.touched > UPLOAD_IDLE_S]:
            entry = self._uploads.pop(upload_id)
            if self.store is not None:
                await self.run(self.store.abort, entry.upload)

    def _take(self, ctx: RequestContext, upload_id: str) -> _OpenUpload:
        entry = self._uploads.get(upload_id)
        if entry is None or entry.owner != ctx.caller:
            raise NotFound("no such upload (it was committed, aborted, expired, or is not yours)")
        entry.touched = self.clock()
        return entry

    async def begin(self, ctx: RequestContext, req: FileBegin) -> dict[str, Any]:
        """Open an upload for the caller (after discarding idle ones); ``RATE_LIMITED`` past :data:`MAX_UPLOADS`."""
        self.core.require()
        await self._expire_uploads()
        if sum(entry.owner == ctx.caller for entry in self._uploads.values()) >= MAX_UPLOADS:
            raise RateLimited(f"at most {MAX_UPLOADS} uploads may be open at once; commit or abort one")
        upload = await self.run(self._opened().begin, self.keys, await self.core.access(ctx, req, "write"),
                                req.name, req.size)
        upload_id = secrets.token_hex(16)
        self._uploads[upload_id] = _OpenUpload(ctx.caller, upload, self.clock())
        return {"upload": upload_id, "piece_bytes": self._piece_bytes(self._opened())}

    async def chunk(self, ctx: RequestContext, req: FilePiece) -> dict[str, Any]:
        """Encrypt the next piece into the upload; the bytes received so far."""
        self.core.require()
        entry = self._take(ctx, req.upload)
        async with entry.lock:  # pieces are applied in the order they are answered
            received: int = await self.run(entry.upload.write, req.data)
        return {"received": received}

    async def commit(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """Make the upload the file of its name, durably."""
        self.core.require()
        entry = self._take(ctx, req.upload)
        async with entry.lock:
            self._uploads.pop(req.upload, None)
            info = await self.run(self._opened().commit, entry.upload)
        return {"name": info.name, "size": info.size, "chunks": info.chunks, "version": info.version}

    async def abort(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """Drop the upload and its partial file; works while sealed too (there is nothing to keep)."""
        entry = self._take(ctx, req.upload)
        async with entry.lock:
            self._uploads.pop(req.upload, None)
            if self.store is not None:
                await self.run(self.store.abort, entry.upload)
        return {"aborted": True}

    # -- files ------------------------------------------------------------------------------

    async def get(self, ctx: RequestContext, req: FileRead) -> dict[str, Any]:
        """The plaintext of the chunks from ``offset`` that fit one message; the bytes read are metered."""
        self.core.require()
        store = self._opened()
        ns = await self.core.access(ctx, req, "read")
        data, following = await self.run(store.read, self.keys, ns, req.name, req.offset,
                                          self._piece_bytes(store) // store.chunk_size)
        self.core.meter.add(ctx.caller, ns, len(data))
        return {"data": data, "next": following}

    async def info(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """The file's checked metadata; ``NOT_FOUND`` without such a file."""
        self.core.require()
        info = await self.run(self._opened().info, self.keys, await self.core.access(ctx, req, "read"),
                              req.name)
        if info is None:
            raise NotFound("no such file")
        return {"name": info.name, "size": info.size, "chunks": info.chunks, "version": info.version,
                "created": info.created}

    async def list(self, ctx: RequestContext, req: FileList) -> dict[str, Any]:
        """One page of the caller's files, sorted by name."""
        self.core.require()
        infos, cursor = await self.run(self._opened().list, self.keys,
                                       await self.core.access(ctx, req, "read"), req.prefix, req.after,
                                       req.limit)
        return {"files": [{"name": i.name, "size": i.size, "created": i.created} for i in infos], "next": cursor}

    async def delete(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """Remove the file durably."""
        self.core.require()
        deleted = await self.run(self._opened().delete, self.keys,
                                 await self.core.access(ctx, req, "delete"), req.name)
        return {"deleted": deleted}

    # -- the engine's life and whole-store work --------------------------------------------

    async def open_store(self) -> None:
        # Opening the store clears what a crash left of uploads and rotations.
        self.store = FileStore(self.core.layout.files)

    async def close(self) -> None:
        """Abort every open upload (its encryption key goes with the rest), then forget the keys."""
        if self.store is not None:
            for entry in list(self._uploads.values()):
                await self.run(self.store.abort, entry.upload)
        self._uploads.clear()
        if self.store is not None:
            await self.run(self.store.forget_keys)
        self.store = None

    async def count(self, version: int, pool: str | None = None) -> int:
        return await self.core.run(pool or self.name, self._opened().count, version)

    async def rotate_step(self, version: int) -> int:
        return await self.run(self._opened().rotate_step, self.keys, version)

    async def verify(self) -> builtins.list[str]:
        return await self.run(self._opened().verify, self.keys)

    async def is_empty(self) -> bool:
        return await self.run(self._opened().is_empty)

    async def snapshot(self, work: Path) -> None:
        """Every blob, still encrypted, in ``work/files``."""
        await self.run(self._opened().snapshot, work / self.name)

    async def restore_from(self, work: Path, source_keys: KeySet) -> int:
        # An empty store leaves no file in the archive, so its directory is not extracted.
        source = work / self.name
        if not source.exists():
            return 0
        return await self.run(self._opened().import_from, source, source_keys, self.keys)

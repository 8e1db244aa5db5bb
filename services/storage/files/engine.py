"""File handlers (:mod:`.store`): ``storage.files.put.begin|chunk|commit|abort``, ``get``, ``info``,
``list``, ``delete``.

Files travel in pieces so no message comes near the size cap: an upload is begun, fed pieces of at
most :data:`~.schema.FILE_PIECE_BYTES` in order, and committed; only the commit makes the file
visible, durably, replacing any file of that name. Pieces are encrypted as they arrive (the
plaintext never touches the disk). An upload belongs to the caller that began it: another caller
naming its id gets ``NOT_FOUND``. Uploads idle for :data:`UPLOAD_IDLE_S` are discarded, and a
caller may have at most :data:`MAX_UPLOADS` open.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from shared import NotFound, RateLimited, RequestContext, StateError, handler

from ..core.context import StorageCore
from .schema import FILE_PIECE_BYTES, FileBegin, FileList, FileName, FilePiece, FileRead, FileUpload
from .store import Upload

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
    owner: str
    upload: Upload
    touched: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FilesApi(StorageCore):
    """Handlers over :class:`~.store.FileStore`. ``clock`` (monotonic seconds) times idle uploads."""

    clock: Callable[[], float] = staticmethod(time.monotonic)
    _uploads: dict[str, _OpenUpload] | None = None

    def _open_uploads(self) -> dict[str, _OpenUpload]:
        if self._uploads is None:
            self._uploads = {}
        return self._uploads

    async def _expire_uploads(self) -> None:
        now, uploads = self.clock(), self._open_uploads()
        for upload_id in [u for u, entry in uploads.items() if now - entry.touched > UPLOAD_IDLE_S]:
            entry = uploads.pop(upload_id)
            if self.files is not None:
                await self.run("files", self.files.abort, entry.upload)

    def _take(self, ctx: RequestContext, upload_id: str) -> _OpenUpload:
        entry = self._open_uploads().get(upload_id)
        if entry is None or entry.owner != ctx.caller:
            raise NotFound("no such upload (it was committed, aborted, expired, or is not yours)")
        entry.touched = self.clock()
        return entry

    @handler("files.put.begin", request=FileBegin, concurrent=True)
    async def files_begin(self, ctx: RequestContext, req: FileBegin) -> dict[str, Any]:
        """``storage.files.put.begin {subject, category, name, size?}`` → ``{upload, piece_bytes}``."""
        self.require()
        assert self.files is not None
        await self._expire_uploads()
        uploads = self._open_uploads()
        if sum(entry.owner == ctx.caller for entry in uploads.values()) >= MAX_UPLOADS:
            raise RateLimited(f"at most {MAX_UPLOADS} uploads may be open at once; commit or abort one")
        upload = await self.run("files", self.files.begin, self.keys["files"],
                                self.namespace(ctx, req.subject, req.category), req.name, req.size)
        upload_id = secrets.token_hex(16)
        uploads[upload_id] = _OpenUpload(ctx.caller, upload, self.clock())
        return {"upload": upload_id, "piece_bytes": piece_bytes(self.config.broker.max_message_bytes,
                                                                self.files.chunk_size)}

    @handler("files.put.chunk", request=FilePiece, concurrent=True)
    async def files_chunk(self, ctx: RequestContext, req: FilePiece) -> dict[str, Any]:
        """``storage.files.put.chunk {upload, data}`` → ``{received}`` (bytes so far)."""
        self.require()
        entry = self._take(ctx, req.upload)
        async with entry.lock:  # pieces are applied in the order they are answered
            received: int = await self.run("files", entry.upload.write, req.data)
        return {"received": received}

    @handler("files.put.commit", request=FileUpload, concurrent=True)
    async def files_commit(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """``storage.files.put.commit {upload}`` → ``{name, size, chunks, version}`` once durable."""
        self.require()
        assert self.files is not None
        entry = self._take(ctx, req.upload)
        async with entry.lock:
            self._open_uploads().pop(req.upload, None)
            info = await self.run("files", self.files.commit, entry.upload)
        return {"name": info.name, "size": info.size, "chunks": info.chunks, "version": info.version}

    @handler("files.put.abort", request=FileUpload, concurrent=True)
    async def files_abort(self, ctx: RequestContext, req: FileUpload) -> dict[str, Any]:
        """``storage.files.put.abort {upload}`` → ``{aborted: true}``: the partial file is deleted."""
        entry = self._take(ctx, req.upload)
        async with entry.lock:
            self._open_uploads().pop(req.upload, None)
            if self.files is not None:
                await self.run("files", self.files.abort, entry.upload)
        return {"aborted": True}

    @handler("files.get", request=FileRead, concurrent=True)
    async def files_get(self, ctx: RequestContext, req: FileRead) -> dict[str, Any]:
        """``storage.files.get {subject, category, name, offset?}`` → ``{data, next}``: the plaintext of
        chunks from ``offset`` (at most 256 KiB); pass ``next`` as ``offset`` until it is None."""
        self.require()
        assert self.files is not None
        ns = self.namespace(ctx, req.subject, req.category)
        data, following = await self.run("files", self.files.read, self.keys["files"], ns, req.name, req.offset,
                                         piece_bytes(self.config.broker.max_message_bytes, self.files.chunk_size)
                                         // self.files.chunk_size)
        self.meter.add(ns, len(data))
        return {"data": data, "next": following}

    @handler("files.info", request=FileName, concurrent=True)
    async def files_info(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """``storage.files.info {subject, category, name}`` → ``{name, size, chunks, version, created}``."""
        self.require()
        assert self.files is not None
        info = await self.run("files", self.files.info, self.keys["files"],
                              self.namespace(ctx, req.subject, req.category), req.name)
        if info is None:
            raise NotFound("no such file")
        return {"name": info.name, "size": info.size, "chunks": info.chunks, "version": info.version,
                "created": info.created}

    @handler("files.list", request=FileList, concurrent=True)
    async def files_list(self, ctx: RequestContext, req: FileList) -> dict[str, Any]:
        """``storage.files.list {subject, category, prefix?, after?, limit?}`` → ``{files: [{name, size,
        created}], next}``, sorted by name."""
        self.require()
        assert self.files is not None
        infos, cursor = await self.run("files", self.files.list, self.keys["files"],
                                       self.namespace(ctx, req.subject, req.category), req.prefix, req.after,
                                       req.limit)
        return {"files": [{"name": i.name, "size": i.size, "created": i.created} for i in infos], "next": cursor}

    @handler("files.delete", request=FileName, concurrent=True)
    async def files_delete(self, ctx: RequestContext, req: FileName) -> dict[str, Any]:
        """``storage.files.delete {subject, category, name}`` → ``{deleted}`` once durable."""
        self.require()
        assert self.files is not None
        deleted = await self.run("files", self.files.delete, self.keys["files"],
                                 self.namespace(ctx, req.subject, req.category), req.name)
        return {"deleted": deleted}

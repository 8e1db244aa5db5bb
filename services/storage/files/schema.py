"""Wire messages of ``storage.files.*`` (checked strictly by :func:`shared.message`).

Each request that names a file names its ``category`` and its access fields (``...access``:
``subject?``, ``token?``, ``presenter?``, ``purpose?``), from which :mod:`..core.access` decides the
namespace. An upload's later messages name only the upload, which
belongs to the caller that began it. File names and contents carry user data: they are marked
sensitive, and the log redaction processor never lets them through.
"""

from __future__ import annotations

from dataclasses import field

from shared import message

from ..core.namespace import CATEGORY_FIELD, PRESENTER_FIELD, PURPOSE_FIELD, SUBJECT_FIELD, TOKEN_FIELD

#: Bytes of file content one ``files.put.chunk`` carries, and one ``files.get`` returns, at most.
FILE_PIECE_BYTES = 256 * 1024


@message
class FileName:
    """``storage.files.info`` / ``storage.files.delete {category, ...access, name}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    name: str = field(metadata={"sensitive": True, "max_len": 255})


@message
class FileBegin:
    """``storage.files.put.begin {category, ...access, name, size?}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    name: str = field(metadata={"sensitive": True, "max_len": 255})
    size: int | None = None


@message
class FilePiece:
    """``storage.files.put.chunk {upload, data}``: pieces in order, each at most 256 KiB."""

    upload: str = field(metadata={"max_len": 64})
    data: bytes = field(metadata={"sensitive": True, "max_len": FILE_PIECE_BYTES})


@message
class FileUpload:
    """``storage.files.put.commit`` / ``storage.files.put.abort {upload}``."""

    upload: str = field(metadata={"max_len": 64})


@message
class FileRead:
    """``storage.files.get {category, ...access, name, offset?}``: ``offset`` is a chunk index."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    name: str = field(metadata={"sensitive": True, "max_len": 255})
    offset: int = 0


@message
class FileList:
    """``storage.files.list {category, ...access, prefix?, after?, limit?}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    prefix: str = field(default="", metadata={"sensitive": True, "max_len": 255})
    after: str | None = field(default=None, metadata={"sensitive": True, "max_len": 255})
    limit: int = 100

"""Wire messages of the storage service (checked strictly by :func:`shared.message`).

Every user-data request names its ``subject`` (the user the data belongs to) and ``category``;
with the caller's authenticated identity they make the namespace (:class:`~.core.namespace.Namespace`).
Fields that carry user data (keys, values, documents, rows, queries, file names and contents) are
marked sensitive: the log redaction processor never lets them through.
"""

from __future__ import annotations

from dataclasses import field

from shared import message

_DATA = {"sensitive": True}
_SUBJECT = {"max_len": 128, "sensitive": True}
_CATEGORY = {"max_len": 32}
_IDENT = {"max_len": 63}

#: Bytes of file content one ``files.put.chunk`` carries, and one ``files.get`` returns, at most.
FILE_PIECE_BYTES = 256 * 1024


# -- files ----------------------------------------------------------------------------------

@message
class FileName:
    """``storage.files.info`` / ``storage.files.delete {subject, category, name}``."""

    subject: str = field(metadata=_SUBJECT)
    category: str = field(metadata=_CATEGORY)
    name: str = field(metadata={"sensitive": True, "max_len": 255})


@message
class FileBegin:
    """``storage.files.put.begin {subject, category, name, size?}``."""

    subject: str = field(metadata=_SUBJECT)
    category: str = field(metadata=_CATEGORY)
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
    """``storage.files.get {subject, category, name, offset?}``: ``offset`` is a chunk index."""

    subject: str = field(metadata=_SUBJECT)
    category: str = field(metadata=_CATEGORY)
    name: str = field(metadata={"sensitive": True, "max_len": 255})
    offset: int = 0


@message
class FileList:
    """``storage.files.list {subject, category, prefix?, after?, limit?}``."""

    subject: str = field(metadata=_SUBJECT)
    category: str = field(metadata=_CATEGORY)
    prefix: str = field(default="", metadata={"sensitive": True, "max_len": 255})
    after: str | None = field(default=None, metadata={"sensitive": True, "max_len": 255})
    limit: int = 100


# -- operations (operators) -----------------------------------------------------------------

@message
class BackupCreate:
    """``storage.backup.create {passphrase?}``."""

    passphrase: str | None = field(default=None, metadata={"sensitive": True, "max_len": 1024})


@message
class BackupOpen:
    """``storage.backup.verify`` / ``storage.backup.restore {archive, passphrase?, force?}``:
    ``archive`` is a file name inside ``<home>/backups`` (meshctl copies the operator's file there)."""

    archive: str = field(metadata={"max_len": 255})
    passphrase: str | None = field(default=None, metadata={"sensitive": True, "max_len": 1024})
    force: bool = False


@message
class JobId:
    """``storage.jobs {job}``."""

    job: str = field(metadata={"max_len": 64})

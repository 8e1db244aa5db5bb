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

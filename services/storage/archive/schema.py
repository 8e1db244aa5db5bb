"""Wire messages of the operator calls ``storage.backup.*`` and ``storage.jobs`` (checked strictly
by :func:`shared.message`).

Passphrases are marked sensitive: the log redaction processor never lets them through. An archive
is named by its file name inside ``<home>/backups``, never by a path.
"""

from __future__ import annotations

from dataclasses import field

from shared import message


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

"""Wire messages of ``storage.kv.*`` (checked strictly by :func:`shared.message`).

Each request names its ``subject`` (the user the data belongs to) and ``category``; with the
caller's authenticated identity they make the namespace (:class:`~..core.namespace.Namespace`).
Record names and values carry user data: they are marked sensitive, and the log redaction
processor never lets them through.
"""

from __future__ import annotations

from dataclasses import field

from shared import message

from ..core.namespace import CATEGORY_FIELD, SUBJECT_FIELD


@message
class KvKey:
    """``storage.kv.get`` / ``storage.kv.delete {subject, category, key}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    key: bytes = field(metadata={"sensitive": True, "max_len": 1024})


@message
class KvPut:
    """``storage.kv.put {subject, category, key, value}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    key: bytes = field(metadata={"sensitive": True, "max_len": 1024})
    value: bytes = field(metadata={"sensitive": True, "max_len": 512 * 1024})


@message
class KvScan:
    """``storage.kv.scan {subject, category, prefix?, after?, limit?}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    prefix: bytes = field(default=b"", metadata={"sensitive": True, "max_len": 1024})
    after: bytes | None = field(default=None, metadata={"sensitive": True, "max_len": 1024})
    limit: int = 100

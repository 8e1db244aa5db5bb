"""Wire messages of ``storage.kv.*`` (checked strictly by :func:`shared.message`).

Each request names its ``category`` and its access fields (``...access``: ``subject?``,
``token?``, ``presenter?``, ``purpose?``), from which :mod:`..core.access` decides the namespace.
Record names and values carry user data: they are marked sensitive, and the log redaction
processor never lets them through.
"""

from __future__ import annotations

from dataclasses import field

from shared import message

from ..core.namespace import CATEGORY_FIELD, PRESENTER_FIELD, PURPOSE_FIELD, SUBJECT_FIELD, TOKEN_FIELD


@message
class KvKey:
    """``storage.kv.get`` / ``storage.kv.delete {category, ...access, key}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    key: bytes = field(metadata={"sensitive": True, "max_len": 1024})


@message
class KvPut:
    """``storage.kv.put {category, ...access, key, value}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    key: bytes = field(metadata={"sensitive": True, "max_len": 1024})
    value: bytes = field(metadata={"sensitive": True, "max_len": 512 * 1024})


@message
class KvScan:
    """``storage.kv.scan {category, ...access, prefix?, after?, limit?}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    prefix: bytes = field(default=b"", metadata={"sensitive": True, "max_len": 1024})
    after: bytes | None = field(default=None, metadata={"sensitive": True, "max_len": 1024})
    limit: int = 100

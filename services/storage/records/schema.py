"""Wire messages of ``storage.records.*`` (checked strictly by :func:`shared.message`).

Each request names its ``category`` and its access fields (``...access``: ``subject?``,
``token?``, ``presenter?``, ``purpose?``), from which :mod:`..core.access` decides the namespace.
Documents and ``where`` conditions carry user data: they are marked sensitive, and the log
redaction processor never lets them through. Collection names and ids are not user data.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

from ..core.namespace import CATEGORY_FIELD, IDENT_FIELD, PRESENTER_FIELD, PURPOSE_FIELD, SUBJECT_FIELD, TOKEN_FIELD


@message
class Collection:
    """``storage.records.collection {category, ...access, collection, indexed}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    indexed: list[str] = field(default_factory=list, metadata={"max_len": 16})


@message
class RecordInsert:
    """``storage.records.insert {category, ...access, collection, doc}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    doc: dict[str, Any] = field(metadata={"sensitive": True, "max_len": 4096})


@message
class RecordId:
    """``storage.records.get`` / ``storage.records.delete {category, ...access, collection, id}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    id: str = field(metadata={"max_len": 64})


@message
class RecordUpdate:
    """``storage.records.update {category, ...access, collection, id, doc}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    id: str = field(metadata={"max_len": 64})
    doc: dict[str, Any] = field(metadata={"sensitive": True, "max_len": 4096})


@message
class RecordQuery:
    """``storage.records.query {category, ...access, collection, where?, after?, limit?}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    where: dict[str, Any] = field(default_factory=dict, metadata={"sensitive": True, "max_len": 16})
    after: str | None = field(default=None, metadata={"max_len": 64})
    limit: int = 100

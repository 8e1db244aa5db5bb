"""Wire messages of ``storage.records.*`` (checked strictly by :func:`shared.message`).

Each request names its ``subject`` (the user the data belongs to) and ``category``; with the
caller's authenticated identity they make the namespace (:class:`~..core.namespace.Namespace`).
Documents and ``where`` conditions carry user data: they are marked sensitive, and the log
redaction processor never lets them through. Collection names and ids are not user data.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

from ..core.namespace import CATEGORY_FIELD, IDENT_FIELD, SUBJECT_FIELD


@message
class Collection:
    """``storage.records.collection {subject, category, collection, indexed}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    indexed: list[str] = field(default_factory=list, metadata={"max_len": 16})


@message
class RecordInsert:
    """``storage.records.insert {subject, category, collection, doc}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    doc: dict[str, Any] = field(metadata={"sensitive": True, "max_len": 4096})


@message
class RecordId:
    """``storage.records.get`` / ``storage.records.delete {subject, category, collection, id}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    id: str = field(metadata={"max_len": 64})


@message
class RecordUpdate:
    """``storage.records.update {subject, category, collection, id, doc}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    id: str = field(metadata={"max_len": 64})
    doc: dict[str, Any] = field(metadata={"sensitive": True, "max_len": 4096})


@message
class RecordQuery:
    """``storage.records.query {subject, category, collection, where?, after?, limit?}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    collection: str = field(metadata=IDENT_FIELD)
    where: dict[str, Any] = field(default_factory=dict, metadata={"sensitive": True, "max_len": 16})
    after: str | None = field(default=None, metadata={"max_len": 64})
    limit: int = 100

"""Wire messages of ``storage.analytics.*`` (checked strictly by :func:`shared.message`).

Each request names its ``subject`` (the user the data belongs to) and ``category``; with the
caller's authenticated identity they make the namespace (:class:`~..core.namespace.Namespace`).
Rows, queries and their parameters carry user data: they are marked sensitive, and the log
redaction processor never lets them through. Table and column names are not user data.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

from ..core.namespace import CATEGORY_FIELD, IDENT_FIELD, SUBJECT_FIELD


@message
class AnalyticsScope:
    """``storage.analytics.tables {subject, category}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)


@message
class AnalyticsTable:
    """``storage.analytics.table {subject, category, table, columns: [[name, type], ...]}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    table: str = field(metadata=IDENT_FIELD)
    columns: list[list[str]] = field(metadata={"max_len": 64})


@message
class AnalyticsIngest:
    """``storage.analytics.ingest {subject, category, table, rows: [[...], ...]}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    table: str = field(metadata=IDENT_FIELD)
    rows: list[list[Any]] = field(metadata={"sensitive": True, "max_len": 10_000})


@message
class AnalyticsQuery:
    """``storage.analytics.query {subject, category, sql, params?, max_rows?}``."""

    subject: str = field(metadata=SUBJECT_FIELD)
    category: str = field(metadata=CATEGORY_FIELD)
    sql: str = field(metadata={"sensitive": True, "max_len": 16384})
    params: list[Any] = field(default_factory=list, metadata={"sensitive": True, "max_len": 256})
    max_rows: int = 1000

"""Wire messages of ``storage.analytics.*`` (checked strictly by :func:`shared.message`).

Each request names its ``category`` and its access fields (``...access``: ``subject?``,
``token?``, ``presenter?``, ``purpose?``), from which :mod:`..core.access` decides the namespace.
Rows, queries and their parameters carry user data: they are marked sensitive, and the log
redaction processor never lets them through. Table and column names are not user data.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from shared import message

from ..core.namespace import CATEGORY_FIELD, IDENT_FIELD, PRESENTER_FIELD, PURPOSE_FIELD, SUBJECT_FIELD, TOKEN_FIELD


@message
class AnalyticsScope:
    """``storage.analytics.tables {category, ...access}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)


@message
class AnalyticsTable:
    """``storage.analytics.table {category, ...access, table, columns: [[name, type], ...]}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    table: str = field(metadata=IDENT_FIELD)
    columns: list[list[str]] = field(metadata={"max_len": 64})


@message
class AnalyticsIngest:
    """``storage.analytics.ingest {category, ...access, table, rows: [[...], ...]}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    table: str = field(metadata=IDENT_FIELD)
    rows: list[list[Any]] = field(metadata={"sensitive": True, "max_len": 10_000})


@message
class AnalyticsQuery:
    """``storage.analytics.query {category, ...access, sql, params?, max_rows?}``."""

    category: str = field(metadata=CATEGORY_FIELD)
    subject: str | None = field(default=None, metadata=SUBJECT_FIELD)
    token: str | None = field(default=None, metadata=TOKEN_FIELD)
    presenter: str | None = field(default=None, metadata=PRESENTER_FIELD)
    purpose: str | None = field(default=None, metadata=PURPOSE_FIELD)
    sql: str = field(metadata={"sensitive": True, "max_len": 16384})
    params: list[Any] = field(default_factory=list, metadata={"sensitive": True, "max_len": 256})
    max_rows: int = 1000

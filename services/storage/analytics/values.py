"""Values crossing between callers and DuckDB: column specs, query parameters, ingest rows, results.

Contract:

- :func:`check_columns` admits 1 to :data:`MAX_COLUMNS` distinct identifier names, each typed one
  of :data:`TYPES`; :func:`check_params` admits at most :data:`MAX_PARAMS` scalar parameters.
- :func:`encode_rows` checks every cell against its column type before anything runs, and its
  errors name the row and column, never the value; :func:`insert_sql` is the one statement that
  stores them, made only of names validated before they get here.
- :func:`to_wire` turns what DuckDB returns into values msgpack carries (times as ISO strings,
  intervals as seconds, integers beyond 64 bits, decimals and UUIDs as strings).

Pure functions, no DuckDB instance: split out of :mod:`.sandbox`, which re-exports every public name
here, so ``sandbox.encode_rows`` and the others keep working.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from decimal import Decimal
from typing import Any, Final

from shared import BadRequest

from ..core.namespace import check_ident

__all__ = ["MAX_COLUMNS", "MAX_PARAMS", "TYPES", "check_columns", "check_params", "encode_rows", "insert_sql",
           "to_wire"]

MAX_COLUMNS: Final = 64
MAX_PARAMS: Final = 256
TYPES: Final = frozenset({"BIGINT", "DOUBLE", "VARCHAR", "BOOLEAN", "TIMESTAMP", "BLOB", "DATE"})
_INT64: Final = (-(2**63), 2**63 - 1)


def check_columns(spec: object) -> list[tuple[str, str]]:
    """``[(name, TYPE)]`` from a caller's column list; :class:`BadRequest` naming what is wrong."""
    if not isinstance(spec, list) or not 1 <= len(spec) <= MAX_COLUMNS:
        raise BadRequest(f"a table has 1 to {MAX_COLUMNS} columns")
    out = []
    for column in spec:
        if not isinstance(column, list | tuple) or len(column) != 2:
            raise BadRequest("each column is a [name, type] pair")
        name, kind = check_ident(column[0], "a column name"), column[1]
        if not isinstance(kind, str) or kind.upper() not in TYPES:
            raise BadRequest(f"column {name!r}: the type must be one of {', '.join(sorted(TYPES))}")
        out.append((name, kind.upper()))
    if len({name for name, _ in out}) != len(out):
        raise BadRequest("column names must be distinct")
    return out


def check_params(params: object) -> None:
    """Query parameters: at most :data:`MAX_PARAMS` scalars."""
    if not isinstance(params, list | tuple) or len(params) > MAX_PARAMS:
        raise BadRequest(f"params must be a list of at most {MAX_PARAMS} values")
    if not all(v is None or isinstance(v, bool | int | float | str | bytes) for v in params):
        raise BadRequest("query parameters must be null, booleans, numbers, strings or bytes")


# -- results --------------------------------------------------------------------------


def to_wire(value: Any) -> Any:
    """``value`` as something msgpack carries: times as ISO strings, decimals and UUIDs as strings,
    intervals as seconds, integers beyond 64 bits as strings, nested lists and maps converted."""
    if value is None or isinstance(value, bool | float | str | bytes):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value < 2**64 else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


# -- ingest ---------------------------------------------------------------------------


def insert_sql(table: str, columns: list[tuple[str, str]]) -> str:
    """One INSERT of every row in a single JSON parameter (see :func:`encode_rows`). ``table``,
    column names and types were validated (identifiers, :data:`TYPES`) before they get here."""
    exprs = [f"from_base64(r[{i}])" if kind == "BLOB" else f"CAST(r[{i}] AS {kind})"
             for i, (_, kind) in enumerate(columns, start=1)]
    names = ", ".join(f'"{name}"' for name, _ in columns)
    return (f'INSERT INTO "{table}" ({names}) SELECT {", ".join(exprs)} '  # noqa: S608 - validated names only
            """FROM (SELECT unnest(from_json(?, '[["VARCHAR"]]')) AS r)""")


def encode_rows(columns: list[tuple[str, str]], rows: list[Any]) -> str:
    """The rows as one JSON array of arrays of strings (or null), checked against the column types.

    Why JSON: DuckDB's Python binding converts each bound value on its own (about 80 us a value, so
    10,000 rows of 7 columns take seconds); one string parameter parsed by DuckDB takes milliseconds
    and is just as parameterised. Every cell is checked here, so errors name the row and column
    without quoting the value. TIMESTAMP takes a datetime or an ISO 8601 string (with an offset it
    is converted to UTC; stored naive), DATE a date or ``YYYY-MM-DD``, BLOB bytes, DOUBLE any
    number (NaN and infinities allowed), BIGINT a 64-bit integer.
    """
    out = []
    for n, row in enumerate(rows):
        if not isinstance(row, list | tuple) or len(row) != len(columns):
            raise BadRequest(f"row {n} must be a list of {len(columns)} values")
        out.append([_cell(n, name, kind, value) for (name, kind), value in zip(columns, row, strict=True)])
    return json.dumps(out)


def _cell(n: int, name: str, kind: str, value: Any) -> str | None:
    if value is None:
        return None
    text = _text(kind, value)
    if text is None:
        raise BadRequest(f"row {n}, column {name!r}: not a valid {kind} value")
    return text


def _text(kind: str, value: Any) -> str | None:
    if kind == "VARCHAR":
        return value if isinstance(value, str) else None
    if isinstance(value, bool):
        return ("true" if value else "false") if kind == "BOOLEAN" else None
    if kind == "BIGINT":
        return str(value) if isinstance(value, int) and _INT64[0] <= value <= _INT64[1] else None
    if kind == "DOUBLE" and isinstance(value, int | float):
        try:
            return repr(float(value))
        except OverflowError:  # an integer beyond the range of a double
            return None
    if kind == "BLOB":
        return base64.b64encode(value).decode("ascii") if isinstance(value, bytes | bytearray) else None
    if kind == "TIMESTAMP":
        stamp = _parse(dt.datetime.fromisoformat, value) if isinstance(value, str) else value
        if not isinstance(stamp, dt.datetime):
            return None
        if stamp.tzinfo is not None:
            stamp = stamp.astimezone(dt.UTC).replace(tzinfo=None)
        return stamp.isoformat(sep=" ")
    if kind == "DATE":
        day = _parse(dt.date.fromisoformat, value) if isinstance(value, str) else value
        return day.isoformat() if isinstance(day, dt.date) and not isinstance(day, dt.datetime) else None
    return None


def _parse(parser: Any, text: str) -> Any:
    try:
        return parser(text)
    except ValueError:
        return None

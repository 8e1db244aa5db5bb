"""What SQLCipher's own checks say about a damaged database, in lines an operator can act on.

Audit and storage both keep SQLCipher databases. When a read fails with "database disk image is
malformed" the exception says nothing about where; ``PRAGMA cipher_integrity_check`` names each page
whose HMAC fails (a changed byte on disk) and SQLite's ``PRAGMA integrity_check`` names structural
damage. :func:`integrity_problems` runs both, once, for every caller.
"""

from __future__ import annotations

import re
from typing import Any, Final

#: One flipped byte can make integrity_check list every page of a tree; the first few say enough.
MAX_PROBLEMS: Final = 50
_PAGE = re.compile(r"\bpage (\d+)", re.IGNORECASE)


#: SQLCipher's check of every page's HMAC (a byte changed on disk), then SQLite's structural check.
CHECKS: Final = ("cipher_integrity_check", "integrity_check")


def integrity_problems(db: Any, limit: int = MAX_PROBLEMS, checks: tuple[str, ...] = CHECKS) -> list[str]:
    """Problems SQLCipher and SQLite find in the database behind connection ``db`` (keyed already),
    at most ``limit``, each prefixed with the check that found it; ``[]`` when every check in
    ``checks`` (a subset of :data:`CHECKS`) passes. A check that cannot even run is itself reported
    as a problem. Reads every page: off the event loop."""
    problems: list[str] = []
    for pragma in checks:
        if pragma not in CHECKS:
            raise ValueError(f"unknown integrity check {pragma!r}")
        try:
            rows = db.execute(f"PRAGMA {pragma}").fetchall()
        except Exception as exc:  # noqa: BLE001 - sqlcipher3's errors; any failure is a finding.
            problems.append(f"{pragma} failed: {type(exc).__name__}: {exc}"[:200])
            continue
        lines = [line for row in rows for line in str(row[0]).splitlines()]
        problems += [f"{pragma}: {line[:200]}" for line in lines if line != "ok"]
    return problems[:limit]


def damaged_pages(problems: list[str]) -> list[int]:
    """The page numbers the problems name, in order, without repeats."""
    pages: list[int] = []
    for problem in problems:
        for match in _PAGE.finditer(problem):
            page = int(match.group(1))
            if page not in pages:
                pages.append(page)
    return pages

"""Where in a file a Cedar statement starts, so an error names the file and the line.

Cedar's parser (through ``cedarpy``) reports what is wrong but not where. A policy file is a
sequence of statements, each ending with ``;`` outside braces, strings and comments; splitting it
there (without interpreting anything else) lets the loader parse each statement alone and name
the line the failing one starts on. This is a tokenizer for positions only: every statement is
still parsed and validated by Cedar itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement's text (its comments included) and the line its first token is on (1-based)."""

    text: str
    line: int


def statements(source: str) -> list[Statement]:
    """The statements of ``source`` in order. Text after the last ``;`` that is not only blanks and
    comments is returned as a final statement, so the parser reports it as incomplete."""
    found: list[Statement] = []
    depth, start, first, i, line = 0, 0, 0, 0, 1
    n = len(source)
    while i < n:
        c = source[i]
        if c == "\n":
            line += 1
        elif c == "/" and source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c == '"':
            i = _string_end(source, i)
            continue
        elif not c.isspace() and not first:
            first = line
        if c in "{[(":
            depth += 1
        elif c in "}])":
            depth = max(0, depth - 1)
        elif c == ";" and depth == 0:
            found.append(Statement(source[start:i + 1], first or line))
            start, first = i + 1, 0
        i += 1
    if first:
        found.append(Statement(source[start:], first))
    return found


def _string_end(source: str, i: int) -> int:
    """The index just past the string literal opening at ``i`` (or the end of the text)."""
    i += 1
    while i < len(source):
        if source[i] == "\\":
            i += 2
            continue
        if source[i] == '"':
            return i + 1
        i += 1
    return len(source)


def line_of(source: str, needle: str) -> int | None:
    """The first line (1-based) of ``source`` that contains ``needle``, ignoring comments."""
    for number, text in enumerate(source.splitlines(), 1):
        if needle in text.split("//", 1)[0]:
            return number
    return None

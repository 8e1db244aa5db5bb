"""Usernames: which strings are acceptable, and when two of them name the same person.

:func:`normalise_username` refuses strings that cannot be shown safely (controls, invisible
characters, odd spaces) and returns the NFC form, case preserved, for display. :func:`skeleton`
returns the key under which two names count as the same person; the accounts table keeps it in a
UNIQUE column, so it is deterministic and depends only on this module, the Unicode data of the
running Python and the ``confusable-homoglyphs`` table. :func:`skeleton_version` fingerprints all
three: when it changes (an upgrade of either), stored skeletons must be recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from importlib.resources import files
from typing import Final

from shared import BadRequest

MAX_CHARS: Final = 64
MAX_BYTES: Final = 256

# Categories refused anywhere in a name: controls, format characters (zero-width joiners, bidi
# overrides), surrogates, private use, unassigned, and line and paragraph separators.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# NFC shrinks a string by at most 4 code points to 1 (a base letter with three combining marks,
# or a Hangul syllable from its jamo), so longer input cannot fit and is refused before the work.
_MAX_RAW_CHARS: Final = 4 * MAX_CHARS
# The package copies the display wrappers (LEFT-TO-RIGHT and RIGHT-TO-LEFT MARK) around
# right-to-left characters from the comments of confusables.txt; they are not part of the entry.
_DISPLAY_MARKS: Final = str.maketrans("", "", "\u200e\u200f")
# Warang Citi's letters look like Latin ones in one case and like other Latin letters in the other
# (capital II like E, small ii like 7): honouring them case-insensitively would make e and 7,
# o and 6, t, y and z one letter. Its lower-case confusables are still honoured.
_WARANG_CITI: Final = range(0x118A0, 0x11900)
_MAX_ROUNDS: Final = 8


def normalise_username(raw: object) -> str:
    """Return ``raw`` in NFC, case preserved, or raise :class:`BadRequest` saying what to fix.

    Refused: a non-string; an empty name; more than 64 characters (code points, after NFC) or more
    than 256 bytes of UTF-8; control, format, surrogate, private-use and unassigned characters,
    line and paragraph separators; any space other than U+0020; a space at either end; two spaces
    in a row; a combining mark at the start (it would draw over whatever precedes the name).
    Surrounding whitespace is refused, never stripped: the name stored is the name typed.
    """
    if not isinstance(raw, str):
        raise BadRequest("username must be a string")
    if len(raw) > _MAX_RAW_CHARS:
        raise BadRequest(f"username too long: use at most {MAX_CHARS} characters")
    name = unicodedata.normalize("NFC", raw)
    if not name:
        raise BadRequest("username is empty: choose one of 1 to 64 characters")
    if len(name) > MAX_CHARS:
        raise BadRequest(f"username too long: use at most {MAX_CHARS} characters")
    for char in name:
        category = unicodedata.category(char)
        if category in _REFUSED_CATEGORIES:
            raise BadRequest(f"username contains a control or invisible character (U+{ord(char):04X}): remove it")
        if category == "Zs" and char != " ":
            raise BadRequest(f"username contains a special space (U+{ord(char):04X}): use a plain space")
    # Surrogates were refused above, so the name encodes; 64 code points are at most 256 bytes
    # today, and this keeps the byte bound true should the character limit ever rise.
    if len(name.encode("utf-8")) > MAX_BYTES:
        raise BadRequest(f"username too long: use at most {MAX_BYTES} bytes of UTF-8")
    if name[0] == " " or name[-1] == " ":
        raise BadRequest("username starts or ends with a space: remove it")
    if "  " in name:
        raise BadRequest("username contains two spaces in a row: use single spaces between words")
    if unicodedata.category(name[0]).startswith("M"):
        raise BadRequest("username starts with a combining mark: start it with a letter, digit or symbol")
    return name


def skeleton(name: str) -> str:
    """Return the key under which names that look alike collide (UTS #39 skeleton, case-insensitive).

    Rule: fold (NFKC, casefold, NFKC, drop default-ignorable characters, NFD; repeated until
    stable), replace each character by the representative of its confusable class, repeat both
    steps until nothing changes, then NFC. The classes join each entry of the UTS #39 confusables
    table (as shipped by ``confusable-homoglyphs``) with its prototype after folding both sides,
    closed over all joins; a class's representative is its smallest code point or, when a member
    is a sequence (``m`` joins ``rn``), its shortest, smallest sequence. The result is a key, not a
    name to show: ``alice`` keys as ``a11ce``.

    These collide: any change of case; NFKC compatibility forms (full-width, mathematical
    letters); cross-script look-alikes (Latin a, Cyrillic U+0430, Greek U+03B1; Latin B, Greek
    U+0392, Cyrillic U+0412); ``I``, ``l``, ``1`` and ``|``; ``0`` and ``O``; ``m`` and ``rn``.
    Accents stay significant unless the table joins the mark to something: ``josé`` and ``jose``
    differ, since U+0301 is only joined to other acute-like marks.

    Limits, by design. Comparing without case closes the table over both cases, so letters whose
    capital looks like one thing and small form like another merge. Among ASCII (pinned by the
    tests): i, l and 1 (``I`` looks like ``l``); o and 0; s and 5 (through U+01BC and U+01BD,
    tone five); n and v (Greek nu, U+039D and U+03BD); r, u and y (Greek upsilon U+03A5/U+03C5,
    gamma U+0393/U+03B3 with Cyrillic ghe U+0413/U+0433); h with n and U+0329 (Greek eta
    U+0397/U+03B7); 6 with b and U+0304. Extra collisions only refuse a new name; they never let a
    look-alike in. Not honoured, because they would merge letters wholesale: entries that need
    case in Warang Citi (capital II looks like E, small ii like 7), the case mapping of U+0345 (a
    mark that casefolds to iota, which would give every ogonek an i), and case mappings that change
    the length (ß folds to ss, so ``straße`` collides with ``strasse`` but not with the Greek
    beta U+03B2 it resembles). Compatibility characters key by their NFKC form (long s, U+017F,
    counts as s, not as the f it resembles). A sequence collides with a single character only
    when the table names it as that character's prototype (``rn`` for ``m``; no ``vv`` for ``w``).
    """
    table = _table()
    current = name
    for _ in range(_MAX_ROUNDS):
        mapped = unicodedata.normalize("NFD", "".join(table.get(char, char) for char in _fold(current)))
        if mapped == current:
            break
        current = mapped
    return unicodedata.normalize("NFC", current)


def skeleton_version() -> str:
    """A fingerprint of the skeleton rule: the Unicode version and a hash of the derived table."""
    digest = hashlib.sha256(json.dumps(sorted(_table().items()), ensure_ascii=True).encode("ascii"))
    return f"uts39-casefold/unicode-{unicodedata.unidata_version}/{digest.hexdigest()[:16]}"


def _fold(text: str) -> str:
    """NFKC-casefold, without default-ignorable characters, in NFD; repeated until stable."""
    for _ in range(_MAX_ROUNDS):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        folded = unicodedata.normalize("NFD", "".join(char for char in folded if not _ignorable(char)))
        if folded == text:
            break
        text = folded
    return text


def _ignorable(char: str) -> bool:
    """Approximately Unicode's Default_Ignorable_Code_Point: drawn as nothing, so never a difference."""
    code = ord(char)
    return (
        unicodedata.category(char) == "Cf"
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0xE0100 <= code <= 0xE01EF  # variation selectors supplement
        or 0x180B <= code <= 0x180F  # Mongolian free variation selectors
        or code in (0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0)  # grapheme joiner, Hangul fillers
    )


@functools.cache
def _table() -> dict[str, str]:
    """Map each folded character to its class representative (only those that change)."""
    # Read the package's data file directly: the package's own loader lets an environment variable
    # (CONFUSABLE_DATA) swap the table, which would silently change every stored skeleton.
    raw = json.loads((files("confusable_homoglyphs") / "confusables.json").read_text(encoding="utf-8"))
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        root = parent.setdefault(node, node)
        while root != parent[root]:
            root = parent[root]
        parent[node] = root
        return root

    for key in sorted(raw):
        for entry in raw[key]:
            left, right = key.translate(_DISPLAY_MARKS), str(entry["c"]).translate(_DISPLAY_MARKS)
            ends = _fold(left), _fold(right)
            # An entry whose side folds away (invisible characters) would join unrelated classes
            # through the empty string; none does today, and none may tomorrow.
            if not _honoured(left, right) or not all(ends):
                continue
            a, b = find(ends[0]), find(ends[1])
            if a != b:
                parent[max(a, b)] = min(a, b)

    # The classes are connected components, whatever the order of the joins, and representatives
    # are chosen from their members by value: the order of the file never shows in a skeleton.
    classes: dict[str, list[str]] = {}
    for node in sorted(parent):
        classes.setdefault(find(node), []).append(node)
    table: dict[str, str] = {}
    for members in classes.values():
        singles = [m for m in members if len(m) == 1]
        sequences = sorted((m for m in members if len(m) > 1), key=lambda m: (len(m), m))
        # A sequence that contains a member of its own class would expand forever; then the class
        # falls back to its smallest character and the sequence stays as written.
        sequences = [s for s in sequences if not set(s) & set(singles)]
        representative = sequences[0] if sequences else min(singles, default="")
        for member in singles:
            if member != representative:
                table[member] = representative
    return table


def _honoured(left: str, right: str) -> bool:
    """Whether one table entry joins two classes (see :func:`skeleton` for the exceptions)."""
    if not left or not right:
        return False
    # Compatibility characters never reach the table: folding has already replaced them.
    if unicodedata.normalize("NFKC", left) != left or unicodedata.normalize("NFKC", right) != right:
        return False
    folded = [(_fold(side), unicodedata.normalize("NFD", side)) for side in (left, right)]
    if all(f == d for f, d in folded):
        return True
    # A case mapping that changes the length (only ß to ss in this table) is a spelling rule,
    # not a look: ß keys as ss, and the β it resembles would otherwise make ss and b one letter.
    if any(len(f) != len(d) for f, d in folded):
        return False
    if any(ord(char) in _WARANG_CITI for char in left + right):
        return False
    return "\u0345" not in left + right

"""Where a caller's data lives, and the names callers give their collections, tables and fields.

A :class:`Namespace` is where data of one owner, subject and category lives. A caller's own data
has ``owner`` = the caller the broker authenticated (``RequestContext.caller``) and ``subject`` =
:data:`OWN`; a person's data has ``owner`` = :data:`PEOPLE` (no mesh identity can be called that)
and ``subject`` = the person's user id, reached only with their token and authz's decision
(:mod:`.access`). Neither owner is ever a field of the request: that is what makes another
caller's namespace unreachable (DESIGN.md invariant 2).

Identifiers (:func:`check_ident`) are the names a caller gives a records collection, an analytics
table, an indexed field or a column. Both SQL engines bind them as parameters or quote them, never
splice them raw, but they are still checked against one strict pattern first, so a name that could
confuse a statement or a log line is refused before it reaches an engine.

The ``*_FIELD`` constants are the wire metadata (:func:`shared.message`) of the fields every
user-data request carries, kept here so each engine's schema declares them the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from shared import BadRequest

#: The owner of people's data (a name no mesh identity can have: identities start with a letter).
PEOPLE: Final = "@people"
#: The subject of a caller's own data.
OWN: Final = "-"
SUBJECT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
CATEGORY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
OWNER_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,63}")
IDENT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")

#: ``subject`` names the user the data belongs to: personal, so never logged.
SUBJECT_FIELD: Final[dict[str, Any]] = {"max_len": 128, "sensitive": True}
#: ``token``: the person's access token (a bearer credential: never logged); ``presenter``: the key
#: fingerprint of the peer that presented it to a relaying service; ``purpose``: what the access is for.
TOKEN_FIELD: Final[dict[str, Any]] = {"max_len": 4096, "sensitive": True}
PRESENTER_FIELD: Final[dict[str, Any]] = {"max_len": 64}
PURPOSE_FIELD: Final[dict[str, Any]] = {"max_len": 32}
CATEGORY_FIELD: Final[dict[str, Any]] = {"max_len": 32}
#: A collection or table name (:data:`IDENT_RE` allows 63 characters).
IDENT_FIELD: Final[dict[str, Any]] = {"max_len": 63}


@dataclass(frozen=True, slots=True)
class Namespace:
    """``(owner, subject, category)``: the authenticated caller and :data:`OWN` for its own data, or
    :data:`PEOPLE` and the user id for a person's; category the kind of data (``memories``...)."""

    owner: str
    subject: str
    category: str

    def __post_init__(self) -> None:
        if self.owner != PEOPLE and not OWNER_RE.fullmatch(self.owner):
            raise BadRequest("namespace owner is not a mesh identity")
        if self.subject != OWN and not SUBJECT_RE.fullmatch(self.subject):
            raise BadRequest("subject must be 1-128 characters of letters, digits and . _ @ : + -")
        if not CATEGORY_RE.fullmatch(self.category):
            raise BadRequest("category must be 1-32 characters: lowercase letters, digits, _ and -, "
                             "starting with a letter")

    def label(self) -> bytes:
        """A canonical, unambiguous encoding: associated data and input of namespace tags."""
        label: bytes = msgpack.packb(["ns1", self.owner, self.subject, self.category], use_bin_type=True)
        return label


def check_ident(name: object, what: str) -> str:
    """``name`` if it is a valid identifier, else :class:`BadRequest` (not echoing the value)."""
    if not isinstance(name, str) or not IDENT_RE.fullmatch(name):
        raise BadRequest(f"{what} must be 1-63 characters of a-z, 0-9 and _, starting with a letter")
    return name

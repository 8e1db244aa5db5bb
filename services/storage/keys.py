"""Namespaces and the data keys storage holds in memory.

A :class:`Namespace` is where one caller's data of one subject and category lives. Its ``owner`` is
always the caller the broker authenticated (``RequestContext.caller``), never a field of the
request: that is what makes another caller's namespace unreachable (DESIGN.md invariant 2).

A :class:`KeySet` is the versions of one purpose's key (``sqlcipher``, ``duckdb``, ``rocksdb``,
``files``, ``backups``) fetched from keyvault. Keys are ``bytearray`` held here only, never written
anywhere, and wiped by :meth:`KeySet.wipe` when the mesh is sealed (invariant 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import msgpack

from shared import BadRequest
from shared.crypto import wipe

from .errors import MissingKeyError

SUBJECT_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}")
CATEGORY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
OWNER_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,63}")


@dataclass(frozen=True, slots=True)
class Namespace:
    """``(owner, subject, category)``: owner is the authenticated caller, subject the user the data
    belongs to, category the kind of data (``memories``, ``conversations``...)."""

    owner: str
    subject: str
    category: str

    def __post_init__(self) -> None:
        if not OWNER_RE.fullmatch(self.owner):
            raise BadRequest("namespace owner is not a mesh identity")
        if not SUBJECT_RE.fullmatch(self.subject):
            raise BadRequest("subject must be 1-128 characters of letters, digits and . _ @ : + -")
        if not CATEGORY_RE.fullmatch(self.category):
            raise BadRequest("category must be 1-32 characters: lowercase letters, digits, _ and -, "
                             "starting with a letter")

    def label(self) -> bytes:
        """A canonical, unambiguous encoding: associated data and input of namespace tags."""
        return msgpack.packb(["ns1", self.owner, self.subject, self.category], use_bin_type=True)


class KeySet:
    """Versions of one purpose's key. ``current`` is the version new writes use."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.current = 0
        self._keys: dict[int, bytearray] = {}

    def add(self, version: int, key: bytearray, *, current: bool = False) -> None:
        """Hold ``key`` as ``version`` (taking ownership of the bytearray)."""
        if len(key) != 32 or version < 1:
            raise ValueError("a data key is 32 bytes with a version >= 1")
        old = self._keys.get(version)
        if old is not None and old is not key:
            wipe(old)
        self._keys[version] = key
        if current or self.current == 0:
            self.current = version

    def key(self, version: int | None = None) -> bytearray:
        """The key of ``version`` (default: the current one); :class:`MissingKeyError` when not held."""
        v = self.current if version is None else version
        try:
            return self._keys[v]
        except KeyError:
            raise MissingKeyError(f"storage does not hold version {v} of its {self.purpose} key") from None

    def versions(self) -> list[int]:
        """Held versions, oldest first."""
        return sorted(self._keys)

    def has(self, version: int) -> bool:
        return version in self._keys

    def retire(self, version: int) -> None:
        """Forget ``version`` (after nothing is sealed under it any more) and wipe it."""
        if version == self.current:
            raise ValueError("the current version cannot be retired")
        key = self._keys.pop(version, None)
        if key is not None:
            wipe(key)

    def wipe(self) -> None:
        """Wipe and forget every version."""
        for key in self._keys.values():
            wipe(key)
        self._keys.clear()
        self.current = 0

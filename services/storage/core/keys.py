"""The data keys storage holds in memory, one :class:`KeySet` per purpose.

A :class:`KeySet` is the versions of one purpose's key (:data:`PURPOSES`) fetched from keyvault.
Keys are ``bytearray`` held here only, never written anywhere, and wiped by :meth:`KeySet.wipe`
when the mesh is sealed (DESIGN.md invariant 6). Which version is current moves forward when
keyvault rotates a key; older versions stay held while data is still sealed under them.

:attr:`KeySet.generation` changes whenever a version is added, replaced, retired or wiped, so a
store that caches material derived from these keys (``KvStore``) notices with one comparison and
wipes what it derived from a key that is gone.
"""

from __future__ import annotations

import hmac
from typing import Final

from shared.crypto import wipe

from .errors import MissingKeyError

#: The keyvault purposes storage fetches: one per engine, and ``backups`` for archives.
PURPOSES: Final = ("sqlcipher", "duckdb", "rocksdb", "files", "backups")


class KeySet:
    """Versions of one purpose's key. ``current`` is the version new writes use."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.current = 0
        #: Bumped by every add, retire and wipe (see the module notes).
        self.generation = 0
        self._keys: dict[int, bytearray] = {}

    def add(self, version: int, key: bytearray, *, current: bool = False) -> None:
        """Hold ``key`` as ``version`` (taking ownership of the bytearray).

        A version held already keeps its bytearray when ``key`` has the same bytes (a key fetched
        again), and ``key`` is wiped: a worker thread may be deriving from the held one at this
        moment. A version given other bytes is replaced, and the old bytes are wiped only after the
        generation changed, so a reader that derived from them while they were being zeroed finds
        the generation moved when it checks again (``KvStore`` does, before it uses what it derived)."""
        if len(key) != 32 or version < 1:
            raise ValueError("a data key is 32 bytes with a version >= 1")
        old = self._keys.get(version)
        if old is not None and old is not key and hmac.compare_digest(old, key):
            wipe(key)
            key, old = old, None
        self._keys[version] = key
        if current or self.current == 0:
            self.current = version
        self.generation += 1
        if old is not None and old is not key:
            wipe(old)

    def key(self, version: int | None = None) -> bytearray:
        """The key of ``version`` (default: the current one); :class:`MissingKeyError` when not held."""
        v = self.current if version is None else version
        try:
            return self._keys[v]
        except KeyError:
            raise MissingKeyError(f"storage does not hold version {v} of its {self.purpose} key") from None

    def snapshot(self) -> tuple[int, int, dict[int, bytearray]]:
        """``(generation, current, {version: key})`` as of one moment, for a reader on another thread
        than the one that changes the set (storage's workers read it while the event loop fetches and
        retires versions). The generation is read first, so a change made after it shows at the next
        check; the current version before the versions, which ``add`` fills before naming a current
        one; and the versions are copied in one step, so none is listed and then missing. A current
        version missing from the copy means the set was wiped meanwhile: nothing is held."""
        generation, current = self.generation, self.current
        return generation, current, dict(self._keys)

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
        self.generation += 1
        if key is not None:
            wipe(key)

    def wipe(self) -> None:
        """Forget and wipe every version (forgotten first, as in :meth:`add`)."""
        held = list(self._keys.values())
        self._keys.clear()
        self.current = 0
        self.generation += 1
        for key in held:
            wipe(key)

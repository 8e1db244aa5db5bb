"""CLI sessions and the wrong-password throttle, both on an injected clock.

A session is a random token handed to ``meshctl security login`` and bound to
the operator identity that opened it: presented by any other identity it is
worthless. Only a SHA-256 of the token is kept, in memory; nothing is written
to disk by keyvault. A session ends after ``session_idle_s`` without use, on
``meshctl security clear``, and when the mesh is sealed.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from shared import RateLimited, Unauthenticated


@dataclass
class _Session:
    identity: str
    last_used: float


class Sessions:
    def __init__(self, idle_s: float, clock: Callable[[], float]) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self._by_digest: dict[bytes, _Session] = {}

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def open(self, identity: str) -> str:
        token = secrets.token_urlsafe(32)
        self._by_digest[self._digest(token)] = _Session(identity, self.clock())
        return token

    def _live(self, token: str, identity: str) -> _Session | None:
        digest = self._digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if self.clock() - session.last_used > self.idle_s:
            del self._by_digest[digest]
            return None
        return session if session.identity == identity else None

    def use(self, token: str, identity: str) -> float:
        """Check and extend a session; its remaining seconds. :class:`Unauthenticated` if none."""
        session = self._live(token, identity)
        if session is None:
            raise Unauthenticated("no session, or it expired: run `meshctl security login`")
        session.last_used = self.clock()
        return self.idle_s

    def remaining(self, token: str, identity: str) -> float | None:
        """Seconds left without extending it, or None when there is no live session."""
        session = self._live(token, identity)
        return None if session is None else self.idle_s - (self.clock() - session.last_used)

    def clear(self, token: str) -> bool:
        return self._by_digest.pop(self._digest(token), None) is not None

    def clear_all(self) -> None:
        self._by_digest.clear()


class Throttle:
    """Growing delays after wrong passwords: base, 2 x base, 4 x base … up to a maximum."""

    def __init__(self, base_s: float, max_s: float, clock: Callable[[], float]) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self.failures = 0
        self.not_before = 0.0
        #: Attempts refused while backing off, since the last attempt that was let through.
        self.refused = 0

    def check(self) -> None:
        """Raise ``RATE_LIMITED`` while backing off (counting the refusal in :attr:`refused`)."""
        wait = self.not_before - self.clock()
        if wait > 0:
            self.refused += 1
            raise RateLimited(f"too many wrong passwords: try again in {math.ceil(wait)} s")

    def take_refused(self) -> int:
        """The refusals since the last attempt let through, counted anew from now on."""
        refused, self.refused = self.refused, 0
        return refused

    def failed(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + min(self.max_s, self.base_s * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0

"""HMAC-SHA256 keyed once, for stores that hash many short names under one key.

Keying is most of the cost of hashing a 20-byte name: :class:`KeyedHash` holds the state with the
key already absorbed (and, for :meth:`KeyedHash.extend`, a prefix such as a namespace label already
fed), and every :meth:`KeyedHash.digest` copies that state rather than keying again.

It holds OpenSSL's copy of the keyed state until :meth:`KeyedHash.close` drops it; like the AES-GCM
contexts of :class:`~shared._crypto.Sealer`, dropping frees the memory but cannot promise that it
is overwritten (the notes of :mod:`shared._crypto` list the limits of wiping in Python). After
``close`` every method raises ``ValueError``. Keys are at least 32 bytes.
"""

from __future__ import annotations

from . import hazmat
from ._crypto import KEY_BYTES

__all__ = ["KeyedHash"]


class KeyedHash:
    """HMAC-SHA256 under one key, keyed once: :meth:`digest` of ``data`` is
    ``HMAC-SHA256(key, prefix + data)``, the same bytes as ``hmac.digest``.

    :meth:`extend` makes another one with a longer prefix (a namespace label fed once, then one
    name per digest), copying the keyed state instead of keying again.
    """

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes | bytearray, prefix: bytes = b"") -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"an HMAC key is at least {KEY_BYTES} bytes, got {len(key)}")
        ctx = hazmat.hmac_sha256(key)
        ctx.update(prefix)
        self._ctx: hazmat.HMAC | None = ctx

    def extend(self, prefix: bytes) -> KeyedHash:
        """A keyed hash of ``self``'s prefix followed by ``prefix``."""
        if self._ctx is None:
            raise ValueError("this keyed hash is closed: its key was wiped")
        ctx = self._ctx.copy()
        ctx.update(prefix)
        out = KeyedHash.__new__(KeyedHash)
        out._ctx = ctx
        return out

    def digest(self, data: bytes = b"") -> bytes:
        """``HMAC-SHA256(key, prefix + data)``, 32 bytes."""
        ctx = self._ctx
        if ctx is None:
            raise ValueError("this keyed hash is closed: its key was wiped")
        ctx = ctx.copy()
        ctx.update(data)
        return ctx.finalize()

    def close(self) -> None:
        """Drop the keyed state. Idempotent."""
        self._ctx = None

    @property
    def closed(self) -> bool:
        return self._ctx is None

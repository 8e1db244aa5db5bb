"""Z85 (ZeroMQ RFC 32) decoding, for reading CURVE keys without loading libzmq.

A certificate's keys are Z85 text, and reading one (checking it, taking its fingerprint) needs only
this decoding. pyzmq's own (``zmq.utils.z85``) cannot be imported without the ``zmq`` package, which
loads libzmq and costs more than the interpreter's own start: ``meshctl status`` of a mesh that is
down reads the broker's certificate and talks to no one (issue 13). Encoding stays pyzmq's, in the
code that makes keys or speaks CURVE and has libzmq loaded anyway. Results and errors are those of
``zmq.utils.z85.decode`` (tests/test_certs.py compares the two).
"""

from __future__ import annotations

import struct
from typing import Final

#: The 85 symbols, in the order of their values (RFC 32).
_CHARS: Final = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_VALUE: Final = {symbol: value for value, symbol in enumerate(_CHARS)}


def decode(text: str | bytes | bytearray | memoryview) -> bytes:
    """The bytes Z85 ``text`` encodes: each 5 symbols are one big-endian 32-bit word.

    ValueError for text that is not ASCII or whose length is not a multiple of 5, KeyError for a
    symbol outside Z85, struct.error for a group above 2**32 - 1 (as pyzmq's decoder)."""
    if isinstance(text, str):
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("string argument should contain only ASCII characters") from None
    else:
        data = bytes(text)
    if len(data) % 5:
        raise ValueError(f"Z85 length must be multiple of 5, not {len(data)}")
    words = []
    for start in range(0, len(data), 5):
        word = 0
        for symbol in data[start:start + 5]:
            word = word * 85 + _VALUE[symbol]
        words.append(word)
    return struct.pack(f">{len(words)}I", *words)

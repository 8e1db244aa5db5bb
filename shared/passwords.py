"""Password strength: refuse a weak master password with a reason, never echoing it.

:func:`check_strength` raises :class:`~shared.BadRequest` for a password shorter than
:data:`MIN_LENGTH` characters or scored below :data:`MIN_SCORE` by zxcvbn, quoting zxcvbn's
feedback. The code is in :mod:`shared._passwords`.
"""

from __future__ import annotations

from ._passwords import MIN_LENGTH, MIN_SCORE, check_strength

__all__ = ["MIN_LENGTH", "MIN_SCORE", "check_strength"]

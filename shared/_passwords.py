"""Password strength: refuse weak master passwords, explain why, never echo them."""

from __future__ import annotations

from typing import Final

from zxcvbn import zxcvbn

from ._errors import BadRequest

MIN_LENGTH: Final = 12
MIN_SCORE: Final = 3  # zxcvbn's "safely unguessable: moderate protection from offline attack"
# zxcvbn refuses input longer than 72 characters; a longer password is scored on its
# first 72, which already decide the verdict (the length check above passed).
_SCORED_PREFIX: Final = 72


def check_strength(password: str) -> None:
    """Raise :class:`BadRequest` with a reason if ``password`` is too weak for a master key.

    The message quotes zxcvbn's feedback, never the password itself.
    """
    if len(password) < MIN_LENGTH:
        raise BadRequest(f"password too weak: use at least {MIN_LENGTH} characters")
    verdict = zxcvbn(password[:_SCORED_PREFIX])
    if verdict["score"] < MIN_SCORE:
        feedback = verdict["feedback"]
        hint = feedback.get("warning") or " ".join(feedback.get("suggestions") or []) or "it is easy to guess"
        raise BadRequest(f"password too weak: {hint}".rstrip())

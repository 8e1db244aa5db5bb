"""The error hierarchy, named by who is at fault, and its wire codes.

Every error that crosses the wire is one of these codes with a short,
human-readable message. Tracebacks and secrets never cross the wire: the
message of an error is chosen by the code that raises it, and handlers must
not put secret material in it.
"""

from __future__ import annotations

from typing import ClassVar, Final


class MeshError(Exception):
    """Base of every curvemesh error; ``code`` is its wire code."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code.lower().replace("_", " "))

    @property
    def message(self) -> str:
        return str(self.args[0])


# The caller is at fault.
class BadRequest(MeshError):
    """The request is malformed, names an unknown method, or fails its schema."""

    code = "BAD_REQUEST"


class Unauthenticated(MeshError):
    """The caller could not be authenticated (unknown or revoked certificate)."""

    code = "UNAUTHENTICATED"


class Forbidden(MeshError):
    """The caller is authenticated but not allowed to do this."""

    code = "FORBIDDEN"


class NotFound(MeshError):
    """The named thing does not exist."""

    code = "NOT_FOUND"


class Conflict(MeshError):
    """The request conflicts with the current state (for example a duplicate registration)."""

    code = "CONFLICT"


class RateLimited(MeshError):
    """The caller sent more than its rate allows."""

    code = "RATE_LIMITED"


# The callee or the mesh is at fault, or time ran out.
class Unavailable(MeshError):
    """The target is not registered, went away mid-request, or cannot take more work."""

    code = "UNAVAILABLE"


class Timeout(MeshError):
    """The deadline passed before a reply arrived."""

    code = "TIMEOUT"


class Sealed(MeshError):
    """The mesh is sealed: keys are wiped until an operator unlocks it."""

    code = "SEALED"


class ReauthRequired(MeshError):
    """The caller's sign-in is too old for this operation: the person must authenticate again
    (a sensitive operation needs a recent ``auth_time``)."""

    code = "REAUTH_REQUIRED"


class Internal(MeshError):
    """A bug or an unexpected failure on the callee's side; details stay in its local log."""

    code = "INTERNAL"


# Local errors that never cross the wire.
class ConfigError(MeshError):
    """The configuration is invalid; the message names the offending key."""

    code = "CONFIG"


class HandshakeError(MeshError):
    """The CURVE handshake with the broker failed: our certificate was refused,
    or the broker key we pinned is not the broker's."""

    code = "HANDSHAKE"


class CertificateError(MeshError):
    """A certificate or key file is malformed, unsafe, or missing."""

    code = "CERTIFICATE"


class StateError(MeshError):
    """A persistent state file is corrupt or unreadable; the message names the file.
    The process refuses to start rather than start over with fresh keys."""

    code = "STATE"


_BY_CODE: Final[dict[str, type[MeshError]]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        RateLimited,
        Unavailable,
        Timeout,
        Sealed,
        ReauthRequired,
        Internal,
    )
}

#: The codes that may appear in an ``err`` envelope.
WIRE_CODES: Final[frozenset[str]] = frozenset(_BY_CODE)


def error_from_wire(code: object, message: object) -> MeshError:
    """Rebuild the error a peer sent; an unknown code becomes :class:`Internal`."""
    text = message if isinstance(message, str) else ""
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        return Internal(f"unknown error code from peer: {code!r}"[:200])
    return cls(text[:1000])

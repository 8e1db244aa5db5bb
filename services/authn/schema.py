"""Message types of the authn service. Passwords and tokens are marked sensitive: the log redaction
never lets them through, and the schema's errors name a field, never its value."""

from __future__ import annotations

from dataclasses import field

from shared import message
from shared.tokens import MESH_AUDIENCE

_SECRET = {"sensitive": True, "max_len": 4096}
#: Who a token is for when the caller does not say: the mesh's own services.
DEFAULT_AUDIENCE = MESH_AUDIENCE
_AUDIENCE = {"max_len": 128}
#: A username as sent: the normalisation (names.py) checks the rest; this only bounds the work.
_NAME = {"max_len": 256}


@message
class Username:
    username: str = field(metadata=_NAME)


@message
class NewUser:
    username: str = field(metadata=_NAME)
    password: str = field(metadata={"sensitive": True, "max_len": 4096})


@message
class PasswordLogin:
    """``otp``: a TOTP code or a recovery code, when the account has TOTP on."""

    username: str = field(metadata=_NAME)
    password: str = field(metadata={"sensitive": True, "max_len": 4096})
    audience: str | None = field(default=None, metadata={"max_len": 128})
    otp: str | None = field(default=None, metadata={"sensitive": True, "max_len": 32})


@message
class TotpCode:
    username: str = field(metadata=_NAME)
    code: str = field(metadata={"sensitive": True, "max_len": 32})


@message
class Refresh:
    refresh_token: str = field(metadata=_SECRET)


@message
class Logout:
    access_token: str = field(metadata=_SECRET)
    audience: str = field(default=DEFAULT_AUDIENCE, metadata=_AUDIENCE)


@message
class Verify:
    """``presenter``: the key fingerprint of the peer that presented the token to the calling
    service (its ``RequestContext.fingerprint``); absent when the caller presents its own token."""

    access_token: str = field(metadata=_SECRET)
    audience: str = field(metadata={"max_len": 128})
    presenter: str | None = field(default=None, metadata={"max_len": 64})
    #: A sensitive operation: the sign-in must be more recent than ``[authn] step_up_s``.
    sensitive: bool = False


@message
class Reauth:
    """A person signing in again within a session (step-up): the session's token and the password
    (and ``otp`` when the account has TOTP on)."""

    access_token: str = field(metadata=_SECRET)
    password: str = field(metadata={"sensitive": True, "max_len": 4096})
    audience: str = field(default=DEFAULT_AUDIENCE, metadata=_AUDIENCE)
    otp: str | None = field(default=None, metadata={"sensitive": True, "max_len": 32})


@message
class SessionFilter:
    username: str | None = field(default=None, metadata=_NAME)


@message
class DeviceSessions:
    """A device's key, by its fingerprint (64 hex digits)."""

    device: str = field(metadata={"max_len": 64})


@message
class SessionRevoke:
    """Exactly one of: one session, every session of a user, every session of a device key."""

    session: str | None = field(default=None, metadata={"max_len": 64})
    username: str | None = field(default=None, metadata=_NAME)
    device: str | None = field(default=None, metadata={"max_len": 64})


@message
class PasskeyStart:
    access_token: str = field(metadata=_SECRET)
    audience: str = field(default=DEFAULT_AUDIENCE, metadata=_AUDIENCE)


@message
class PasskeyLoginBegin:
    username: str | None = field(default=None, metadata=_NAME)


@message
class PasskeyFinish:
    """``response``: the credential JSON the browser or platform returned (bounded before parsing)."""

    ceremony: str = field(metadata={"max_len": 64})
    response: str = field(metadata={"max_len": 65536})
    audience: str = field(default=DEFAULT_AUDIENCE, metadata=_AUDIENCE)
    #: login only: the password too, when the passkey is the second factor after it.
    password: str | None = field(default=None, metadata={"sensitive": True, "max_len": 4096})


@message
class PasskeyRemove:
    username: str = field(metadata=_NAME)
    credential: str = field(metadata={"max_len": 1400})

"""Message types of the keyvault service. Passwords and tokens are marked sensitive:
the log redaction processor never lets them through."""

from __future__ import annotations

from dataclasses import field

from shared import message

_SECRET = {"sensitive": True, "max_len": 1024}


@message
class Password:
    password: str = field(metadata=_SECRET)


@message
class PasswordChange:
    old_password: str = field(metadata=_SECRET)
    new_password: str = field(metadata=_SECRET)


@message
class Token:
    token: str = field(metadata=_SECRET)


@message
class Rotate:
    purpose: str = field(metadata={"max_len": 32})
    password: str = field(metadata=_SECRET)


@message
class KeyRequest:
    purpose: str = field(metadata={"max_len": 32})
    version: int | None = None


@message
class KeyReply:
    purpose: str
    version: int
    key: bytes = field(metadata={"sensitive": True})

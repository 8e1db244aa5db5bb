"""Message types of the authz service, checked strictly at the wire boundary (:func:`shared.message`).

Principals travel as ``kind:name``: ``user:<user id>``, ``service:<name>``, ``device:<name>``,
``plugin:<id>``, ``operator:<name>``. Access tokens are marked sensitive: the log redaction never
lets them through, and schema errors name the field, never its value.
"""

from __future__ import annotations

import re
from dataclasses import field
from typing import Final

from shared import BadRequest, message

from .deciding import ACTIONS, KINDS

PRINCIPAL_RE: Final = re.compile(r"(user|service|device|plugin|operator):[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PRINCIPAL = {"max_len": 80}
_NAME = {"max_len": 64}
_TOKEN = {"sensitive": True, "max_len": 4096}


def principal(text: str) -> tuple[str, str]:
    """``kind:name`` -> (kind, name), or :class:`BadRequest` saying the form."""
    if not PRINCIPAL_RE.fullmatch(text):
        raise BadRequest(f"principal must be kind:name, kind one of {', '.join(KINDS)} (service:notes, "
                         "device:phone, plugin:weather, user:<user id>)")
    kind, _, name = text.partition(":")
    return kind, name


def action(text: str) -> str:
    if text not in ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(ACTIONS)}")
    return text


@message
class Check:
    """``authz.check``: may ``principal`` do ``action`` on ``owner``'s ``category`` data, acting for
    ``user`` (the user id its token names, "" for none), for ``purpose``?"""

    principal: str = field(metadata=_PRINCIPAL)
    action: str = field(metadata={"max_len": 16})
    category: str = field(metadata={"max_len": 32})
    owner: str = field(metadata=_NAME)
    user: str = field(default="", metadata=_NAME)
    purpose: str = field(default="", metadata={"max_len": 32})


@message
class PrincipalOnly:
    principal: str | None = field(default=None, metadata=_PRINCIPAL)


@message
class RoleChange:
    principal: str = field(metadata=_PRINCIPAL)
    role: str = field(metadata={"max_len": 32})


@message
class ConsentGrant:
    """``authz.consent.grant``: the owner's own fresh ``access_token`` opens their data to
    ``grantee`` for ``categories`` and ``actions``, for ``purpose``, for ``duration_s`` seconds."""

    access_token: str = field(metadata=_TOKEN)
    grantee: str = field(metadata=_PRINCIPAL)
    categories: list[str] = field(metadata={"max_len": 32})
    actions: list[str] = field(metadata={"max_len": 3})
    purpose: str = field(metadata={"max_len": 32})
    duration_s: int | None = None


@message
class ConsentId:
    """A grant by id; ``access_token``: its owner's, when the owner (not an operator) asks."""

    grant_id: str = field(metadata={"max_len": 32})
    access_token: str | None = field(default=None, metadata=_TOKEN)


@message
class DeviceGrants:
    """A revoked device: its identity, and the sessions opened through it (authn's ids)."""

    device: str = field(metadata=_NAME)
    sessions: list[str] = field(default_factory=list, metadata={"max_len": 10_000})


@message
class ConsentQuery:
    """Grants of ``owner`` (every owner when None; operators only), ``all`` with expired and
    revoked ones; ``access_token``: the owner's, when the owner asks (then ``owner`` is theirs)."""

    owner: str | None = field(default=None, metadata=_NAME)
    all: bool = False
    access_token: str | None = field(default=None, metadata=_TOKEN)


@message
class PolicyDir:
    """``authz.policy.validate``: a directory to check (the configured one when None)."""

    directory: str | None = field(default=None, metadata={"max_len": 4096})

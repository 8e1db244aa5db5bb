"""The authn service: the companion's people, their passwords, sessions and tokens.

Handlers, by concern (each in its own module, mixed in here):

- ``login.password``, ``token.refresh``, ``logout`` (logins.py): for frontends and paired devices;
- ``verify``, ``keys`` (verifying.py): for services checking a token;
- ``passkey.register.*`` and ``login.passkey.*`` (passkey_flows.py): passkeys (WebAuthn);
- ``users.*`` (accounts.py), ``users.passkeys*`` (passkey_flows.py), ``sessions.*`` (sessions.py)
  and ``mfa.totp.*`` (mfa.py): for operators (``meshctl users``, ``meshctl sessions``).

State lives in authn's own SQLCipher database (database.py), keyed from keyvault (keeper.py). Until
the mesh is unsealed every handler but ``health`` answers ``SEALED``. Every decision is audited
through a durable spool (shared.AuditRecorder). Ends of sessions are published on ``authn.revoked.session``
(``{user, sessions, reason}``) for services that verify tokens locally.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from shared import (
    AuditRecorder,
    MeshConfig,
    MeshError,
    MeshHome,
    Readiness,
    Sealed,
    Service,
    Unavailable,
    mesh_config,
)

from .accounts import AccountHandlers
from .database import AccountsDB
from .keeper import Keeper
from .logins import LoginHandlers
from .mfa import MfaHandlers
from .passkey_flows import PasskeyHandlers
from .passwords import PasswordHasher
from .sessions import SessionHandlers
from .throttle import Throttle, ThrottlePolicy
from .verifying import VerifyHandlers

log = structlog.get_logger("authn")


class Authn(LoginHandlers, VerifyHandlers, AccountHandlers, SessionHandlers, MfaHandlers, PasskeyHandlers,
            Service):
    """Mesh name ``authn``; handlers: see the module docstring."""

    name = "authn"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None, *,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        self.clock = clock
        self.monotonic = monotonic
        #: Passkey ceremonies in progress (passkey_flows.py): in memory, five minutes each.
        self._ceremonies: dict[str, tuple[str, str, str | None, bytes, float]] = {}
        settings = self.config.authn
        self.hasher = PasswordHasher(self.config.argon2.authentication)
        self.throttle = Throttle(ThrottlePolicy(
            free_failures=settings.free_failures, base_delay_s=settings.delay_base_s,
            max_delay_s=settings.delay_max_s, lockout_after=settings.lockout_after, lockout_s=settings.lockout_s,
            account_budget_per_hour=settings.account_budget_per_hour), monotonic)
        self.recorder = AuditRecorder("authn", self.home.spool / "authn-audit.spool")
        self.keeper = Keeper(self.home.data / "authn", self._call, clock, settings.access_token_s)

    async def _call(self, target: str, body: Any = None, *, timeout: float) -> Any:
        if self.mesh is None:
            raise Sealed("authn is not connected to the mesh")
        return await self.mesh.call(target, body, timeout=timeout)

    async def on_start(self) -> None:
        self.recorder.open(self.mesh)
        if self.mesh is not None:
            await self.keeper.start(self.mesh.subscribe)
        else:
            await self.keeper.try_unseal()

    async def on_stop(self) -> None:
        await self.keeper.stop()
        await self.recorder.close()

    def readiness(self) -> Readiness:
        # A spool that could not be made durable outranks the keys: nothing may be recorded now.
        override = self.recorder.readiness or self.keeper.readiness_override
        return super().readiness() if override is None else override

    def db(self) -> AccountsDB:
        """The open database; ``SEALED`` (or the failure) while there is none."""
        database = self.keeper.keys.db
        if database is None:
            override = self.keeper.readiness_override
            reason = override.reason if override and override.reason else "the mesh is sealed"
            if self.keeper.state == "failed":
                raise Unavailable(f"authn cannot serve: {reason}")
            raise Sealed(reason)
        return database

    async def publish_revoked(self, user_id: str, sessions: list[str], reason: str) -> None:
        """Announce ended sessions to services that verify tokens locally. authn.verify refuses them
        already (the database says so): the event is for the others, so a lost one is logged."""
        if self.mesh is None or not sessions:
            return
        try:
            await self.mesh.publish("authn.revoked.session", {"user": user_id, "sessions": sessions,
                                                             "reason": reason}, timeout=5.0)
        except MeshError as exc:
            log.warning("revocation_not_published", reason=exc.code, sessions=len(sessions))

"""Second factors for operators to manage, and the check a login makes: ``authn.mfa.totp.*``.

Enrolment (``meshctl users totp NAME``): ``mfa.totp.begin`` makes a pending secret and returns its
``otpauth://`` URI once (meshctl shows it as a QR code); ``mfa.totp.confirm`` takes a first valid
code, turns TOTP on and returns ten recovery codes, shown once and kept only as digests.
``mfa.totp.off`` removes both. From then on a password login of that account needs ``otp``: a TOTP
code (each accepted once) or a recovery code (each spent on use). A failed code counts as a failed
guess for the throttle, exactly like a wrong password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import AuditRecorder, BadRequest, MeshConfig, RequestContext, handler

from .database import AccountsDB, User
from .mfa_store import MfaStore
from .otp import (
    WrongCode,
    match_code,
    new_recovery_codes,
    new_secret,
    normalise_recovery,
    provisioning_uri,
    recovery_digest,
)
from .schema import TotpCode, Username


class MfaHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    config: MeshConfig
    recorder: AuditRecorder
    clock: Callable[[], float]
    db: Callable[[], AccountsDB]
    _operator: Callable[[RequestContext], None]
    _user: Callable[[str], User]

    @handler("mfa.totp.begin", request=Username)
    async def totp_begin(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.mfa.totp.begin {username}`` → ``{username, uri, secret}``: a pending TOTP secret,
        handed out this once. ``CONFLICT`` when TOTP is on already. ``meshctl users totp NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        secret = new_secret()
        MfaStore(self.db()).begin_totp(user.id, secret, self.clock())
        self.recorder.record("authn.totp_begun", ctx, "ok", target=user.username, user_id=user.id)
        return {"username": user.username, "secret": secret,
                "uri": provisioning_uri(secret, user.username, self.config.authn.issuer)}

    @handler("mfa.totp.confirm", request=TotpCode)
    async def totp_confirm(self, ctx: RequestContext, req: TotpCode) -> dict[str, Any]:
        """``authn.mfa.totp.confirm {username, code}`` → ``{username, recovery_codes}``: TOTP is on
        once a first code from the app matches; the ten recovery codes are shown this once."""
        self._operator(ctx)
        user = self._user(req.username)
        store = MfaStore(self.db())
        pending = store.totp(user.id)
        if pending is None or pending.confirmed:
            raise BadRequest("no TOTP enrolment is waiting for a first code: meshctl users totp NAME starts one")
        try:
            step = match_code(pending.secret, req.code, self.clock(), pending.last_step)
        except WrongCode:
            self.recorder.record("authn.totp_confirmed", ctx, "failure", target=user.username, user_id=user.id,
                                 reason="wrong one-time code")
            raise BadRequest("that code does not match: check the authenticator's clock and try the next code") \
                from None
        codes = new_recovery_codes()
        store.confirm_totp(user.id, step, [recovery_digest(normalise_recovery(c) or "") for c in codes])
        self.recorder.record("authn.totp_confirmed", ctx, "ok", target=user.username, user_id=user.id)
        return {"username": user.username, "recovery_codes": codes}

    @handler("mfa.totp.off", request=Username)
    async def totp_off(self, ctx: RequestContext, req: Username) -> dict[str, Any]:
        """``authn.mfa.totp.off {username}`` → ``{removed}``: TOTP and recovery codes gone; logins
        need the password only. ``meshctl users totp-off NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        removed = MfaStore(self.db()).disable(user.id)
        self.recorder.record("authn.totp_removed", ctx, "ok", target=user.username, user_id=user.id)
        return {"username": user.username, "removed": removed}

    def second_factor(self, user: User, code: str | None) -> list[str] | None:
        """The ``amr`` a login earns past the password: ``[]`` without TOTP enrolled, ``["otp"]`` or
        ``["otp", "recovery"]`` for a good code; None when a code is needed and ``code`` is not one
        (missing, wrong, or already used). Codes are spent here."""
        store = MfaStore(self.db())
        totp = store.totp(user.id)
        if totp is None or not totp.confirmed:
            return []
        if code is None:
            return None
        now = self.clock()
        try:
            step = match_code(totp.secret, code, now, totp.last_step)
        except WrongCode:
            recovery = normalise_recovery(code)
            if recovery is not None and store.use_recovery(user.id, recovery_digest(recovery), now):
                return ["otp", "recovery"]
            return None
        return ["otp"] if store.use_step(user.id, step) else None


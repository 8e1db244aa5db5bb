"""Checking a token: ``authn.verify`` (one mesh hop, revocation included) and ``authn.keys``.

Two paths, one answer:

- **Over the mesh** (``authn.verify``): signature, type, claims, the presenter's key, and the
  session behind the token (ended, idle, expired, account disabled) are all checked here, so a
  revocation is visible on the very next request.
- **Locally**: a service may verify the signature and claims itself with the keys ``authn.keys``
  publishes, but then it must also follow ``authn.revoked.*`` events and refuse every token of a
  session or user announced there before answering (docs/authn.md). A service that cannot do
  both uses ``authn.verify``.

The caller of ``verify`` is the service the token was presented to. ``presenter`` is the key
fingerprint of the peer that presented it (the service's own ``RequestContext.fingerprint``): only
a service may name one; a device verifying its own token is its own presenter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from shared import AuditRecorder, MeshConfig, NoFields, ReauthRequired, RequestContext, Unauthenticated, handler
from shared.tokens import MAX_ACCESS_LIFETIME_S, InvalidToken, verify_access

from .database import AccountsDB
from .keeper import Keeper
from .logins import TOKEN_REFUSED, session_problem
from .schema import Verify

#: A verified session's last use is written at most this often (verification is the hot path).
TOUCH_EVERY_S: Final = 60.0


class VerifyHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    config: MeshConfig
    keeper: Keeper
    recorder: AuditRecorder
    clock: Callable[[], float]
    db: Callable[[], AccountsDB]

    @handler("verify", request=Verify)
    async def verify(self, ctx: RequestContext, req: Verify) -> dict[str, Any]:
        """``authn.verify {access_token, audience, presenter?, sensitive?}`` → ``{sub, sid, username,
        aud, exp, auth_time, amr}`` when the token is valid for ``audience``, presented by the key it
        is bound to, and its session is live. Otherwise ``UNAUTHENTICATED`` "token refused" (the
        reason is audited as ``authn.verify`` denied). With ``sensitive``, a sign-in older than
        ``[authn] step_up_s`` is ``REAUTH_REQUIRED``: the person signs in again (login.reauth)."""
        db = self.db()  # SEALED while there is none: no verdict either way
        presenter = ctx.fingerprint
        if req.presenter is not None:
            if ctx.role != "service":
                return self._refuse(ctx, "presenter_not_allowed")
            presenter = req.presenter
        settings, now = self.config.authn, self.clock()
        try:
            claims = verify_access(req.access_token, self.keeper.keys.signing, issuer=settings.issuer,
                                   audience=req.audience, presenter=presenter, now=now,
                                   cache=self.keeper.keys.verified)
        except InvalidToken as exc:
            return self._refuse(ctx, exc.reason)
        session, user = db.session_and_user(claims.session_id)
        problem = session_problem(session, user, now, settings.session_idle_s, settings.session_absolute_s)
        if problem is None and session is not None and session.user_id != claims.subject:
            problem = "session_mismatch"
        if problem:
            return self._refuse(ctx, problem, claims.subject, claims.session_id)
        assert session is not None and user is not None
        if req.sensitive and now - session.auth_time > settings.step_up_s:
            # The person, not the token, is what is too old: they sign in again (login.reauth).
            self.recorder.record("authn.verify", ctx, "denied", reason="reauth_required", user_id=claims.subject,
                                 session=claims.session_id)
            raise ReauthRequired(f"this operation needs a sign-in within the last {settings.step_up_s} s: "
                                 "sign in again (authn.login.reauth) and retry")
        if now - session.last_used >= TOUCH_EVERY_S:
            db.touch(session.id, now)
        return {"sub": claims.subject, "sid": claims.session_id, "username": user.username, "aud": req.audience,
                "exp": claims.expires_at, "auth_time": claims.auth_time, "amr": list(claims.amr)}

    def _refuse(self, ctx: RequestContext, reason: str, account: str | None = None,
                session: str | None = None) -> dict[str, Any]:
        self.recorder.record("authn.verify", ctx, "denied", reason=reason, user_id=account, session=session)
        raise Unauthenticated(TOKEN_REFUSED)

    @handler("revocations")
    async def revocations(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``authn.revocations`` → ``{sessions, window_s}``: the sessions ended in the last
        ``window_s`` seconds (no access token outlives that). A local verifier loads it at start and
        after it may have missed ``authn.revoked.session`` events (``shared.tokens.LocalVerifier``)."""
        window = MAX_ACCESS_LIFETIME_S
        return {"sessions": self.db().ended_since(self.clock() - window), "window_s": window}

    @handler("keys")
    async def keys(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``authn.keys`` → ``{issuer, keys: [JWK...]}``: the Ed25519 public keys access tokens are
        signed with (every version still valid), for services that verify locally; they must also
        follow ``authn.revoked.*``. ``meshctl call authn.keys``."""
        self.db()  # SEALED while sealed: no keys are held then
        return {"issuer": self.config.authn.issuer, "keys": self.keeper.keys.signing.public_jwks()}

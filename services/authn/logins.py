"""Signing in and staying signed in: ``authn.login.password``, ``authn.token.refresh``, ``authn.logout``.

The caller is the peer a person signs in through: a frontend service or a paired device. Whatever
goes wrong, that caller hears one uniform ``UNAUTHENTICATED`` ("login failed" or "token refused"),
and the precise reason goes to the audit log: an attacker learns neither whether an account exists
nor why a token was refused. Throttling is the one exception, by necessity: ``RATE_LIMITED`` says
when to try again, and it is applied to names that do not exist exactly as to names that do.

Every token is bound to the caller's CURVE key (its fingerprint, stamped by the broker): the access
token carries it as ``cnf.ckt`` and the session records it, so a token or refresh token presented by
any other key is refused, and the device that signed in before keeps its own failure budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from shared import AuditRecorder, BadRequest, MeshConfig, RateLimited, RequestContext, Unauthenticated, handler
from shared.tokens import AccessClaims, InvalidToken, issue_access, verify_access

from .database import AccountsDB, Session, User
from .keeper import Keeper
from .names import normalise_username, skeleton
from .passwords import PasswordHasher, WrongPassword
from .refresh import new_refresh, parse_refresh, refresh_digest
from .schema import DEFAULT_AUDIENCE, Logout, PasswordLogin, Reauth, Refresh
from .throttle import Throttle, Throttled

LOGIN_FAILED: Final = "login failed"
OTP_REQUIRED: Final = "login failed: a one-time code is required (otp)"
TOKEN_REFUSED: Final = "token refused"  # noqa: S105 - a message, not a secret
#: What a token may be for: a mesh-like name, never free text (it ends up in every token).
AUDIENCE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def session_problem(session: Session | None, user: User | None, now: float, idle_s: int,
                    absolute_s: int) -> str | None:
    """Why ``session`` can no longer be used (a reason code for the audit log), or None."""
    if session is None or user is None:
        return "session_unknown"
    if session.ended is not None:
        return "session_ended"
    if user.disabled:
        return "account_disabled"
    if now - session.last_used > idle_s:
        return "session_idle"
    if now - session.created > absolute_s:
        return "session_expired"
    return None


class LoginHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    config: MeshConfig
    keeper: Keeper
    recorder: AuditRecorder
    hasher: PasswordHasher
    throttle: Throttle
    clock: Callable[[], float]
    publish_revoked: Callable[..., Any]
    db: Callable[[], AccountsDB]
    second_factor: Callable[[User, str | None], list[str] | None]

    def _tokens(self, ctx: RequestContext, user: User, session: Session, audience: str) -> dict[str, Any]:
        settings = self.config.authn
        token, claims = issue_access(self.keeper.keys.signing, issuer=settings.issuer, audience=audience,
                                     subject=user.id, session_id=session.id, auth_time=session.auth_time,
                                     amr=list(session.amr), confirmation=ctx.fingerprint, now=self.clock(),
                                     lifetime_s=settings.access_token_s)
        return {"access_token": token, "token_type": "Bearer", "expires_in": settings.access_token_s,
                "session": session.id, "user": user.id, "username": user.username, "audience": audience,
                "exp": claims.expires_at}

    def _fail_login(self, ctx: RequestContext, account: str, reason: str, user: User | None) -> None:
        self.recorder.record("authn.login", ctx, "failure", target=account, reason=reason,
                             user_id=user.id if user else None)

    def _throttle_check(self, ctx: RequestContext, account: str, shown: str, user: User | None, known: bool) -> None:
        """``RATE_LIMITED`` with the wait (and the attempt audited) when the throttle says so;
        ``account`` is the throttle's key (the name's skeleton), ``shown`` the name audited."""
        try:
            self.throttle.check(account, ctx.fingerprint, known_device=known)
        except Throttled as exc:
            self._fail_login(ctx, shown, f"throttled ({exc.reason})", user)
            raise RateLimited(f"too many failed logins: try again in {max(1, round(exc.retry_after_s))} s") from None

    def _new_session(self, ctx: RequestContext, user: User, amr: list[str], audience: str,
                     known: bool) -> dict[str, Any]:
        """Start a session bound to the caller's key after a successful sign-in: its first refresh
        token, the audit record, and the tokens to answer with."""
        version = self.keeper.keys.signing.current_version
        refresh, digest = new_refresh(version, self.keeper.keys.digest[version])
        session = self.db().start_session(user.id, ctx.caller, ctx.fingerprint, amr, audience, digest, self.clock())
        self.recorder.record("authn.login", ctx, "ok", target=user.username, user_id=user.id, session=session.id,
                             method="+".join(amr), known_device=known)
        return {**self._tokens(ctx, user, session, audience), "refresh_token": refresh}

    def _own_token(self, ctx: RequestContext, token: str, audience: str, event: str) -> AccessClaims:
        """The claims of an access token the caller presents as its own; ``UNAUTHENTICATED`` (the
        reason audited as ``event``) otherwise."""
        settings = self.config.authn
        try:
            return verify_access(token, self.keeper.keys.signing, issuer=settings.issuer, audience=audience,
                                 presenter=ctx.fingerprint, now=self.clock())
        except InvalidToken as exc:
            self.recorder.record(event, ctx, "denied", reason=exc.reason)
            raise Unauthenticated(TOKEN_REFUSED) from None

    async def _authenticate(self, ctx: RequestContext, raw_username: str, password: str,
                            otp: str | None) -> tuple[User, list[str], bool]:
        """Check a person's credentials as the caller presents them: the account, the throttle, the
        password (Argon2, an unknown name costing the same), the account's state and the second
        factor. Returns the user, the ``amr`` earned and whether the caller's key is a known device
        of the account; raises the uniform refusals (each reason audited as ``authn.login``)."""
        db = self.db()
        try:
            username = normalise_username(raw_username)
        except BadRequest:
            # Not a name anyone could have: throttled and audited like any other failed guess.
            username = None
        account = skeleton(username) if username else "<invalid>"
        user = db.user_by_skeleton(account) if username else None
        known = user is not None and db.known_device(user.id, ctx.fingerprint)
        self._throttle_check(ctx, account, username or account, user, known)
        try:
            if user is None:
                # The same Argon2 cost as a real check, so the time taken does not tell who exists.
                await ctx.run_blocking(self.hasher.dummy_verify, password)
            else:
                await ctx.run_blocking(self.hasher.verify, user.password_hash, password)
        except WrongPassword:
            self.throttle.failure(account, ctx.fingerprint, known_device=known)
            self._fail_login(ctx, username or account, "unknown user" if user is None else "wrong password", user)
            raise Unauthenticated(LOGIN_FAILED) from None
        assert user is not None
        # The mesh may have been sealed while Argon2 ran: nothing is written to a closed database.
        db = self.db()
        if user.disabled:
            self._fail_login(ctx, user.username, "account disabled", user)
            raise Unauthenticated(LOGIN_FAILED)
        second = self.second_factor(user, otp)
        if second is None:
            if otp is None:
                # Said only to a caller who knew the password: the client asks for the code next.
                self._fail_login(ctx, user.username, "one-time code required", user)
                raise Unauthenticated(OTP_REQUIRED)
            self.throttle.failure(account, ctx.fingerprint, known_device=known)
            self._fail_login(ctx, user.username, "wrong one-time code", user)
            raise Unauthenticated(LOGIN_FAILED)
        self.throttle.success(account, ctx.fingerprint)
        if self.hasher.needs_rehash(user.password_hash):
            # The authentication profile changed since this hash was made: upgrade it now that we
            # hold the password, without ending any session.
            encoded = await ctx.run_blocking(self.hasher.hash, password)
            self.db().set_password(user.id, encoded, self.clock(), end_sessions=None)
        return user, (["pwd", *second, "mfa"] if second else ["pwd"]), known

    @handler("login.password", request=PasswordLogin, concurrent=True)
    async def login_password(self, ctx: RequestContext, req: PasswordLogin) -> dict[str, Any]:
        """``authn.login.password {username, password, audience?, otp?}`` → ``{access_token,
        refresh_token, token_type, expires_in, session, user, username, audience, exp}``: tokens bound
        to the caller's key. Any failure: ``UNAUTHENTICATED`` "login failed" (the reason is audited);
        with the right password but no ``otp`` for an account with TOTP on, "login failed: a one-time
        code is required (otp)"; too many: ``RATE_LIMITED`` with the wait. Called by a frontend or a
        paired device."""
        self.db()  # SEALED while sealed
        if not ctx.fingerprint:
            raise Unauthenticated(LOGIN_FAILED)  # no key to bind to: never issue an unbound token
        audience = req.audience or DEFAULT_AUDIENCE
        if not AUDIENCE_RE.fullmatch(audience):
            raise BadRequest("audience: lower-case letters, digits, '.', '_' or '-', at most 128")
        user, amr, known = await self._authenticate(ctx, req.username, req.password, req.otp)
        return self._new_session(ctx, user, amr, audience, known)

    @handler("login.reauth", request=Reauth, concurrent=True)
    async def login_reauth(self, ctx: RequestContext, req: Reauth) -> dict[str, Any]:
        """``authn.login.reauth {access_token, password, audience?, otp?}`` → a new access token of
        the same session with a fresh ``auth_time`` (step-up before a sensitive operation; the refresh
        token is unchanged). The token must be the caller's own and its session live; the credentials
        are checked, throttled and audited like a login. Failure: ``UNAUTHENTICATED``."""
        db = self.db()  # SEALED while sealed
        settings = self.config.authn
        claims = self._own_token(ctx, req.access_token, req.audience, "authn.reauth")
        session, owner = db.session(claims.session_id), db.user_by_id(claims.subject)
        problem = session_problem(session, owner, self.clock(), settings.session_idle_s, settings.session_absolute_s)
        if problem or owner is None or session is None:
            self.recorder.record("authn.reauth", ctx, "denied", reason=problem, user_id=claims.subject)
            raise Unauthenticated(TOKEN_REFUSED)
        user, amr, _ = await self._authenticate(ctx, owner.username, req.password, req.otp)
        if user.id != owner.id:
            raise Unauthenticated(LOGIN_FAILED)  # a look-alike name can never be another account
        now = self.clock()
        self.db().reauthenticated(session.id, amr, now)
        fresh = self.db().session(session.id)
        assert fresh is not None
        self.recorder.record("authn.reauth", ctx, "ok", target=user.username, user_id=user.id, session=session.id,
                             method="+".join(amr))
        return self._tokens(ctx, user, fresh, session.audience)

    @handler("token.refresh", request=Refresh, concurrent=True)
    async def token_refresh(self, ctx: RequestContext, req: Refresh) -> dict[str, Any]:
        """``authn.token.refresh {refresh_token}`` → a new access token and a new refresh token (the
        one sent is spent). A spent one sent again ends the whole session (theft: the thief and the
        owner share its family) and is audited as ``authn.refresh_reused``. Refused over any key but
        the one the session is bound to. Failure: ``UNAUTHENTICATED`` "token refused"."""
        db = self.db()  # SEALED while sealed
        try:
            version, raw = parse_refresh(req.refresh_token)
        except InvalidToken as exc:
            return self._refuse_refresh(ctx, exc.reason)
        key = await self.keeper.digest_key_of(version)
        if key is None:
            return self._refuse_refresh(ctx, "unknown_version")
        db, now = self.db(), self.clock()  # again: the mesh may have been sealed during the fetch
        old = refresh_digest(raw, key)
        found = db.refresh_state(old)
        if found is None:
            return self._refuse_refresh(ctx, "unknown_refresh_token")
        session, spent = found
        user = db.user_by_id(session.user_id)
        if session.peer_fp != ctx.fingerprint:
            # Someone else's refresh token: refused, and nothing of the owner's session changes.
            return self._refuse_refresh(ctx, "wrong_presenter", session)
        if spent and session.ended is None:
            db.end_sessions(now, "refresh token reused", session_id=session.id)
            self.recorder.record("authn.refresh_reused", ctx, "denied", target=user.username if user else None,
                                 user_id=session.user_id, session=session.id)
            await self.publish_revoked(session.user_id, [session.id], "refresh token reused")
            raise Unauthenticated(TOKEN_REFUSED)
        settings = self.config.authn
        problem = "refresh_token_spent" if spent else session_problem(
            session, user, now, settings.session_idle_s, settings.session_absolute_s)
        if problem:
            return self._refuse_refresh(ctx, problem, session)
        assert user is not None
        current = self.keeper.keys.signing.current_version
        refresh, digest = new_refresh(current, self.keeper.keys.digest[current])
        if not db.rotate_refresh(old, digest, now):
            return self._refuse_refresh(ctx, "refresh_token_spent", session)
        return {**self._tokens(ctx, user, session, session.audience), "refresh_token": refresh}

    def _refuse_refresh(self, ctx: RequestContext, reason: str, session: Session | None = None) -> dict[str, Any]:
        self.recorder.record("authn.refresh", ctx, "denied", reason=reason,
                             session=session.id if session else None, user_id=session.user_id if session else None)
        raise Unauthenticated(TOKEN_REFUSED)

    @handler("logout", request=Logout)
    async def logout(self, ctx: RequestContext, req: Logout) -> dict[str, Any]:
        """``authn.logout {access_token, audience?}`` → ``{ended: true}``: the session ends at once on every
        path (its refresh tokens are spent, its access tokens refused; ``authn.revoked.session``
        is published for local verifiers). Only the key the token is bound to may end it."""
        db = self.db()  # SEALED while sealed
        claims = self._own_token(ctx, req.access_token, req.audience, "authn.logout")
        ended = db.end_sessions(self.clock(), "logout", session_id=claims.session_id)
        self.recorder.record("authn.logout", ctx, "ok", user_id=claims.subject, session=claims.session_id)
        if ended:
            await self.publish_revoked(claims.subject, ended, "logout")
        return {"ended": True}


__all__ = ["DEFAULT_AUDIENCE", "LOGIN_FAILED", "TOKEN_REFUSED", "LoginHandlers", "session_problem"]

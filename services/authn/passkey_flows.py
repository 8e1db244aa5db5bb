"""Passkeys over the mesh: register one from a signed-in device, sign in with it, manage them.

- ``passkey.register.begin {access_token}`` → ``{ceremony, options}``: the person adds a passkey
  to their own account from the device they are signed in on (the token must be the caller's);
  ``passkey.register.finish {ceremony, response}`` stores it.
- ``login.passkey.begin {username?}`` → ``{ceremony, options}`` (with a name, its credentials are
  offered; a name that does not exist gets the same empty list as none, so it tells nothing);
  ``login.passkey.finish {ceremony, response, audience?, password?}`` → tokens, ``amr`` ``["hwk",
  "user", "mfa"]`` (a platform authenticator with user verification: a device and a biometric or
  PIN), or with ``password`` the passkey as second factor after it: ``["pwd", "hwk", "user", "mfa"]``.
- ``users.passkeys {username}`` and ``users.passkeys.remove {username, credential}`` for operators.

A ceremony is kept in memory for five minutes, bound to the caller's key, and used once whatever
its outcome. A refused passkey login is a failed guess for the throttle and audited with the
reason; a validly signed response whose counter went back is a cloned authenticator:
``authn.passkey_cloned``, which audit's ``credential_theft`` rule alerts on.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from typing import Any, Final

from shared import (
    AuditRecorder,
    BadRequest,
    MeshConfig,
    NotFound,
    RateLimited,
    RequestContext,
    Unauthenticated,
    handler,
)
from shared.tokens import AccessClaims

from .database import AccountsDB, User
from .keeper import Keeper
from .logins import AUDIENCE_RE
from .names import skeleton
from .passkey_store import PasskeyStore
from .passkeys import (
    CEREMONY_TIMEOUT_MS,
    PasskeyRefused,
    RelyingParty,
    begin_login,
    begin_registration,
    credential_id_of,
    finish_login,
    finish_registration,
)
from .passwords import PasswordHasher, WrongPassword
from .schema import PasskeyFinish, PasskeyLoginBegin, PasskeyRemove, PasskeyStart, Username
from .throttle import Throttle

MAX_CEREMONIES: Final = 10_000
_FAILED: Final = "login failed"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raise BadRequest("credential: base64url of a credential id (meshctl users passkeys NAME)") from None


class PasskeyHandlers:
    """Mixed into :class:`~.service.Authn`, which owns the attributes declared here."""

    config: MeshConfig
    keeper: Keeper
    recorder: AuditRecorder
    throttle: Throttle
    hasher: PasswordHasher
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    db: Callable[[], AccountsDB]
    _operator: Callable[[RequestContext], None]
    _user: Callable[[str], User]
    _fail_login: Callable[..., None]
    _throttle_check: Callable[..., None]
    _new_session: Callable[..., dict[str, Any]]
    _own_token: Callable[..., AccessClaims]
    #: ceremony id -> (kind, caller key, user id or None, challenge, deadline on the monotonic clock)
    _ceremonies: dict[str, tuple[str, str, str | None, bytes, float]]

    def _rp(self) -> RelyingParty:
        settings = self.config.authn
        return RelyingParty(settings.rp_id, settings.rp_name, tuple(settings.origins))

    def _open_ceremony(self, kind: str, ctx: RequestContext, user_id: str | None, challenge: bytes) -> str:
        now = self.monotonic()
        if len(self._ceremonies) >= MAX_CEREMONIES:
            self._ceremonies = {k: v for k, v in self._ceremonies.items() if v[4] > now}
            if len(self._ceremonies) >= MAX_CEREMONIES:
                raise RateLimited("too many passkey ceremonies in progress: try again in a minute")
        ceremony = secrets.token_urlsafe(16)
        self._ceremonies[ceremony] = (kind, ctx.fingerprint, user_id, challenge, now + CEREMONY_TIMEOUT_MS / 1000)
        return ceremony

    def _take_ceremony(self, kind: str, ctx: RequestContext, ceremony: str) -> tuple[str | None, bytes] | None:
        # Popped whatever happens next: a challenge answers one response only.
        entry = self._ceremonies.pop(ceremony, None)
        if entry is None or entry[0] != kind or entry[1] != ctx.fingerprint or entry[4] < self.monotonic():
            return None
        return entry[2], entry[3]

    @handler("passkey.register.begin", request=PasskeyStart)
    async def passkey_register_begin(self, ctx: RequestContext, req: PasskeyStart) -> dict[str, Any]:
        """``authn.passkey.register.begin {access_token}`` → ``{ceremony, options}`` (options JSON
        for ``navigator.credentials.create()``); the token must be the caller's own."""
        db = self.db()
        claims = self._own_token(ctx, req.access_token, req.audience, "authn.passkey_added")
        user, session = db.user_by_id(claims.subject), db.session(claims.session_id)
        if user is None or session is None or session.ended is not None or user.disabled:
            self.recorder.record("authn.passkey_added", ctx, "denied", reason="session_unknown")
            raise Unauthenticated("token refused")
        existing = [p.credential.credential_id for p in PasskeyStore(db).of_user(user.id)]
        options, challenge = begin_registration(self._rp(), user_id=user.id.encode(), username=user.username,
                                                exclude=existing)
        return {"ceremony": self._open_ceremony("register", ctx, user.id, challenge), "options": options}

    @handler("passkey.register.finish", request=PasskeyFinish, concurrent=True)
    async def passkey_register_finish(self, ctx: RequestContext, req: PasskeyFinish) -> dict[str, Any]:
        """``authn.passkey.register.finish {ceremony, response}`` → ``{credential}`` (its id,
        base64url). Refused: ``UNAUTHENTICATED`` "passkey refused" (the reason is audited)."""
        db = self.db()
        taken = self._take_ceremony("register", ctx, req.ceremony)
        if taken is None or taken[0] is None:
            self.recorder.record("authn.passkey_added", ctx, "denied", reason="ceremony")
            raise Unauthenticated("passkey refused")
        user_id, challenge = taken
        try:
            credential = finish_registration(self._rp(), req.response, challenge)
        except PasskeyRefused as exc:
            self.recorder.record("authn.passkey_added", ctx, "denied", reason=exc.reason, user_id=user_id)
            raise Unauthenticated("passkey refused") from None
        PasskeyStore(self.db()).add(user_id, credential, self.clock())
        user = db.user_by_id(user_id)
        self.recorder.record("authn.passkey_added", ctx, "ok", target=user.username if user else None,
                             user_id=user_id)
        return {"credential": b64url(credential.credential_id)}

    @handler("login.passkey.begin", request=PasskeyLoginBegin)
    async def login_passkey_begin(self, ctx: RequestContext, req: PasskeyLoginBegin) -> dict[str, Any]:
        """``authn.login.passkey.begin {username?}`` → ``{ceremony, options}`` for
        ``navigator.credentials.get()``."""
        db = self.db()
        allow: list[bytes] = []
        if req.username is not None:
            try:
                user: User | None = self._user(req.username)
            except (NotFound, BadRequest):
                user = None  # the same answer as a name without passkeys: existence is not told
            if user is not None:
                allow = [p.credential.credential_id for p in PasskeyStore(db).of_user(user.id)]
        options, challenge = begin_login(self._rp(), allow=allow)
        return {"ceremony": self._open_ceremony("login", ctx, None, challenge), "options": options}

    @handler("login.passkey.finish", request=PasskeyFinish, concurrent=True)
    async def login_passkey_finish(self, ctx: RequestContext, req: PasskeyFinish) -> dict[str, Any]:
        """``authn.login.passkey.finish {ceremony, response, audience?, password?}`` → tokens bound
        to the caller's key, as ``login.password`` gives (``password``: the passkey is the second
        factor after it). Failure: ``UNAUTHENTICATED`` "login failed"."""
        db = self.db()
        taken = self._take_ceremony("login", ctx, req.ceremony)
        if taken is None:
            self._fail_login(ctx, "<passkey>", "passkey: ceremony", None)
            raise Unauthenticated(_FAILED)
        store = PasskeyStore(db)
        try:
            found = store.get(credential_id_of(req.response))
        except PasskeyRefused:
            found = None
        user = db.user_by_id(found.user_id) if found is not None else None
        if found is None or user is None:
            self._fail_login(ctx, "<passkey>", "passkey: unknown_credential", None)
            raise Unauthenticated(_FAILED)
        account = skeleton(user.username)  # the throttle's key for this account, as password logins use
        known = db.known_device(user.id, ctx.fingerprint)
        self._throttle_check(ctx, account, user.username, user, known)
        try:
            count = finish_login(self._rp(), req.response, taken[1], found.credential)
        except PasskeyRefused as exc:
            if exc.reason == "counter":
                self.recorder.record("authn.passkey_cloned", ctx, "denied", target=user.username, user_id=user.id,
                                     reason="signature counter went back")
            self.throttle.failure(account, ctx.fingerprint, known_device=known)
            self._fail_login(ctx, user.username, f"passkey: {exc.reason}", user)
            raise Unauthenticated(_FAILED) from None
        if user.disabled or not store.used(found.credential.credential_id, count, self.clock()):
            self._fail_login(ctx, user.username, "account disabled" if user.disabled else "passkey: counter race",
                             user)
            raise Unauthenticated(_FAILED)
        amr = ["hwk", "user", "mfa"]
        if req.password is not None:
            # The passkey as the second factor after the password: both are checked, in one ceremony.
            try:
                await ctx.run_blocking(self.hasher.verify, user.password_hash, req.password)
            except WrongPassword:
                self.throttle.failure(account, ctx.fingerprint, known_device=known)
                self._fail_login(ctx, user.username, "wrong password", user)
                raise Unauthenticated(_FAILED) from None
            amr = ["pwd", *amr]
        self.throttle.success(account, ctx.fingerprint)
        audience = req.audience
        if not AUDIENCE_RE.fullmatch(audience):
            raise BadRequest("audience: lower-case letters, digits, '.', '_' or '-', at most 128")
        return self._new_session(ctx, user, amr, audience, known)

    @handler("users.passkeys", request=Username)
    async def users_passkeys(self, ctx: RequestContext, req: Username) -> list[dict[str, Any]]:
        """``authn.users.passkeys {username}`` → the account's passkeys. ``meshctl users passkeys NAME``."""
        self._operator(ctx)
        user = self._user(req.username)
        return [{"credential": b64url(p.credential.credential_id), "created": p.created, "last_used": p.last_used,
                 "sign_count": p.credential.sign_count, "aaguid": p.credential.aaguid}
                for p in PasskeyStore(self.db()).of_user(user.id)]

    @handler("users.passkeys.remove", request=PasskeyRemove)
    async def users_passkeys_remove(self, ctx: RequestContext, req: PasskeyRemove) -> dict[str, Any]:
        """``authn.users.passkeys.remove {username, credential}``: that passkey no longer signs in.
        ``meshctl users passkeys NAME --remove CREDENTIAL``."""
        self._operator(ctx)
        user = self._user(req.username)
        if not PasskeyStore(self.db()).remove(user.id, unb64url(req.credential)):
            raise NotFound("no such passkey for this user: meshctl users passkeys NAME lists them")
        self.recorder.record("authn.passkey_removed", ctx, "ok", target=user.username, user_id=user.id)
        return {"removed": True, "username": user.username}

"""Verifying access tokens in a service's own process, revocations included.

The issuer (a mesh service, authn in this mesh, named by the caller so nothing here names a
service) publishes what a local verifier needs:

- ``<issuer>.keys`` → ``{issuer, keys: [JWK...]}``: the public keys still valid;
- ``<issuer>.revocations`` → ``{sessions: [...], window_s}``: the sessions ended within the last
  ``window_s`` seconds (an access token cannot outlive that, so older ends no longer matter);
- events ``<issuer>.revoked.session`` ``{user, sessions, reason}`` as sessions end.

Contract of :meth:`LocalVerifier.verify`: it answers only from a revocation view known to be
complete. The view is loaded at :meth:`start`, kept current by the events, and loaded again, before
the answer, whenever events may have been lost: after a reconnection to the broker (events published
meanwhile were not delivered) or an overflow of the event queue. A token whose key id is unknown
makes it fetch the keys again (a rotation), at most once per :data:`KEYS_REFRESH_S`. Between the
issuer ending a session and the event arriving there is a window of one event delivery; a caller
that cannot accept it verifies over the mesh (``<issuer>.verify``), which is never stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

from ._client import MeshClient, Subscription
from ._errors import MeshError, ReauthRequired, Timeout
from ._token_keys import MAX_ACCESS_LIFETIME_S, PublicKeys
from ._tokens import AccessClaims, InvalidToken, VerifiedTokens, verify_access

#: The least time between two key fetches caused by unknown key ids: a rotation is picked up on the
#: first token signed with the new key, while a flood of forged kids costs the issuer at most one
#: ``keys`` call a second per verifier.
KEYS_REFRESH_S: Final = 1.0
_CALL_TIMEOUT_S: Final = 5.0


class LocalVerifier:
    """Verifies access tokens for ``audience`` with the keys of the service ``issuer_service``."""

    def __init__(self, client: MeshClient, issuer_service: str, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.service = issuer_service
        self.clock = clock
        self.issuer = ""
        self._keys: PublicKeys | None = None
        self._verified = VerifiedTokens()
        self._keys_at = float("-inf")
        #: session id -> when it may be forgotten (no token of it can be valid after that)
        self._revoked: dict[str, float] = {}
        self._subscription: Subscription | None = None
        self._generation = -1
        self._task: asyncio.Task[None] | None = None
        self._reload = asyncio.Lock()

    async def start(self) -> None:
        """Subscribe to the revocations, then load the keys and the recent ones (in that order, so
        nothing ended in between is missed). Raises the mesh error when the issuer cannot answer."""
        self._subscription = await self.client.subscribe(f"{self.service}.revoked.", timeout=_CALL_TIMEOUT_S)
        self._task = asyncio.create_task(self._follow(self._subscription), name=f"{self.service}-revocations")
        await self._load_keys()
        await self._load_revocations()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._subscription is not None:
            with contextlib.suppress(MeshError):
                await self._subscription.close()
            self._subscription = None

    async def verify(self, token: object, *, audience: str, presenter: str,
                     max_age_s: float | None = None) -> AccessClaims:
        """The claims of ``token`` for ``audience``, presented by the key ``presenter``; raises
        :class:`InvalidToken` (``revoked`` for an ended session) or the mesh error when the
        revocation view cannot be brought up to date. ``max_age_s`` (a sensitive operation, the
        issuer's ``step_up_s``): a sign-in older than that raises :class:`~shared.ReauthRequired`."""
        if self._keys is None or self._subscription is None:
            raise RuntimeError("start() the verifier before verifying")
        await self._ensure_complete()
        now = self.clock()
        try:
            claims = verify_access(token, self._keys, issuer=self.issuer, audience=audience, presenter=presenter,
                                   now=now, cache=self._verified)
        except InvalidToken as exc:
            if exc.reason != "kid_unknown" or now - self._keys_at < KEYS_REFRESH_S:
                raise
            await self._load_keys()
            claims = verify_access(token, self._keys, issuer=self.issuer, audience=audience, presenter=presenter,
                                   now=now, cache=self._verified)
        expiry = self._revoked.get(claims.session_id)
        if expiry is not None and expiry > now:
            raise InvalidToken("revoked")
        if max_age_s is not None and now - claims.auth_time > max_age_s:
            raise ReauthRequired(f"this operation needs a sign-in within the last {max_age_s:.0f} s: sign in "
                                 f"again ({self.service}.login.reauth) and retry")
        return claims

    async def _ensure_complete(self) -> None:
        subscription = self._subscription
        assert subscription is not None
        generation = self.client.connection.generation
        if generation != self._generation or subscription.overflow:
            # Events may have been lost (a reconnection, a full queue): reload before answering.
            async with self._reload:
                if generation != self._generation or subscription.overflow:
                    subscription.overflow = 0
                    await self._load_revocations()
                    self._generation = generation

    async def _load_keys(self) -> None:
        reply = await self.client.call(f"{self.service}.keys", timeout=_CALL_TIMEOUT_S)
        self.issuer = str(reply["issuer"])
        self._keys = PublicKeys(reply["keys"])
        self._keys_at = self.clock()

    async def _load_revocations(self) -> None:
        generation = self.client.connection.generation
        reply = await self.client.call(f"{self.service}.revocations", timeout=_CALL_TIMEOUT_S)
        self._revoke(reply.get("sessions") or [])
        self._generation = generation

    def _revoke(self, sessions: Any) -> None:
        now = self.clock()
        until = now + MAX_ACCESS_LIFETIME_S
        for session in sessions if isinstance(sessions, list) else []:
            if isinstance(session, str):
                self._revoked[session] = until
        if len(self._revoked) > 1024:
            self._revoked = {s: t for s, t in self._revoked.items() if t > now}

    async def _follow(self, subscription: Subscription) -> None:
        while True:
            try:
                event = await subscription.next(timeout=3600.0)
            except Timeout:
                continue
            # Only the issuer's own word counts: the broker stamps who published.
            if event.sender == self.service and isinstance(event.body, dict):
                self._revoke(event.body.get("sessions"))

"""authn's keys and its database, in step with the mesh: unseal, rotate, seal.

Contracts:

- Unsealing fetches the ``accounts`` key (the version the database is under, recorded beside it in
  ``accounts.version``, and the current one) and opens the database, re-keying it to the current
  version when a rotation happened meanwhile; then the current ``token-signing`` version and the one
  before it (tokens it signed stay valid for one access-token lifetime). Until that succeeds every
  call but ``health`` answers ``SEALED``; the keeper retries with a growing delay, at once on
  ``security.unsealed``. A database the key does not open leaves authn ``failed``, not sealed.
- ``security.sealed`` closes the database and wipes every key. ``security.key_rotated`` for
  ``token-signing`` makes the new version sign at once, the previous one verifying until the tokens
  it signed have expired; for ``accounts`` it re-keys the database.
- A crash between a re-key and the write of ``accounts.version`` is recovered at the next unseal:
  the recorded version is tried first, then the current one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog

from shared import FAILED, SEALED, MeshError, Readiness, StateError
from shared.crypto import wipe
from shared.keeper import (
    LOCKED_REASON,
    keep_unsealed,
    open_current,
    rekey_current,
    watch_key_source,
    without_keys,
)
from shared.tokens import SigningKeys, VerifiedTokens

from .database import AccountsDB
from .refresh import digest_key

log = structlog.get_logger("authn")

KEY_CALL_TIMEOUT_S: Final = 5.0
KEY_RETRY_MIN_S: Final = 1.0
KEY_RETRY_MAX_S: Final = 60.0
PERIOD_S: Final = 60.0


class Keys:
    """What authn holds while unsealed: the open database and the token keys by version."""

    def __init__(self) -> None:
        self.db: AccountsDB | None = None
        self.signing = SigningKeys()
        #: Access tokens already verified (signature and claims), so a token presented again is a
        #: lookup; every per-call check is still made (shared.tokens.VerifiedTokens).
        self.verified = VerifiedTokens()
        #: token-signing version -> the key refresh-token digests of that version are made with.
        self.digest: dict[int, bytearray] = {}
        #: Versions keyvault said it does not have (asked once, never again).
        self.missing: set[int] = set()

    def wipe(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        self.signing = SigningKeys()
        self.verified = VerifiedTokens()
        for key in self.digest.values():
            wipe(key)
        self.digest.clear()
        self.missing.clear()


class Keeper:
    """Keeps :class:`Keys` in step with keyvault. ``call`` is the service's mesh call, ``clock`` the
    wall clock (token times), ``access_token_s`` how long a retired signing key keeps verifying."""

    def __init__(self, directory: Path, call: Callable[..., Any], clock: Callable[[], float],
                 access_token_s: int) -> None:
        self.directory = directory
        self.call = call
        self.clock = clock
        self.access_token_s = access_token_s
        self.keys = Keys()
        self.state = "sealed"   # sealed | ok | failed
        self.readiness_override: Readiness | None = Readiness(SEALED, LOCKED_REASON, "keyvault")
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def db_path(self) -> Path:
        return self.directory / "accounts.db"

    async def start(self, subscribe: Callable[..., Any]) -> None:
        watch = await watch_key_source("authn", "keyvault", subscribe, self._on_security_event,
                                       timeout=KEY_CALL_TIMEOUT_S)
        self._tasks += [watch] if watch is not None else []
        await self.try_unseal()
        self._tasks.append(asyncio.create_task(keep_unsealed(
            self._wake, lambda: self.state == "sealed", self.try_unseal, self._periodic, period=PERIOD_S,
            retry_min=KEY_RETRY_MIN_S, retry_max=KEY_RETRY_MAX_S), name="authn-keeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.seal("stopping")

    async def seal(self, reason: str) -> None:
        async with self._lock:
            self.keys.wipe()
            self.state = "sealed"
            self.readiness_override = Readiness(SEALED, LOCKED_REASON, "keyvault")
            log.info("sealed", reason=reason)

    async def _fetch(self, purpose: str, version: int | None = None) -> tuple[int, bytearray]:
        body: dict[str, Any] = {"purpose": purpose} if version is None else {"purpose": purpose, "version": version}
        reply = await self.call("keyvault.keys.get", body, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes cannot be wiped (shared/_crypto.py); the copy we keep can.
        return int(reply["version"]), bytearray(reply["key"])

    async def try_unseal(self) -> bool:
        """Fetch the keys and open the database. True when no longer sealed (ok or failed)."""
        async with self._lock:
            if self.state != "sealed":
                return True
            try:
                await self._open_database()
                await self._add_signing(None)
            except StateError as exc:
                self.keys.wipe()
                self.state, self.readiness_override = "failed", Readiness(FAILED, exc.message)
                log.error("authn_unusable", reason=exc.message)
                return True
            except MeshError as exc:
                self.keys.wipe()
                self.readiness_override = without_keys(exc, keys_from="keyvault")
                log.info("sealed", reason=exc.code)
                return False
            self.state, self.readiness_override = "ok", None
            log.info("unsealed", signing=self.keys.signing.current_version)
            return True

    async def _open_database(self) -> None:
        self.keys.db = await open_current(AccountsDB, self.db_path, "accounts", self._fetch)

    async def _add_signing(self, version: int | None) -> None:
        """Add the current ``token-signing`` version (or ``version``). At unseal the one before it
        comes first (versions are added in ascending order): it verifies the tokens it signed for
        one access-token lifetime from now, the same window a rotation announced later gets."""
        new, seed = await self._fetch("token-signing", version)
        try:
            signing = self.keys.signing
            try:
                held: int | None = signing.current_version
            except LookupError:
                held = None  # nothing signs yet: this is the unseal
            if held is not None and new <= held:
                return  # already signing with it (a repeated announcement)
            if held is None and new > 1:
                old, old_seed = await self._fetch("token-signing", new - 1)
                try:
                    signing.add(old, old_seed)
                    self.keys.digest[old] = bytearray(digest_key(old_seed))
                finally:
                    wipe(old_seed)
            # The versions before it verify what they signed for one access-token lifetime more.
            retire_after = self.clock() + self.access_token_s
            signing.add(new, seed, retire_after=retire_after if held is not None or new > 1 else None)
            self.keys.digest[new] = bytearray(digest_key(seed))
        finally:
            wipe(seed)

    async def digest_key_of(self, version: int) -> bytearray | None:
        """The refresh digest key of ``version``, fetched when not held; None when keyvault has no
        such version (a forged token)."""
        if version not in self.keys.digest:
            # Only versions keyvault can have are asked for, each at most once: a stream of forged
            # versions must not spend authn's key-fetch budget at keyvault (it rate-limits fetches).
            try:
                newest = self.keys.signing.current_version
            except LookupError:
                return None
            if version > newest or version in self.keys.missing:
                return None
            try:
                _, seed = await self._fetch("token-signing", version)
            except MeshError as exc:
                if exc.code == "BAD_REQUEST":
                    self.keys.missing.add(version)
                    return None
                raise
            try:
                self.keys.digest[version] = bytearray(digest_key(seed))
            finally:
                wipe(seed)
        return self.keys.digest[version]

    async def _periodic(self) -> None:
        self.keys.signing.prune(self.clock())

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.sealed":
            await self.seal("security.sealed")
        elif topic == "security.key_rotated" and self.state == "ok" and isinstance(body, dict):
            purpose = body.get("purpose")
            try:
                async with self._lock:
                    if purpose == "token-signing":
                        await self._add_signing(None)
                    elif purpose == "accounts":
                        await self._rekey_database()
            except (MeshError, StateError) as exc:
                # The old versions stay in use (and readable): the next unseal tries again.
                log.warning("rotated_key_not_applied", purpose=purpose, reason=exc.code)
        elif topic == "security.unsealed":
            self._wake.set()

    async def _rekey_database(self) -> None:
        """Re-encrypt the open database under the current ``accounts`` key (shared.keeper.rekey_current)."""
        if self.keys.db is not None:
            await rekey_current(self.keys.db, self.db_path, "accounts", self._fetch)

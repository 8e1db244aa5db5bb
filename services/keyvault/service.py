"""The keyvault service: the master key, purpose keys, sealing, CLI sessions.

Keys are released only over the mesh, only to the identity mesh.toml entitles
(``[keyvault.entitlements]``). A key release fails closed (DESIGN.md invariant 7):
it is recorded by the audit service (``audit.append``, awaited with a short
timeout) before the key is returned, and refused with ``UNAVAILABLE`` ("audit is
not recording") when audit is down, sealed or cannot write. The one exception is
audit's own keys (identity ``audit`` fetching ``audit-hmac`` / ``audit-signing``),
which audit needs before it can record anything: those releases, every refusal,
and the other records below (lock, unlock, sessions, password change, rotation)
go to keyvault's own audit spool, made durable (fsync) before the reply and
shipped to audit by an :class:`~shared.AuditShipper` (nothing lost while audit
is down). No record carries key material.
Data keys live in bytearrays in this process only and are zeroed on lock.
Operations that change the key hierarchy (password change, rotation) ask for
the password afresh, whatever the session.

The module split: this class is the wire surface (every handler, and the lifecycle hooks); the
audit spool and the recording of key releases are :mod:`.recording`, the seal state (keys in
memory, keystore, unseal and seal, the password check and its backoff) is :mod:`.seal`, and
password change and rotation are :mod:`.hierarchy`. Names other code imports from here
(``Keyvault``, the constants) stay importable from here (``__all__``).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from typing import Any

import structlog

from shared import (
    DEGRADED,
    FAILED,
    PURPOSES,
    READY,
    SEALED,
    BadRequest,
    Forbidden,
    MeshConfig,
    MeshHome,
    NoFields,
    RateLimited,
    Readiness,
    RequestContext,
    Sealed,
    Service,
    TokenBucket,
    handler,
    mesh_config,
)
from shared.crypto import wipe
from shared.keeper import LOCKED_REASON
from shared.passwords import check_strength

from . import store
from .entitlements import Entitlements
from .hierarchy import HierarchyMixin
from .keystore import protection
from .recording import (
    AUDIT_CALL_TIMEOUT_S,
    AUDIT_OWN_PURPOSES,
    REFUSED_NOT_RECORDING,
    SHIP_PERIOD_S,
    RecordingMixin,
)
from .schema import KeyReply, KeyRequest, Password, PasswordChange, Rotate, Token
from .seal import SealMixin
from .sessions import Sessions, Throttle

# What this module offered before the split, re-exported so its importers (tests/) keep
# working; mypy --strict does not re-export implicitly.
__all__ = ["AUDIT_CALL_TIMEOUT_S", "AUDIT_OWN_PURPOSES", "REFUSED_NOT_RECORDING", "SHIP_PERIOD_S", "Keyvault"]

log = structlog.get_logger("keyvault")


class Keyvault(HierarchyMixin, SealMixin, RecordingMixin, Service):
    """Mesh name ``keyvault``. The machinery its handlers call lives in the mixins (see the
    module docstring); every handler is declared here, where the dispatch table looks."""

    name = "keyvault"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, checkpoint: store.Checkpoint | None = None) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        # Read from the files, the entitlements follow them (meshctl service add/remove).
        self.entitlements = Entitlements(self.home.root, self.config, follow=config is None)
        cfg = self.config.keyvault
        self.sessions = Sessions(cfg.session_idle_s, clock)
        self.throttle = Throttle(cfg.unlock_backoff_base_ms / 1000, cfg.unlock_backoff_max_ms / 1000, clock)
        self.checkpoint = checkpoint or (lambda step: None)
        # The types of this state are declared on the mixins that use it (.seal, .recording).
        self.keys = {}
        self.state = None
        self.keystore = None
        self.keystore_warning = None
        self.spool = None
        self.shipper = None
        self._lock = asyncio.Lock()
        self._fetch_buckets: dict[str, TokenBucket] = {}
        self.clock = clock

    # -- lifecycle ------------------------------------------------------------

    async def on_start(self) -> None:
        """Load the state (refusing a corrupt one) and unlock from the keystore if it holds the key."""
        self._open_audit_spool()
        self.state = store.load(self.home)
        if self.state is None:
            log.warning("keyvault_not_initialised", hint="run `meshctl init`")
            return
        self._unseal_from_keystore(self.state)

    async def on_stop(self) -> None:
        self._wipe()
        await self._close_audit_spool()

    def _require_operator(self, ctx: RequestContext) -> None:
        if ctx.role != "operator":
            raise Forbidden("only an operator may do this")

    # -- status, seal and unlock ---------------------------------------------------

    def readiness(self) -> Readiness:
        """Sealed until unlocked; degraded while audit cannot record key releases (fail closed: no key
        but audit's own leaves meanwhile); failed when the home was never initialised."""
        if self.state is None:
            return Readiness(FAILED, "keyvault is not initialised: `meshctl down`, then `meshctl init`")
        if not self.keys:
            return Readiness(SEALED, LOCKED_REASON)
        if self.audit_refusal is not None:
            return Readiness(DEGRADED, f"releases no key: audit cannot record ({self.audit_refusal})", "audit")
        return Readiness(READY)

    @handler("status")
    async def status(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``keyvault.status`` → initialised, sealed, keystore, warnings, and ``protection``: one
        line saying what protects the master key and what that does not. ``meshctl status``."""
        return {"initialised": self.state is not None, "sealed": not self.keys,
                "keystore": self.keystore.name if self.keystore else None,
                "keystore_warning": self.keystore_warning,
                "protection": protection(self.keystore) if self.keystore else None,
                "test_profiles": self.config.argon2.test_profiles,
                "current_versions": dict(self.state.current) if self.state else {}}

    # Handlers that run Argon2 (seconds) are concurrent, so health, status and key fetches
    # are answered meanwhile; they serialise among themselves on self._lock.
    @handler("unlock", request=Password, concurrent=True)
    async def unlock(self, ctx: RequestContext, req: Password) -> dict[str, Any]:
        """``keyvault.unlock {password}``: unseal and keep the master key in the keystore.
        ``meshctl security unlock``."""
        self._require_operator(ctx)
        async with self._lock:
            master = await self._check_password(req.password, ctx, "keyvault.unlock")
            try:
                # The record is durable before anything is unsealed: no audit, no unlock.
                self._audit("keyvault.unlock", ctx, outcome="ok")
                self._unseal_with(master)
            finally:
                wipe(master)
        await self._announce("security.unsealed")
        return {"sealed": False}

    @handler("lock", concurrent=True)
    async def lock(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``keyvault.lock``: wipe every key from memory and the keystore; data operations answer
        SEALED until ``meshctl security unlock``. ``meshctl security lock``."""
        self._require_operator(ctx)
        async with self._lock:
            # The record is durable before anything is wiped: no audit, no lock.
            self._audit("keyvault.lock", ctx, outcome="ok")
            self._seal()
        await self._announce("security.sealed")
        return {"sealed": True}

    # -- CLI sessions --------------------------------------------------------------

    @handler("login", request=Password, concurrent=True)
    async def login(self, ctx: RequestContext, req: Password) -> dict[str, Any]:
        """``keyvault.login {password}`` → ``{token, idle_s}``, a session bound to the caller's
        certificate. ``meshctl security login``."""
        self._require_operator(ctx)
        async with self._lock:
            wipe(await self._check_password(req.password, ctx, "keyvault.session_start"))
        token = self.sessions.open(ctx.caller)
        self._audit("keyvault.session_start", ctx, outcome="ok")
        return {"token": token, "idle_s": self.sessions.idle_s}

    @handler("session", request=Token)
    async def session(self, ctx: RequestContext, req: Token) -> dict[str, Any]:
        """``keyvault.session {token}`` → ``{active, remaining_s}``. ``meshctl security session``."""
        remaining = self.sessions.remaining(req.token, ctx.caller)
        return {"active": remaining is not None, "remaining_s": None if remaining is None else round(remaining, 1)}

    @handler("logout", request=Token)
    async def logout(self, ctx: RequestContext, req: Token) -> dict[str, Any]:
        """``keyvault.logout {token}``: end the session now. ``meshctl security clear``."""
        cleared = self.sessions.clear(req.token)
        if cleared:
            self._audit("keyvault.session_end", ctx, outcome="ok")
        return {"cleared": cleared}

    # -- password change and rotation (password asked afresh) ----------------------

    @handler("passwd", request=PasswordChange, concurrent=True)
    async def passwd(self, ctx: RequestContext, req: PasswordChange) -> dict[str, Any]:
        """``keyvault.passwd {old_password, new_password}``: re-wrap every data key under a key
        derived from the new password; data is not re-encrypted. ``meshctl security passwd``."""
        self._require_operator(ctx)
        if hmac.compare_digest(req.old_password.encode(), req.new_password.encode()):
            raise BadRequest("the new password is the old one")
        check_strength(req.new_password)
        async with self._lock:
            old_master = await self._check_password(req.old_password, ctx, "keyvault.password_change")
            await self._rewrap_all(ctx, old_master, req.new_password)
        return {"changed": True}

    @handler("keys.rotate", request=Rotate, concurrent=True)
    async def rotate(self, ctx: RequestContext, req: Rotate) -> dict[str, Any]:
        """``keyvault.keys.rotate {purpose, password}`` → ``{purpose, version}``: new writes use
        the new version; older ones stay readable. Announced on ``security.key_rotated {purpose,
        version}`` so holders (storage) re-encrypt. ``meshctl keys rotate PURPOSE``."""
        self._require_operator(ctx)
        if req.purpose not in PURPOSES:
            raise BadRequest(f"unknown purpose; purposes are {', '.join(PURPOSES)}")
        if req.purpose == "audit-signing":
            # Every stored checkpoint is verified against this key (and exports against its public
            # half): a new version would make the existing log unverifiable, so it is refused.
            raise BadRequest("audit-signing cannot be rotated: the audit log's checkpoints are verified "
                             "against it")
        async with self._lock:
            if not self.keys:
                raise Sealed("the mesh is sealed: run `meshctl security unlock`")
            master = await self._check_password(req.password, ctx, "keyvault.key_rotate", purpose=req.purpose)
            version = self._add_version(ctx, req.purpose, master)
        await self._announce("security.key_rotated", purpose=req.purpose, version=version)
        return {"purpose": req.purpose, "version": version}

    @handler("keys.list", request=Token)
    async def keys_list(self, ctx: RequestContext, req: Token) -> list[dict[str, Any]]:
        """``keyvault.keys.list {token}`` → purposes, versions, ages and who fetched them
        (needs a session). ``meshctl keys list``."""
        self.sessions.use(req.token, ctx.caller)
        state = self._require_state()
        now = time.time()
        return [{"purpose": purpose, "version": version, "current": state.current[purpose] == version,
                 "age_s": round(now - entry.created, 1), "fetched_by": sorted(entry.fetched_by)}
                for purpose, entries in sorted(state.versions.items())
                for version, entry in sorted(entries.items())]

    # -- key release -----------------------------------------------------------------

    # Concurrent: a release waits for audit (up to AUDIT_CALL_TIMEOUT_S) and must not hold up
    # status, health or other releases meanwhile.
    @handler("keys.get", request=KeyRequest, reply=KeyReply, concurrent=True)
    async def keys_get(self, ctx: RequestContext, req: KeyRequest) -> KeyReply:
        """``keyvault.keys.get {purpose, version?}`` → ``{purpose, version, key}`` for an entitled
        identity only (the current version unless one is named). The release is recorded by audit
        first; ``UNAVAILABLE`` when audit cannot record it (audit's own keys excepted, see the
        module docstring). Not a meshctl command."""
        entitled = self.entitlements.of(ctx.caller)
        per_minute = self.config.keyvault.key_fetches_per_minute
        bucket = self._fetch_buckets.setdefault(ctx.caller, TokenBucket(per_minute / 60, per_minute, self.clock()))
        if not bucket.take(self.clock()):
            raise RateLimited(f"more than {per_minute} key fetches a minute; keep keys in memory instead")
        if req.purpose not in entitled:
            self._audit("keyvault.key_refused", ctx, purpose=req.purpose, reason="not entitled")
            raise Forbidden(f"{ctx.caller} is not entitled to {req.purpose} keys")
        if not self.keys:
            self._audit("keyvault.key_refused", ctx, purpose=req.purpose, reason="sealed")
            raise Sealed("the mesh is sealed: run `meshctl security unlock`")
        state = self._require_state()
        version = req.version if req.version is not None else state.current[req.purpose]
        key = self.keys.get((req.purpose, version))
        if key is None:
            raise BadRequest(f"no version {version} of {req.purpose}")
        if ctx.caller == "audit" and req.purpose in AUDIT_OWN_PURPOSES:
            self._audit("keyvault.key_release", ctx, purpose=req.purpose, version=version)
        else:
            await self._record_release(ctx, req.purpose, version)
        if not self.keys or self.keys.get((req.purpose, version)) is not key:
            # Sealed (or rotated away) while audit was recording: do not hand out a wiped key.
            self._audit("keyvault.key_refused", ctx, purpose=req.purpose, reason="sealed")
            raise Sealed("the mesh is sealed: run `meshctl security unlock`")
        state = self._require_state()  # a rotation may have replaced it meanwhile
        entry = state.versions[req.purpose][version]
        if ctx.caller not in entry.fetched_by:
            entry.fetched_by.append(ctx.caller)
            store.save(self.home, state)
        return KeyReply(purpose=req.purpose, version=version, key=bytes(key))

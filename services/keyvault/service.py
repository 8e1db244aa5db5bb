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
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from shared import (
    PURPOSES,
    AuditShipper,
    BadRequest,
    Forbidden,
    MeshConfig,
    MeshError,
    MeshHome,
    NoFields,
    RateLimited,
    RequestContext,
    Sealed,
    Service,
    Spool,
    TokenBucket,
    Unauthenticated,
    Unavailable,
    config_path,
    handler,
    load_config,
)
from shared._crypto import derive_from_password, wipe
from shared._passwords import check_strength

from . import store
from .keystore import FileKeystore, Keystore, choose_keystore
from .schema import KeyReply, KeyRequest, Password, PasswordChange, Rotate, Token
from .sessions import Sessions, Throttle

log = structlog.get_logger("keyvault")

#: Keys audit fetches for itself: released without a live audit record (it cannot record yet).
AUDIT_OWN_PURPOSES: Final = frozenset({"audit-hmac", "audit-signing"})
AUDIT_CALL_TIMEOUT_S: Final = 2.0    #: how long a key release waits for audit to record it
SHIP_PERIOD_S: Final = 1.0           #: the spool shipper's period when nothing new is spooled
REFUSED_NOT_RECORDING: Final = "audit is not recording: key release refused"


class Keyvault(Service):
    """Mesh name ``keyvault``."""

    name = "keyvault"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, checkpoint: store.Checkpoint | None = None) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or load_config(config_path(self.home.root))
        cfg = self.config.keyvault
        self.sessions = Sessions(cfg.session_idle_s, clock)
        self.throttle = Throttle(cfg.unlock_backoff_base_ms / 1000, cfg.unlock_backoff_max_ms / 1000, clock)
        self.checkpoint = checkpoint or (lambda step: None)
        self.keys: dict[tuple[str, int], bytearray] = {}
        self.state: store.VaultState | None = None
        self.keystore: Keystore | None = None
        self.keystore_warning: str | None = None
        self.spool: Spool | None = None
        self.shipper: AuditShipper | None = None
        self._lock = asyncio.Lock()
        self._fetch_buckets: dict[str, TokenBucket] = {}
        self.clock = clock

    # -- lifecycle ------------------------------------------------------------

    async def on_start(self) -> None:
        """Load the state (refusing a corrupt one) and unlock from the keystore if it holds the key."""
        self.home.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool = Spool(self.home.spool / "keyvault-audit.spool", self.config.keyvault.audit_spool_max_records)
        if self.mesh is not None:  # None only when handlers are called directly (tests)
            self.shipper = AuditShipper(self.spool, self.mesh, name="keyvault-audit-shipper", period=SHIP_PERIOD_S)
            self.shipper.start()
        self.state = store.load(self.home)
        if self.state is None:
            log.warning("keyvault_not_initialised", hint="run `meshctl init`")
            return
        self.keystore, self.keystore_warning = choose_keystore(self.config.keyvault.keystore, self.home,
                                                               self.state.mesh_id)
        if self.keystore_warning:
            log.warning("keystore_warning", warning=self.keystore_warning)
        master = self.keystore.get()
        if master is None:
            log.info("sealed", reason="no master key in the keystore")
            return
        try:
            self.keys = store.open_keys(self.state, master)
            log.info("unsealed", keystore=self.keystore.name)
            self._forget_stale_file_keystore()
        except store.IntegrityError:
            # A stale key (e.g. a crash between a password change and the keystore update):
            # stay sealed until the operator unlocks with the current password.
            log.warning("sealed", reason="the keystore's master key does not open the state")
        finally:
            wipe(master)

    async def on_stop(self) -> None:
        self._wipe()
        if self.shipper is not None:
            await self.shipper.stop()
            self.shipper = None
        if self.spool is not None:
            self.spool.close()

    def _forget_stale_file_keystore(self) -> None:
        # The master key moved to a platform keyring: a copy left in the file fallback
        # would be a master key on disk for nothing.
        if self.keystore is not None and not isinstance(self.keystore, FileKeystore):
            stale = FileKeystore(self.home.keys / "master.keystore")
            if stale.path.exists():
                stale.delete()
                log.info("file_keystore_removed", reason="the master key is in the platform keyring")

    def _wipe(self) -> None:
        for key in self.keys.values():
            wipe(key)
        self.keys = {}

    def _audit(self, event: str, ctx: RequestContext, **details: Any) -> None:
        """Spool an audit record durably (fsync) before the operation answers: fail closed."""
        assert self.spool is not None
        record = {"type": event, "time": time.time(), "actor": ctx.caller, "role": ctx.role, **details}
        if not self.spool.append(record):
            raise Unavailable("the audit spool is full; refusing until audit catches up")
        self.spool.sync()
        if self.shipper is not None:
            self.shipper.notify()

    async def _record_release(self, ctx: RequestContext, purpose: str, version: int) -> None:
        """Have audit record a key release durably before the key leaves; refuse otherwise."""
        record = {"type": "keyvault.key_release", "outcome": "ok", "target": purpose,
                  "details": {"subject": ctx.caller, "role": ctx.role, "purpose": purpose, "version": version}}
        timeout = min(AUDIT_CALL_TIMEOUT_S, max(0.1, ctx.remaining() - 0.5))
        try:
            if self.mesh is None:
                raise Unavailable("keyvault is not connected to the mesh")
            await self.mesh.call("audit.append", {"records": [record]}, timeout=timeout)
        except MeshError as exc:
            log.warning("key_release_refused", purpose=purpose, caller=ctx.caller, reason=exc.code)
            self._audit("keyvault.key_refused", ctx, purpose=purpose, version=version,
                        reason="audit not recording", audit_error=exc.code)
            raise Unavailable(REFUSED_NOT_RECORDING) from None

    def _require_operator(self, ctx: RequestContext) -> None:
        if ctx.role != "operator":
            raise Forbidden("only an operator may do this")

    def _require_state(self) -> store.VaultState:
        if self.state is None:
            raise Unavailable("keyvault is not initialised: run `meshctl init`")
        return self.state

    async def _check_password(self, password: str) -> bytearray:
        """The master key for ``password``, derived off the event loop; throttled when wrong."""
        state = self._require_state()
        self.throttle.check()
        secret = bytearray(password.encode())
        try:
            master = await asyncio.get_running_loop().run_in_executor(None, store.derive_master, secret, state)
        finally:
            wipe(secret)
        try:
            keys = store.open_keys(state, master)
        except store.IntegrityError:
            wipe(master)
            self.throttle.failed()
            raise Unauthenticated("wrong password") from None
        for key in keys.values():
            wipe(key)
        self.throttle.succeeded()
        return master

    # -- status, seal and unlock ---------------------------------------------------

    @handler("status")
    async def status(self, ctx: RequestContext, req: NoFields) -> dict[str, Any]:
        """``keyvault.status`` → initialised, sealed, keystore, warnings. ``meshctl status``."""
        return {"initialised": self.state is not None, "sealed": not self.keys,
                "keystore": self.keystore.name if self.keystore else None,
                "keystore_warning": self.keystore_warning,
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
            try:
                master = await self._check_password(req.password)
            except Unauthenticated:
                self._audit("keyvault.unlock", ctx, outcome="wrong-password")
                raise
            try:
                # The record is durable before anything is unsealed: no audit, no unlock.
                self._audit("keyvault.unlock", ctx, outcome="ok")
                assert self.state is not None and self.keystore is not None
                self._wipe()
                self.keys = store.open_keys(self.state, master)
                self.keystore.put(master)
                self._forget_stale_file_keystore()
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
            self._audit("keyvault.lock", ctx, outcome="ok")
            self._wipe()
            self.sessions.clear_all()
            if self.keystore is not None:
                self.keystore.delete()
        await self._announce("security.sealed")
        return {"sealed": True}

    async def _announce(self, topic: str, **body: Any) -> None:
        # Services that hold keys wipe them on security.sealed, and fetch the new version on
        # security.key_rotated. Best effort: the change itself already happened here, and a
        # service that misses the event gets SEALED from us (or finds the version at its next start).
        if self.mesh is None:
            return
        try:
            await self.mesh.publish(topic, {"by": "keyvault", **body}, timeout=2)
        except MeshError as exc:
            log.warning("announce_failed", topic=topic, error=exc.code)

    # -- CLI sessions --------------------------------------------------------------

    @handler("login", request=Password, concurrent=True)
    async def login(self, ctx: RequestContext, req: Password) -> dict[str, Any]:
        """``keyvault.login {password}`` → ``{token, idle_s}``, a session bound to the caller's
        certificate. ``meshctl security login``."""
        self._require_operator(ctx)
        async with self._lock:
            try:
                wipe(await self._check_password(req.password))
            except Unauthenticated:
                self._audit("keyvault.session_start", ctx, outcome="wrong-password")
                raise
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
            try:
                old_master = await self._check_password(req.old_password)
            except Unauthenticated:
                self._audit("keyvault.password_change", ctx, outcome="wrong-password")
                raise
            state = self._require_state()
            keys = store.open_keys(state, old_master)
            wipe(old_master)
            self.checkpoint("old-password-checked")
            salt = secrets.token_bytes(16)
            profile = self.config.argon2.master
            secret = bytearray(req.new_password.encode())
            new_master = await asyncio.get_running_loop().run_in_executor(
                None, derive_from_password, secret, salt, profile)
            wipe(secret)
            self.checkpoint("new-master-derived")
            was_sealed = not self.keys
            try:
                new_state = store.rewrap(state, keys, new_master, salt, profile)
                self._audit("keyvault.password_change", ctx, outcome="started")
                store.save(self.home, new_state, self.checkpoint)
                self.state = new_state
                assert self.keystore is not None
                if was_sealed:
                    # A password change does not unseal: the keystore stays empty and the
                    # keys stay wiped until `meshctl security unlock`.
                    for key in keys.values():
                        wipe(key)
                else:
                    self.keystore.put(new_master)
                    self.checkpoint("keystore-updated")
                    self._wipe()
                    self.keys = keys
                self._audit("keyvault.password_change", ctx, outcome="ok")
            finally:
                wipe(new_master)
        return {"changed": True}

    @handler("keys.rotate", request=Rotate, concurrent=True)
    async def rotate(self, ctx: RequestContext, req: Rotate) -> dict[str, Any]:
        """``keyvault.keys.rotate {purpose, password}`` → ``{purpose, version}``: new writes use
        the new version; older ones stay readable. Announced on ``security.key_rotated {purpose,
        version}`` so holders (storage) re-encrypt. ``meshctl keys rotate PURPOSE``."""
        self._require_operator(ctx)
        if req.purpose not in PURPOSES:
            raise BadRequest(f"unknown purpose; purposes are {', '.join(PURPOSES)}")
        async with self._lock:
            if not self.keys:
                raise Sealed("the mesh is sealed: run `meshctl security unlock`")
            try:
                master = await self._check_password(req.password)
            except Unauthenticated:
                self._audit("keyvault.key_rotate", ctx, purpose=req.purpose, outcome="wrong-password")
                raise
            try:
                # Work on a copy: if the write fails, the state in memory stays what is on disk.
                state = copy.deepcopy(self._require_state())
                self._audit("keyvault.key_rotate", ctx, purpose=req.purpose, outcome="started")
                version, key = store.add_version(state, master, req.purpose)
                store.save(self.home, state)
                self.state = state
                self.keys[(req.purpose, version)] = key
                self._audit("keyvault.key_rotate", ctx, purpose=req.purpose, version=version, outcome="ok")
            finally:
                wipe(master)
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
        entitled = self.config.keyvault.entitlements.get(ctx.caller, ())
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

"""The authz service: may this user, device, service or plugin do this action on this data, now,
and has the owner consented? (docs/authz.md)

Handlers, by concern (each in its own module, mixed in here):

- ``check`` and ``policy.*`` (checking.py): decisions, for the services that enforce them
  (storage, plugin-host) and for operators (``meshctl policy``);
- ``roles.*`` (roles.py): role assignments (``meshctl roles``);
- ``consent.*`` (consent.py): the owner's consent grants (``meshctl consent``, frontends, devices).

Decisions are Cedar's (cedarpy), over the policy directory ``[authz] policy_dir`` names, parsed
once (policies.py); the state they are made from is the :class:`~.authority.Authority`, which clears
its decision cache with every change, before the change is acknowledged and announced on
``authz.changed``. Role assignments and grants live in authz's own SQLCipher database (store.py,
opened at unseal by :class:`shared.keeper.DatabaseKeeper`); every deny, every allow on a sensitive
category and every change is audited through a durable spool (:class:`shared.AuditRecorder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from shared import (
    AuditRecorder,
    ConfigError,
    MeshConfig,
    MeshError,
    MeshHome,
    Readiness,
    Sealed,
    Service,
    mesh_config,
)
from shared.keeper import DatabaseKeeper

from .authority import Authority
from .checking import CheckHandlers
from .consent import ConsentHandlers
from .policies import DEFAULT_DIR, PolicyError, load
from .roles import RoleHandlers
from .store import AuthzDB

log = structlog.get_logger("authz")


def policy_directory(config: MeshConfig, home: MeshHome) -> Path:
    """The configured policy directory: ``[authz] policy_dir`` (relative to the home), or the
    directory shipped with authz when it is empty."""
    configured = config.authz.policy_dir
    return DEFAULT_DIR if not configured else (home.root / configured).resolve()


def declared_roles(config: MeshConfig) -> dict[str, tuple[str, ...]]:
    """``service:<name>`` -> the roles its declaration in mesh.toml gives it."""
    return {f"service:{name}": d.roles for name, d in config.services.items() if d.roles}


class Authz(CheckHandlers, RoleHandlers, ConsentHandlers, Service):
    """Mesh name ``authz``; handlers: see the module docstring. ``clock``: wall-clock seconds
    (grant times, the hour policies see), injected by tests."""

    name = "authz"

    def __init__(self, home: MeshHome | None = None, config: MeshConfig | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.home = home or MeshHome.from_env()
        self.config = config or mesh_config(self.home.root)
        self.clock = clock
        self.policy_dir = policy_directory(self.config, self.home)
        try:
            bundle = load(self.policy_dir)
        except PolicyError as exc:
            # A bad policy directory stops authz at start: no decision is better than a wrong one.
            raise ConfigError(f"authz policy: {exc}") from None
        self.authority = Authority(bundle, declared_roles(self.config), self.config.authz.cache_entries)
        self.loaded_at = self.clock()
        self.recorder = AuditRecorder("authz", self.home.spool / "authz-audit.spool")
        self.keeper = DatabaseKeeper(AuthzDB, self.home.data / "authz" / "authz.db", "authz", self._call,
                                     service="authz", loaded=self._loaded, sealed=self.authority.forget)

    async def _call(self, target: str, body: Any = None, *, timeout: float) -> Any:
        if self.mesh is None:
            raise Sealed("authz is not connected to the mesh")
        return await self.mesh.call(target, body, timeout=timeout)

    def _loaded(self, db: AuthzDB) -> None:
        """Hand what the database holds to the authority (at every unseal)."""
        assigned = {p: tuple(role for role, _, _ in held) for p, held in db.roles().items()}
        self.authority.use_roles(assigned)
        self.authority.use_grants(db.grants(live_at=self.clock()))

    async def on_start(self) -> None:
        self.recorder.open(self.mesh)
        await self.keeper.start(self.mesh.subscribe if self.mesh is not None else None)

    async def on_stop(self) -> None:
        await self.keeper.stop()
        await self.recorder.close()

    def readiness(self) -> Readiness:
        # A spool that could not be made durable outranks the keys: nothing may be recorded now.
        override = self.recorder.readiness or self.keeper.readiness
        return super().readiness() if override is None else override

    def db(self) -> AuthzDB:
        """The open database; ``SEALED`` (or the failure) while there is none."""
        return self.keeper.require()

    async def announce(self, what: str, **details: Any) -> None:
        """Publish ``authz.changed`` (after the authority has changed and cleared its cache) for
        anyone caching decisions elsewhere; a lost announcement is logged, the change stands."""
        if self.mesh is None:
            return
        try:
            await self.mesh.publish("authz.changed", {"what": what, **details}, timeout=5.0)
        except MeshError as exc:
            log.warning("change_not_announced", what=what, reason=exc.code)

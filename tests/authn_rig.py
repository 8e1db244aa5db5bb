"""A real in-process mesh for the authn tests: broker, keyvault (initialised, unsealed), audit and
authn, with a frontend service, two paired devices (``phone``, ``laptop``), a service that checks
tokens (``storage``) and an operator (``meshctl``).

Keys are real CURVE keys in a temporary home; authn's database is a real SQLCipher file keyed from
keyvault; audit really records. Argon2 uses tiny test profiles. authn's wall clock is real (tokens
are checked by PyJWT-compatible times), its monotonic clock (the throttle's) is a :class:`Clock` the
test advances.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.audit.service import Audit
from services.authn.service import Authn
from services.keyvault.service import Keyvault
from services.keyvault.setup import initialise
from shared import MeshClient, MeshConfig, MeshError, ServiceRunner

from .conftest import FAST_CONFIG, TEST_ARGON2, eventually
from .mesh import InProcessMesh

PASSWORD = "planted-Master-Passphrase-9431"
USER_PASSWORD = "planted-user-passphrase-7d41c"
CONFIG = FAST_CONFIG + TEST_ARGON2 + """
[acl.role.service]
call = ["keyvault.keys.get", "keyvault.status", "audit.append", "audit.public_key",
        "authn.login.*", "authn.token.*", "authn.passkey.*", "authn.logout", "authn.verify", "authn.keys",
        "authn.revocations"]

[acl.role.device]
call = ["authn.login.*", "authn.token.*", "authn.passkey.*", "authn.logout", "authn.verify"]

[acl.identity.keyvault]
publish = ["security."]

[acl.identity.audit]
publish = ["alerts."]
subscribe = ["security."]

[acl.identity.authn]
publish = ["authn."]
subscribe = ["security."]

[acl.identity.storage]
subscribe = ["authn.revoked."]

[acl.identity.meshctl]
call = ["keyvault.*", "audit.*", "authn.*"]
subscribe = ["*"]

[argon2.authentication]
memory_kib = 1024
iterations = 1
parallelism = 1
"""
IDENTITIES = {"keyvault": "service", "audit": "service", "authn": "service", "frontend": "service",
              "storage": "service", "phone": "device", "laptop": "device", "meshctl": "operator"}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class WallClock:
    """authn's wall clock: the real time plus an offset the test moves (tokens it issues carry it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class AuthnRig:
    """The mesh, its clients and the running authn (``authn`` is None while stopped)."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.home = mesh.home
        self.vault = Keyvault(mesh.home, mesh.config)
        self.audit = Audit(mesh.home, mesh.config)
        self.monotonic = Clock()
        self.wall = WallClock()
        self.authn: Authn | None = None
        self.runner: ServiceRunner | None = None
        self.clients: dict[str, MeshClient] = {}

    def __getitem__(self, name: str) -> MeshClient:
        return self.clients[name]

    def fingerprint(self, name: str) -> str:
        return self.mesh.pairs[name].certificate.fingerprint

    async def start_authn(self, config: MeshConfig | None = None) -> Authn:
        self.authn = Authn(self.home, config or self.mesh.config, clock=self.wall, monotonic=self.monotonic)
        self.runner = await self.mesh.start_service(self.authn)
        await eventually(lambda: self.authn_state("ready"), deadline=20)
        return self.authn

    async def stop_authn(self) -> None:
        assert self.runner is not None
        await self.runner.stop()
        await self.runner.client.close()
        self.runner = self.authn = None

    async def authn_state(self, want: str) -> bool:
        try:
            reply = await self["meshctl"].call("authn.health", timeout=5)
        except MeshError as exc:
            if exc.code in ("UNAVAILABLE", "TIMEOUT"):
                return False
            raise
        return bool(reply["state"] == want)

    async def add_user(self, username: str = "alice", password: str = USER_PASSWORD) -> dict[str, Any]:
        reply: dict[str, Any] = await self["meshctl"].call("authn.users.add", {"username": username,
                                                                               "password": password}, timeout=10)
        return reply

    async def login(self, via: str, username: str = "alice", password: str = USER_PASSWORD,
                    **extra: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self[via].call("authn.login.password", {"username": username,
                                                                              "password": password, **extra},
                                                     timeout=10)
        return reply

    async def verify(self, via: str, token: str, audience: str = "curvemesh", **extra: Any) -> dict[str, Any]:
        reply: dict[str, Any] = await self[via].call("authn.verify", {"access_token": token, "audience": audience,
                                                                      **extra}, timeout=10)
        return reply

    def spool_text(self) -> bytes:
        return (self.home.spool / "authn-audit.spool").read_bytes()


@contextlib.asynccontextmanager
async def authn_rig(root: Path, *, start: bool = True) -> AsyncIterator[AuthnRig]:
    mesh = InProcessMesh(root, CONFIG, dict(IDENTITIES))
    initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    async with mesh:
        mesh.broker.delivery.ship_after = math.inf  # the broker's own audit records are not what these tests count
        rig = AuthnRig(mesh)
        await mesh.start_service(rig.vault)
        for name in ("meshctl", "frontend", "storage", "phone", "laptop"):
            rig.clients[name] = await mesh.client(name)
        await mesh.start_service(rig.audit)
        await eventually(lambda: _audit_ok(rig), deadline=20)
        if start:
            await rig.start_authn()
        try:
            yield rig
        finally:
            if rig.runner is not None:
                await rig.stop_authn()
            await rig.vault.on_stop()


async def _audit_ok(rig: AuthnRig) -> bool:
    reply = await rig["meshctl"].call("audit.health", timeout=5)
    return bool(reply["state"] == "ready")

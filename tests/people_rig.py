"""A real in-process mesh for the authz tests: broker, keyvault (initialised, unsealed), audit, authn,
authz and storage, with a frontend service that holds the ``user-data`` role by its declaration, a
service with no role (``stranger``), a paired device (``phone``) and an operator (``meshctl``).

Keys are real CURVE keys in a temporary home; authn's and authz's databases are real SQLCipher files
keyed from keyvault; storage's stores are real; audit really records; the policies are the shipped
Cedar directory (or one the test names). authz's wall clock is the real time plus an offset the test
moves (grant expiry), as is authn's (sign-in age).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from services.audit.service import Audit
from services.authn.service import Authn
from services.authz.service import Authz
from services.keyvault.service import Keyvault
from services.keyvault.setup import initialise
from services.storage.service import Storage
from shared import MeshClient, MeshError, ServiceRunner

from .authn_rig import PASSWORD, USER_PASSWORD, Clock, WallClock
from .conftest import FAST_CONFIG, TEST_ARGON2, eventually
from .mesh import InProcessMesh

DATA_CALLS = ["storage.kv.*", "storage.records.*", "storage.analytics.*", "storage.files.*"]
CONFIG = FAST_CONFIG + TEST_ARGON2 + f"""
[services.frontend]
process = "none"
roles = ["user-data"]

[acl.role.service]
call = ["keyvault.keys.get", "keyvault.status", "audit.append", "audit.public_key",
        "authn.login.*", "authn.token.*", "authn.logout", "authn.verify", "authz.check", "authz.consent.*",
        {", ".join(f'"{c}"' for c in DATA_CALLS)}]

[acl.role.device]
call = ["authn.login.*", "authn.token.*", "authn.logout", "authn.verify", "authz.consent.*",
        "audit.checkpoint", "audit.witness_report",
        {", ".join(f'"{c}"' for c in DATA_CALLS)}]

[acl.identity.keyvault]
publish = ["security."]

[acl.identity.audit]
publish = ["alerts."]
subscribe = ["security."]

[acl.identity.authn]
publish = ["authn."]
subscribe = ["security."]

[acl.identity.authz]
publish = ["authz."]
subscribe = ["security."]

[acl.identity.storage]
subscribe = ["security.", "authz."]

[acl.identity.meshctl]
call = ["keyvault.*", "audit.*", "authn.*", "authz.*", "storage.*", "pairing.*", "mesh.*"]
subscribe = ["*"]

[argon2.authentication]
memory_kib = 1024
iterations = 1
parallelism = 1

[argon2.file]
memory_kib = 1024
iterations = 1
parallelism = 1
"""
IDENTITIES = {"keyvault": "service", "audit": "service", "authn": "service", "authz": "service",
              "storage": "service", "frontend": "service", "stranger": "service", "phone": "device",
              "meshctl": "operator"}


class PeopleRig:
    """The mesh, its clients and the running services (``authz`` is None while stopped)."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.home = mesh.home
        self.vault = Keyvault(mesh.home, mesh.config)
        self.audit = Audit(mesh.home, mesh.config)
        self.authn_wall = WallClock()
        self.authz_wall = WallClock()
        self.authn = Authn(mesh.home, mesh.config, clock=self.authn_wall, monotonic=Clock())
        self.storage = Storage(mesh.home, mesh.config)
        # storage reuses authz's allows for as long as authz says (on its own clock): it moves with authz's.
        self.storage.core.gate.allows.clock = lambda: time.monotonic() + self.authz_wall.offset
        self.authz: Authz | None = None
        self.authz_runner: ServiceRunner | None = None
        self.clients: dict[str, MeshClient] = {}

    def __getitem__(self, name: str) -> MeshClient:
        return self.clients[name]

    async def start_authz(self, *, spool_checkpoint: Callable[[str], None] | None = None) -> Authz:
        """Start authz; ``spool_checkpoint``: its audit spool's step hook (tests stall its fsyncs)."""
        self.authz = Authz(self.home, self.mesh.config, clock=self.authz_wall)
        if spool_checkpoint is not None:
            self.authz.recorder.checkpoint = spool_checkpoint
        self.authz_runner = await self.mesh.start_service(self.authz)
        await eventually(lambda: self.ready("authz"), deadline=20)
        return self.authz

    async def stop_authz(self) -> None:
        assert self.authz_runner is not None
        await self.authz_runner.stop()
        await self.authz_runner.client.close()
        self.authz_runner = self.authz = None

    async def ready(self, service: str) -> bool:
        try:
            reply = await self["meshctl"].call(f"{service}.health", timeout=5)
        except MeshError as exc:
            if exc.code in ("UNAVAILABLE", "TIMEOUT"):
                return False
            raise
        return bool(reply["state"] == "ready")

    async def add_user(self, username: str) -> str:
        reply = await self["meshctl"].call("authn.users.add", {"username": username, "password": USER_PASSWORD},
                                           timeout=10)
        return str(reply["id"])

    async def token(self, via: str, username: str) -> str:
        """A fresh access token of ``username``, signed in through ``via`` (bound to its key)."""
        reply = await self[via].call("authn.login.password", {"username": username, "password": USER_PASSWORD},
                                     timeout=10)
        return str(reply["access_token"])

    async def decisions(self) -> list[dict[str, Any]]:
        """authz's audited decisions so far, oldest first (from the audit log itself)."""
        await eventually(lambda: self._spool_drained(), deadline=20)
        tail = await self["meshctl"].call("audit.tail", {"type": "authz.decision", "limit": 1000}, timeout=10)
        return list(tail["records"])

    async def _spool_drained(self) -> bool:
        assert self.authz is not None and self.authz.recorder.spool is not None
        return len(self.authz.recorder.spool) == 0


@contextlib.asynccontextmanager
async def people_rig(root: Path, extra_config: str = "", *, broker_config: str = "",
                     identities: dict[str, str] | None = None) -> AsyncIterator[PeopleRig]:
    """The running rig. ``broker_config``: lines added to its ``[broker]`` table; ``identities``:
    more identities (name to role) beside :data:`IDENTITIES`."""
    config = CONFIG.replace("[broker]\n", "[broker]\n" + broker_config, 1)
    mesh = InProcessMesh(root, config + extra_config, {**IDENTITIES, **(identities or {})})
    initialise(mesh.home, mesh.config, bytearray(PASSWORD.encode()))
    async with mesh:
        mesh.broker.delivery.ship_after = math.inf  # the broker's own audit records are not what these tests count
        rig = PeopleRig(mesh)
        await mesh.start_service(rig.vault)
        for name in ("meshctl", "frontend", "stranger", "phone"):
            rig.clients[name] = await mesh.client(name)
        await mesh.start_service(rig.audit)
        await eventually(lambda: rig.ready("audit"), deadline=20)
        await mesh.start_service(rig.authn)
        await mesh.start_service(rig.storage)
        await rig.start_authz()
        await eventually(lambda: rig.ready("authn"), deadline=20)
        await eventually(lambda: rig.ready("storage"), deadline=30)
        try:
            yield rig
        finally:
            if rig.authz_runner is not None:
                await rig.stop_authz()
            await rig.vault.on_stop()

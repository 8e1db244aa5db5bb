"""A real in-process mesh for the storage tests: broker, keyvault (initialised, unsealed), audit and
storage, with two service clients (``authn``, ``pairing``) and an operator (``meshctl``).

Keys are real CURVE keys in a temporary home; the stores are real SQLCipher, RocksDB and DuckDB
files; audit really records. Argon2 uses tiny test profiles (``[argon2] test_profiles``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.audit.service import Audit
from services.keyvault.service import Keyvault
from services.keyvault.setup import initialise
from services.storage.service import Storage
from shared import MeshClient, MeshError, ServiceRunner, parse_config

from .conftest import FAST_CONFIG, TEST_ARGON2, eventually
from .mesh import InProcessMesh

PASSWORD = "planted-Master-Passphrase-9431"
CONFIG = FAST_CONFIG + TEST_ARGON2 + """
[acl.role.service]
call = ["keyvault.keys.get", "keyvault.status", "audit.append", "audit.public_key",
        "storage.kv.*", "storage.records.*", "storage.analytics.*", "storage.files.*"]

[acl.identity.keyvault]
publish = ["security."]

[acl.identity.audit]
subscribe = ["security."]

[acl.identity.storage]
subscribe = ["security."]

[acl.identity.meshctl]
call = ["keyvault.*", "audit.*", "storage.*"]

[argon2.file]
memory_kib = 1024
iterations = 1
parallelism = 1
"""
IDENTITIES = {"keyvault": "service", "audit": "service", "storage": "service", "authn": "service",
              "pairing": "service", "meshctl": "operator"}


def _scope(subject: str | None) -> dict[str, Any]:
    """The access fields of a call: none for the caller's own data (a subject alone is refused)."""
    return {} if subject is None else {"subject": subject}


class StorageRig:
    """The mesh and its clients; ``storage`` is the running service (None while stopped)."""

    def __init__(self, mesh: InProcessMesh) -> None:
        self.mesh = mesh
        self.home = mesh.home
        self.vault = Keyvault(mesh.home, mesh.config)
        self.audit = Audit(mesh.home, mesh.config)
        self.storage: Storage | None = None
        self.runner: ServiceRunner | None = None
        self.authn: MeshClient
        self.pairing: MeshClient
        self.operator: MeshClient

    async def start_storage(self) -> Storage:
        self.storage = Storage(self.home, self.mesh.config)
        self.runner = await self.mesh.start_service(self.storage)
        await eventually(lambda: self.storage_state("ready"), deadline=20)
        return self.storage

    async def stop_storage(self) -> None:
        assert self.runner is not None
        await self.runner.stop()
        await self.runner.client.close()
        self.runner = self.storage = None

    async def storage_state(self, want: str) -> bool:
        try:
            reply = await self.operator.call("storage.health", timeout=5)
        except MeshError as exc:
            if exc.code in ("UNAVAILABLE", "TIMEOUT"):  # not registered (yet, or again)
                return False
            raise
        return bool(reply["state"] == want)

    async def put(self, client: MeshClient, key: bytes, value: bytes, subject: str | None = None,
                  category: str = "memories") -> Any:
        return await client.call("storage.kv.put", {**_scope(subject), "category": category, "key": key,
                                                    "value": value}, timeout=10)

    async def get(self, client: MeshClient, key: bytes, subject: str | None = None, category: str = "memories") -> Any:
        reply = await client.call("storage.kv.get", {**_scope(subject), "category": category, "key": key},
                                  timeout=10)
        return reply["value"]

    async def upload(self, client: MeshClient, name: str, data: bytes, subject: str | None = None,
                     category: str = "files") -> dict[str, Any]:
        begun = await client.call("storage.files.put.begin", {**_scope(subject), "category": category,
                                                              "name": name, "size": len(data)}, timeout=10)
        piece = begun["piece_bytes"]
        for start in range(0, len(data), piece):
            await client.call("storage.files.put.chunk", {"upload": begun["upload"],
                                                          "data": data[start:start + piece]}, timeout=10)
        result: dict[str, Any] = await client.call("storage.files.put.commit", {"upload": begun["upload"]},
                                                   timeout=30)
        return result

    async def download(self, client: MeshClient, name: str, subject: str | None = None,
                       category: str = "files") -> bytes:
        out, offset = bytearray(), 0
        while offset is not None:
            reply = await client.call("storage.files.get", {**_scope(subject), "category": category, "name": name,
                                                            "offset": offset}, timeout=10)
            out += reply["data"]
            offset = reply["next"]
        return bytes(out)

    async def job(self, method: str, body: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """Start a storage job as the operator and wait for its end; returns the final job view."""
        started = await self.operator.call(method, body or {}, timeout=10)
        final: dict[str, Any] = {}

        async def finished() -> bool:
            final.update(await self.operator.call("storage.jobs", {"job": started["job"]}, timeout=10))
            return bool(final["state"] != "running")
        await eventually(finished, deadline=timeout)
        return final


@contextlib.asynccontextmanager
async def storage_rig(root: Path, *, password: str = PASSWORD, start: bool = True,
                      config: str = CONFIG) -> AsyncIterator[StorageRig]:
    """The rig, with storage started unless ``start`` is false; ``config`` extends :data:`CONFIG`
    (e.g. a ``[keyvault]`` table choosing the file keystore, or a ``[services.x]`` declaration, whose
    identity gets its keypair too)."""
    mesh = InProcessMesh(root, config, {**IDENTITIES, **parse_config(config).identities()})
    initialise(mesh.home, mesh.config, bytearray(password.encode()))
    async with mesh:
        mesh.broker.delivery.ship_after = math.inf  # the broker's own audit records are not what these tests count
        rig = StorageRig(mesh)
        await mesh.start_service(rig.vault)
        rig.operator = await mesh.client("meshctl")
        rig.authn = await mesh.client("authn")
        rig.pairing = await mesh.client("pairing")
        await mesh.start_service(rig.audit)
        await eventually(lambda: _audit_ok(rig), deadline=20)
        if start:
            await rig.start_storage()
        try:
            yield rig
        finally:
            if rig.runner is not None:
                await rig.stop_storage()
            await rig.vault.on_stop()


async def _audit_ok(rig: StorageRig) -> bool:
    reply = await rig.operator.call("audit.health", timeout=5)
    return bool(reply["state"] == "ready")

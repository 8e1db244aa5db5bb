"""The people rig (tests/people_rig.py) with pairing: the broker also listens on tcp (127.0.0.1, a
free port) and the pairing service runs, with its entry point on a free port of 127.0.0.1 while a
window is open. Devices pair for real (SPAKE2 over tcp, :mod:`shared.device`) into temporary
device directories and connect detached over tcp with CURVE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.pairing.service import Pairing
from shared import MeshClient, device

from .conftest import eventually
from .people_rig import PeopleRig, people_rig

PAIRING_CONFIG = """
[pairing]
port = 0
step_timeout_s = 2.0

[acl.identity.pairing]
call = ["mesh.devices.enroll", "mesh.devices.revoke", "mesh.devices.seen", "authn.sessions.end_device",
        "authz.revoke_device", "audit.public_key", "audit.checkpoint", "keyvault.keys.get", "audit.append"]
publish = ["pairing."]
subscribe = ["security."]
"""


class PairingRig:
    """The people rig, the pairing service, and helpers to open windows and pair devices."""

    def __init__(self, rig: PeopleRig, root: Path) -> None:
        self.rig = rig
        self.root = root
        self.pairing: Pairing | None = None
        self.devices: list[MeshClient] = []

    def __getitem__(self, name: str) -> MeshClient:
        return self.rig[name]

    @property
    def operator(self) -> MeshClient:
        return self.rig["meshctl"]

    async def start(self, ttl_s: int = 60, name: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"ttl_s": ttl_s}
        if name is not None:
            body["name"] = name
        return dict(await self.operator.call("pairing.start", body, timeout=10))

    async def window(self) -> dict[str, Any]:
        return dict(await self.operator.call("pairing.window", {}, timeout=10))

    def device_dir(self, label: str) -> Path:
        return self.root / "devices" / label

    async def pair(self, label: str, name: str | None = None) -> device.DeviceProfile:
        """Open a window and pair a device into ``device_dir(label)``."""
        started = await self.start(name=name)
        return await device.join(started["code"], started["endpoint"], self.device_dir(label), name=label)

    async def connect(self, label: str) -> device.DeviceClient:
        client = await device.connect_device(self.device_dir(label), timeout=10)
        self.devices.append(client)
        return client

    async def entry_closed(self) -> bool:
        assert self.pairing is not None
        return not self.pairing.entry.listening


@contextlib.asynccontextmanager
async def pairing_rig(root: Path, extra_config: str = "", *, pairing_config: str = "") -> AsyncIterator[PairingRig]:
    """The running rig; ``pairing_config``: lines added to its ``[pairing]`` table."""
    config = PAIRING_CONFIG.replace("[pairing]\n", "[pairing]\n" + pairing_config, 1)
    async with people_rig(root, config + extra_config,
                          broker_config='tcp_endpoints = ["tcp://127.0.0.1:0"]\n',
                          identities={"pairing": "service"}) as rig:
        paired = PairingRig(rig, root)
        paired.pairing = Pairing(rig.home, rig.mesh.config)
        await rig.mesh.start_service(paired.pairing)
        await eventually(lambda: rig.ready("pairing"), deadline=20)
        try:
            yield paired
        finally:
            for client in paired.devices:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

"""``mesh.certs.unrevoke`` and ``meshctl certs unrevoke``: a revoked key let back in, over a real
in-process mesh; ``certs accept`` on a revoked key says to use it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from shared import Conflict, Forbidden, HandshakeError, MeshClient, NotFound, Unauthenticated, certs

from .conftest import eventually
from .echo_service import Echo
from .mesh import InProcessMesh
from .processes import REPO
from .test_broker_attacks import read_spool


async def meshctl(mesh: InProcessMesh, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``meshctl`` CLI, as a process, against the in-process mesh's home."""
    env = {**os.environ, "CURVEMESH_HOME": str(mesh.home.root)}
    env.pop("CURVEMESH_CONFIG", None)
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tools.meshctl_cli", *args], cwd=REPO, env=env,
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


async def connect(mesh: InProcessMesh, name: str) -> MeshClient:
    return await mesh.client(name, timeout=3)


async def test_a_revoked_key_let_back_in_is_admitted_on_a_new_connection(mesh: InProcessMesh) -> None:
    await mesh.start_service(Echo())
    outsider = await connect(mesh, "outsider")
    assert (await outsider.call("echo.health", timeout=2))["state"] == "ready"
    operator = await connect(mesh, "meshctl")
    await operator.call("mesh.certs.revoke", {"ref": "outsider"}, timeout=2)
    with pytest.raises((Unauthenticated, HandshakeError), match="revoked"):
        await outsider.call("echo.health", timeout=1)
    with pytest.raises(HandshakeError):  # a new connection is refused too
        await MeshClient.connect(mesh.home, "outsider", config=mesh.config, context=mesh.context, timeout=3)

    fingerprint = mesh.pairs["outsider"].certificate.fingerprint
    reply = await operator.call("mesh.certs.unrevoke", {"ref": "outsider"}, timeout=2)
    assert reply == {"name": "outsider", "role": "device", "fingerprint": fingerprint}
    again = await connect(mesh, "outsider")
    assert (await again.call("echo.health", timeout=2))["state"] == "ready"
    listed = await operator.call("mesh.certs.list", timeout=2)
    assert [(e["state"], e["role"]) for e in listed if e["name"] == "outsider"] == [("allowed", "device")]
    record = next(r for r in read_spool(mesh) if r["type"] == "mesh.cert_unrevoke")
    assert (record["actor"], record["role"], record["name"], record["cert_role"], record["fingerprint"]) == (
        "meshctl", "operator", "outsider", "device", fingerprint)


async def test_accept_on_a_revoked_key_answers_not_found_naming_unrevoke(mesh: InProcessMesh) -> None:
    operator = await connect(mesh, "meshctl")
    await operator.call("mesh.certs.revoke", {"ref": "outsider"}, timeout=2)
    fingerprint = mesh.pairs["outsider"].certificate.fingerprint
    for ref in ("outsider", fingerprint[:16]):
        with pytest.raises(NotFound) as refused:
            await operator.call("mesh.certs.accept", {"ref": ref, "name": "outsider", "role": "device"}, timeout=2)
        assert "revoked" in refused.value.message
        assert refused.value.message.endswith(f"meshctl certs unrevoke {ref}")
    # The same through the real CLI, then the command it names.
    accepted = await meshctl(mesh, "certs", "accept", "outsider", "--name", "outsider", "--role", "device")
    assert accepted.returncode != 0 and "Traceback" not in accepted.stderr
    assert accepted.stderr.strip().splitlines() == [
        "meshctl: NOT_FOUND: no pending key 'outsider': that key is revoked; to let it back in, "
        "run meshctl certs unrevoke outsider"]
    unrevoked = await meshctl(mesh, "certs", "unrevoke", "outsider")
    assert unrevoked.returncode == 0, unrevoked.stderr
    assert unrevoked.stdout.strip() == f"unrevoked outsider (fingerprint {fingerprint[:16]})"
    assert "outsider" in mesh.broker.store.snapshot.by_name


async def test_unrevoke_of_an_unknown_or_not_revoked_ref_is_refused(mesh: InProcessMesh) -> None:
    operator = await connect(mesh, "meshctl")
    with pytest.raises(NotFound, match="no certificate with that name, key or fingerprint"):
        await operator.call("mesh.certs.unrevoke", {"ref": "nobody"}, timeout=2)
    with pytest.raises(Conflict, match="that key is allowed, not revoked"):
        await operator.call("mesh.certs.unrevoke", {"ref": "outsider"}, timeout=2)
    stranger = certs.generate("stranger", "device")
    certs.save_keypair(stranger, mesh.home.keys)
    with pytest.raises(HandshakeError):
        await MeshClient.connect(mesh.home, "stranger", config=mesh.config, context=mesh.context, timeout=3)

    async def pending() -> bool:
        return any(e["fingerprint"] == stranger.certificate.fingerprint
                   for e in await operator.call("mesh.certs.pending", timeout=2))

    await eventually(pending)
    with pytest.raises(Conflict, match="that key is pending, not revoked"):
        await operator.call("mesh.certs.unrevoke", {"ref": stranger.certificate.fingerprint}, timeout=2)
    assert not any(r["type"] == "mesh.cert_unrevoke" for r in read_spool(mesh))


async def test_unrevoke_by_a_non_operator_is_forbidden(mesh: InProcessMesh) -> None:
    operator = await connect(mesh, "meshctl")
    await operator.call("mesh.certs.revoke", {"ref": "flooder"}, timeout=2)
    outsider = await connect(mesh, "outsider")
    with pytest.raises(Forbidden):
        await outsider.call("mesh.certs.unrevoke", {"ref": "flooder"}, timeout=2)
    assert "flooder" not in mesh.broker.store.snapshot.by_name  # still revoked
    assert any(r["type"] == "mesh.deny" and r["target"] == "mesh.certs.unrevoke" for r in read_spool(mesh))
    assert not any(r["type"] == "mesh.cert_unrevoke" for r in read_spool(mesh))
    # The same call from an operator does it: the refusal above was the ACL, not the method.
    assert (await operator.call("mesh.certs.unrevoke", {"ref": "flooder"}, timeout=2))["name"] == "flooder"

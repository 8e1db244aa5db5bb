"""One block of the pairing bench's reads, in its own process (``python -m bench.device_reader``).

``setup DIR PASSWORD_FILE``: once, before the reads: the device signs ``alice`` in, she grants it
consent to read her ``notes`` for the purpose ``bench``, and it puts the value the reads get.

``DIR PASSWORD_FILE COUNT [ENDPOINT]``: a paired device (its directory ``DIR``) connects, detached
(its profile's tcp endpoint, CURVE, the pinned broker key, the witness checked) or, with
``ENDPOINT`` (``ipc://...``, the home's socket), the same key over ipc; signs ``alice`` in (password
from the file) outside the clock; reads her ``notes``/``bench`` value ``COUNT`` times with
``storage.kv.get`` and her token, each call timed alone, every reply checked outside the clock;
prints one JSON line: ``{"samples": [seconds, ...], "mode": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from shared import Connection, MeshClient, MeshError, RuntimeConfig, certs, defer_logging, device

USER = "alice"
KEY = {"category": "notes", "purpose": "bench", "key": b"bench-note"}
VALUE = b"bench-value-" + b"x" * 88


async def _client(directory: Path, endpoint: str | None) -> MeshClient:
    if endpoint is None:
        return await device.connect_device(directory, timeout=15)
    profile = device.load_profile(directory)
    keypair = certs.load_keypair(directory / "device.key_secret")
    client = MeshClient(Connection(keypair, profile.broker_public_key, endpoint, RuntimeConfig()), RuntimeConfig())
    await client.connection.open(15)
    return client


async def setup(directory: Path, password: str) -> dict[str, object]:
    client = await _client(directory, None)
    try:
        name = device.load_profile(directory).name
        tokens = await client.call("authn.login.password", {"username": USER, "password": password}, timeout=30)
        token = tokens["access_token"]
        await client.call("authz.consent.grant", {"access_token": token, "grantee": f"device:{name}",
                                                  "categories": ["notes"], "actions": ["read", "write"],
                                                  "purpose": "bench"}, timeout=10)
        await client.call("storage.kv.put", {**KEY, "token": token, "value": VALUE}, timeout=10)
        return {"device": name}
    finally:
        await client.close()


async def run(directory: Path, password: str, count: int, endpoint: str | None) -> dict[str, object]:
    client = await _client(directory, endpoint)
    try:
        tokens = await client.call("authn.login.password", {"username": USER, "password": password}, timeout=30)
        read = {**KEY, "token": tokens["access_token"]}
        for _ in range(min(50, count)):  # warm-up: connection, the allow storage reuses
            await client.call("storage.kv.get", read, timeout=10)
        samples, replies = [], []
        for _ in range(count):
            start = time.perf_counter()
            reply = await client.call("storage.kv.get", read, timeout=10)
            samples.append(time.perf_counter() - start)
            replies.append(reply)
        if not all(r.get("value") == VALUE for r in replies):
            raise SystemExit("a read did not return the value put")
        return {"samples": samples, "mode": "ipc" if endpoint else "detached"}
    finally:
        await client.close()


def main(argv: list[str]) -> int:
    defer_logging("bench-device", "critical")
    if argv[:1] == ["setup"] and len(argv) == 3:
        work = setup(Path(argv[1]), Path(argv[2]).read_text().strip())
    elif len(argv) in (3, 4):
        work = run(Path(argv[0]), Path(argv[1]).read_text().strip(), int(argv[2]), argv[3] if len(argv) == 4 else None)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        result = asyncio.run(work)
    except MeshError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

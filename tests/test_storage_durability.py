"""kill -9 of the storage process during a stream of numbered writes: after the restart every
acknowledged write is there, whole, and the stores verify."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from shared import MeshError

from .conftest import eventually
from .processes import REPO, kill_9, spawn_service, stop_service
from .storage_rig import storage_rig


async def _true(value: bool) -> bool:
    return value


async def test_kill_9_during_writes_loses_nothing_acknowledged(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h", start=False) as r:
        log_path = short_tmp / "storage.log"
        proc = spawn_service("services.storage", r.home, log_path)
        scope = {"category": "log"}
        acked_kv: dict[bytes, bytes] = {}
        acked_docs: dict[str, int] = {}
        stop = asyncio.Event()

        async def kv_writer(name: str) -> None:
            n = 0
            while not stop.is_set():
                key, value = f"{name}-{n}".encode(), f"value-{name}-{n}".encode() * 20
                try:
                    await r.authn.call("storage.kv.put", {**scope, "key": key, "value": value}, timeout=3)
                except MeshError:
                    await eventually(lambda: r.storage_state("ready"), deadline=30)  # storage is away: wait for it
                    continue
                acked_kv[key] = value
                n += 1

        async def doc_writer() -> None:
            n = 0
            while not stop.is_set():
                doc = {"n": n, "text": f"entry {n}", "pad": "x" * 500}
                try:
                    reply = await r.authn.call("storage.records.insert", {**scope, "collection": "journal",
                                                                          "doc": doc}, timeout=3)
                except MeshError:
                    await eventually(lambda: r.storage_state("ready"), deadline=30)
                    continue
                acked_docs[reply["id"]] = n
                n += 1

        try:
            await eventually(lambda: r.storage_state("ready"), deadline=30)
            await r.authn.call("storage.records.collection", {**scope, "collection": "journal", "indexed": ["n"]},
                               timeout=10)
            writers = [asyncio.create_task(kv_writer(f"w{i}")) for i in range(3)] + \
                [asyncio.create_task(doc_writer()) for _ in range(2)]
            await eventually(lambda: _true(len(acked_kv) >= 150 and len(acked_docs) >= 50), deadline=60)
            await kill_9(proc)
            before = len(acked_kv)
            proc = spawn_service("services.storage", r.home, log_path)
            await eventually(lambda: r.storage_state("ready"), deadline=30)
            await eventually(lambda: _true(len(acked_kv) >= before + 30), deadline=30)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*writers), 15)
            for key, value in acked_kv.items():
                got = await r.authn.call("storage.kv.get", {**scope, "key": key}, timeout=10)
                assert got["value"] == value, key
            for doc_id, n in acked_docs.items():
                got = await r.authn.call("storage.records.get", {**scope, "collection": "journal", "id": doc_id},
                                         timeout=10)
                assert got["doc"] == {"n": n, "text": f"entry {n}", "pad": "x" * 500}
            verified = await r.operator.call("storage.verify", timeout=60)
            assert verified["ok"], verified
        finally:
            stop.set()
            await stop_service(proc)
        assert log_path.read_bytes().count(b'"unsealed"') == 2


async def test_storage_refuses_to_start_without_the_secure_duckdb_crypto(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h", start=False) as r:
        env = {**os.environ, "CURVEMESH_HOME": str(r.home.root), "PYTHONPATH": str(short_tmp / "shadow")}
        env.pop("CURVEMESH_CONFIG", None)
        # A stand-in package without the extension file: what a broken or missing wheel looks like.
        shadow = short_tmp / "shadow" / "duckdb_extension_httpfs"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("")
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "services.storage"], cwd=REPO, env=env,
                                       capture_output=True, timeout=60)
        assert done.returncode == 2
        assert b"crypto" in done.stderr and b"refuses to start" in done.stderr
        assert not any((r.home.data / "storage" / "analytics").glob("*.duckdb"))



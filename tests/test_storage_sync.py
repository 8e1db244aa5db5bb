"""Who waits while the key-value store's disk syncs (services/storage/kv/database.py), on the real
storage process: its RocksDB WAL syncs are held, or failed, at the kernel (tests/syscall_stall.py).

- A held sync stops only the put being synced, and a get of that name: health and a get of
  another name answer meanwhile, and no read answers the new value before the put did.
  (With a synced ``Rdict.write``, which holds the GIL through the sync, the whole process froze.)
- A failed sync is final: the put answers ``UNAVAILABLE``, and from then on every data call is
  refused and health says failed, with what to do; the value written is never read back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared import MeshError

from .conftest import eventually
from .processes import spawn_service, stop_service
from .storage_rig import storage_rig
from .syscall_stall import SyscallStall

SCOPE = {"category": "memories"}


async def test_a_held_sync_holds_only_its_put_and_reads_of_its_name(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h", start=False) as r:
        proc = spawn_service("services.storage", r.home, short_tmp / "storage.log")
        try:
            await eventually(lambda: r.storage_state("ready"), deadline=30)
            await r.put(r.authn, b"before", b"durable-before")
            async with SyscallStall(proc.pid) as stall:
                put = asyncio.create_task(r.put(r.authn, b"held", b"value-being-synced"))
                await stall.wait_held()
                # Storage's loop and its other reads go on while the sync is held.
                health = await r.operator.call("storage.health", timeout=5)
                assert health["state"] == "ready"
                assert await r.get(r.authn, b"before") == b"durable-before"
                # A get of the held name never answers the value before it is durable: it waits for the
                # sync. (That something does not happen can only be watched for a while: 2 s, in which a
                # get that does not wait answers in milliseconds.)
                same = asyncio.create_task(r.get(r.authn, b"held"))
                await asyncio.wait({same}, timeout=2)
                assert not same.done() or same.result() is None
                assert stall.held() and not put.done()
                await stall.release()
                await asyncio.wait_for(put, 30)
                assert await asyncio.wait_for(same, 30) in (None, b"value-being-synced")
            assert await r.get(r.authn, b"held") == b"value-being-synced"
        finally:
            await stop_service(proc)


async def test_a_failed_sync_stops_storage_until_a_restart(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h", start=False) as r:
        log_path = short_tmp / "storage.log"
        proc = spawn_service("services.storage", r.home, log_path)
        try:
            await eventually(lambda: r.storage_state("ready"), deadline=30)
            await r.put(r.authn, b"before", b"durable-before")
            async with SyscallStall(proc.pid, fail=True):
                with pytest.raises(MeshError) as failed:
                    await r.put(r.authn, b"lost", b"value-whose-sync-failed")
            assert failed.value.code == "UNAVAILABLE"
            assert "could not make a write durable" in failed.value.message
            assert "restart storage" in failed.value.message
            # The disk works again; the store does not trust it until a restart.
            for call in (r.get(r.authn, b"lost"), r.get(r.authn, b"before"), r.put(r.authn, b"after", b"x")):
                with pytest.raises(MeshError) as refused:
                    await call
                assert refused.value.code == "UNAVAILABLE"
                assert "restart storage" in refused.value.message
            with pytest.raises(MeshError):
                await r.authn.call("storage.records.insert", {**SCOPE, "collection": "c", "doc": {"n": 1}}, timeout=10)
            health = await r.operator.call("storage.health", timeout=5)
            assert health["state"] == "failed"
            assert "restart storage" in health["reason"]
            await stop_service(proc)
            # It stops cleanly: RocksDB refuses the close's flush after the failed sync, which is logged.
            assert proc.returncode == 0
            log = log_path.read_text()
            assert log.count('"kv_sync_failed"') == 1 and '"storage_unusable"' in log
            assert '"kv_close_failed"' in log
            # Restarted, storage serves again; what was acknowledged is there.
            proc = spawn_service("services.storage", r.home, log_path)
            await eventually(lambda: r.storage_state("ready"), deadline=30)
            assert await r.get(r.authn, b"before") == b"durable-before"
        finally:
            await stop_service(proc)

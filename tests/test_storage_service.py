"""The storage service over a real in-process mesh: every engine's round trip, namespaces that no
other caller can reach, the sandboxed analytics, sealing, the operator-only calls, a plaintext canary
over the whole home, and key rotation with re-encryption (also resumed after a restart)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from shared import MeshError, configure_logging

from .conftest import eventually
from .storage_rig import PASSWORD, StorageRig, storage_rig


async def _code(call: Any) -> str:
    with pytest.raises(MeshError) as caught:
        await call
    return caught.value.code


async def test_kv_round_trip_and_paged_scan(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        for i in range(25):
            assert await r.put(r.authn, f"note/{i:02d}".encode(), f"value {i}".encode()) == {"stored": True}
        await r.put(r.authn, b"other", b"x")
        assert await r.get(r.authn, b"note/07") == b"value 7"
        assert await r.get(r.authn, b"missing") is None
        seen, after = [], None
        while True:
            body = {"category": "memories", "prefix": b"note/", "limit": 10}
            if after is not None:
                body["after"] = after
            page = await r.authn.call("storage.kv.scan", body, timeout=10)
            seen += [k for k, _ in page["items"]]
            after = page["next"]
            if after is None:
                break
        assert seen == [f"note/{i:02d}".encode() for i in range(25)]
        deleted = await r.authn.call("storage.kv.delete", {"category": "memories",
                                                           "key": b"note/07"}, timeout=10)
        assert deleted == {"deleted": True} and await r.get(r.authn, b"note/07") is None


async def test_records_round_trip_query_update_delete(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        scope = {"category": "conversations"}
        await r.authn.call("storage.records.collection", {**scope, "collection": "messages",
                                                          "indexed": ["thread", "author"]}, timeout=10)
        ids = []
        for i in range(12):
            doc = {"thread": f"t{i % 3}", "author": "alice" if i % 2 else "bob", "text": f"message {i}"}
            ids.append((await r.authn.call("storage.records.insert", {**scope, "collection": "messages",
                                                                      "doc": doc}, timeout=10))["id"])
        got = await r.authn.call("storage.records.get", {**scope, "collection": "messages", "id": ids[4]}, timeout=10)
        assert got["found"] and got["doc"]["text"] == "message 4"
        query = {**scope, "collection": "messages", "where": {"author": "alice"}, "limit": 4}
        first = await r.authn.call("storage.records.query", query, timeout=10)
        rest = await r.authn.call("storage.records.query", {**query, "after": first["next"]}, timeout=10)
        texts = sorted(item["doc"]["text"] for item in first["items"] + rest["items"])
        assert texts == sorted(f"message {i}" for i in range(1, 12, 2)) and rest["next"] is None
        both = await r.authn.call("storage.records.query", {**query, "where": {"thread": "t1", "author": "alice"}},
                                  timeout=10)
        assert sorted(i["doc"]["text"] for i in both["items"]) == ["message 1", "message 7"]
        assert await _code(r.authn.call("storage.records.query", {**scope, "collection": "messages",
                                                                  "where": {"text": "x"}}, timeout=10)) == "BAD_REQUEST"
        updated = await r.authn.call("storage.records.update", {**scope, "collection": "messages", "id": ids[1],
                                                                "doc": {"thread": "t9", "author": "x", "text": "new"}},
                                     timeout=10)
        assert updated == {"updated": True}
        moved = await r.authn.call("storage.records.query", {**scope, "collection": "messages",
                                                             "where": {"thread": "t9"}}, timeout=10)
        assert [i["id"] for i in moved["items"]] == [ids[1]]
        assert (await r.authn.call("storage.records.delete", {**scope, "collection": "messages", "id": ids[1]},
                                   timeout=10)) == {"deleted": True}


async def test_analytics_ingest_query_and_escapes_refused(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        scope = {"category": "stats"}
        await r.authn.call("storage.analytics.table", {**scope, "table": "steps",
                                                       "columns": [["day", "BIGINT"], ["count", "BIGINT"]]}, timeout=10)
        rows = [[d, d * 100] for d in range(50)]
        assert (await r.authn.call("storage.analytics.ingest", {**scope, "table": "steps", "rows": rows},
                                   timeout=10)) == {"rows": 50}
        result = await r.authn.call("storage.analytics.query", {**scope, "sql": "SELECT sum(count) AS s FROM steps "
                                                                "WHERE day >= ?", "params": [40]}, timeout=10)
        assert result["columns"] == ["s"] and result["rows"] == [[sum(d * 100 for d in range(40, 50))]]
        for attack in ("ATTACH '/tmp/x.db' AS x", "SELECT * FROM read_csv('/etc/passwd')", "INSTALL httpfs",
                       "LOAD httpfs", "COPY steps TO '/tmp/out.csv'", "PRAGMA database_list",
                       "SET enable_external_access = true", "SELECT 1; DROP TABLE steps"):
            code = await _code(r.authn.call("storage.analytics.query", {**scope, "sql": attack}, timeout=10))
            assert code == "BAD_REQUEST", attack
        # Another caller with the same subject and category sees no table of authn's.
        other = await r.pairing.call("storage.analytics.tables", scope, timeout=10)
        assert other == {"tables": []}


async def test_files_stream_in_pieces_and_uploads_belong_to_their_caller(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        data = os.urandom(700_000)  # several pieces and chunks, not a multiple of either
        info = await r.upload(r.authn, "photos/cat.jpg", data)
        assert info["size"] == len(data)
        assert await r.download(r.authn, "photos/cat.jpg") == data
        listed = await r.authn.call("storage.files.list", {"category": "files"}, timeout=10)
        assert [f["name"] for f in listed["files"]] == ["photos/cat.jpg"]
        begun = await r.authn.call("storage.files.put.begin", {"category": "files",
                                                               "name": "x"}, timeout=10)
        stolen = r.pairing.call("storage.files.put.chunk", {"upload": begun["upload"], "data": b"evil"}, timeout=10)
        assert await _code(stolen) == "NOT_FOUND"
        await r.authn.call("storage.files.put.abort", {"upload": begun["upload"]}, timeout=10)
        assert await _code(r.pairing.call("storage.files.get", {"category": "files",
                                                                "name": "photos/cat.jpg"}, timeout=10)) == "NOT_FOUND"
        assert (await r.authn.call("storage.files.delete", {"category": "files",
                                                            "name": "photos/cat.jpg"}, timeout=10)) == {"deleted": True}


async def test_no_caller_reaches_another_callers_namespace(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        await r.put(r.authn, b"diary", b"authn's secret")
        assert await r.get(r.pairing, b"diary") is None          # same subject, category and key
        assert await r.get(r.operator, b"diary") is None         # operators have namespaces of their own too
        await r.put(r.pairing, b"diary", b"pairing's")
        assert await r.get(r.authn, b"diary") == b"authn's secret"
        # The owner is the transport identity: a body naming another owner is refused by the schema.
        assert await _code(r.pairing.call("storage.kv.get", {"category": "memories",
                                                             "key": b"diary", "owner": "authn"},
                                          timeout=10)) == "BAD_REQUEST"
        assert await _code(r.authn.call("storage.kv.get", {"category": "Mem/x", "key": b"k"},
                                        timeout=10)) == "BAD_REQUEST"
        # A person's data needs their token and authz's decision: a subject alone is a forged claim
        # (tests/test_authz_enforcement.py walks every data method with authn and authz running).
        for forged in ({"subject": "alice"}, {"subject": "../alice"}, {"presenter": "ab" * 32}):
            assert await _code(r.authn.call("storage.kv.get", {**forged, "category": "memories", "key": b"k"},
                                            timeout=10)) == "FORBIDDEN"


async def test_operations_are_for_operators_only(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        for method in ("storage.status", "storage.verify", "storage.backup.create"):
            assert await _code(r.authn.call(method, {}, timeout=10)) == "FORBIDDEN", method
        status = await r.operator.call("storage.status", timeout=10)
        assert status["state"] == "ok" and set(status["versions"]) == {"sqlcipher", "duckdb", "rocksdb", "files",
                                                                       "backups"}
        assert (await r.operator.call("storage.verify", timeout=30))["ok"] is True


async def test_sealed_storage_wipes_keys_and_answers_sealed(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        await r.put(r.authn, b"k", b"v")
        assert await r.get(r.authn, b"k") == b"v"
        assert r.storage is not None and r.storage.kv.store is not None
        # The KvStore's cached sealing material (per key version, per namespace) while unsealed...
        cached = [(m, list(m.namespaces.values())) for m in r.storage.kv.store._materials.values()]
        store = r.storage.kv.store
        assert cached and all(namespaces for _, namespaces in cached)
        await r.operator.call("keyvault.lock", timeout=10)
        await eventually(lambda: r.storage_state("sealed"))
        assert r.storage is not None and all(not k.versions() for k in r.storage.keys.values())
        # ...is gone once sealed: the cache is empty, every context dropped, the subkeys zero.
        assert r.storage.kv.store is None and store._materials == {}
        for material, namespaces in cached:
            assert material.wiped and material.sealer.closed and material.namespaces == {}
            assert material.subkey == bytearray(32) and all(nsm.names.closed for nsm in namespaces)
        assert await _code(r.get(r.authn, b"k")) == "SEALED"
        await r.operator.call("keyvault.unlock", {"password": PASSWORD}, timeout=30)
        await eventually(lambda: r.storage_state("ready"), deadline=20)
        assert await r.get(r.authn, b"k") == b"v"


async def _write_everything(r: StorageRig, marker: str) -> None:
    scope = {"category": "canary"}
    await r.put(r.authn, f"key-{marker}".encode(), f"value-{marker}".encode(), category="canary")
    await r.authn.call("storage.records.collection", {**scope, "collection": "notes", "indexed": ["tag"]}, timeout=10)
    await r.authn.call("storage.records.insert", {**scope, "collection": "notes",
                                                  "doc": {"tag": marker, "body": f"body-{marker}"}}, timeout=10)
    await r.authn.call("storage.analytics.table", {**scope, "table": "t", "columns": [["v", "VARCHAR"]]}, timeout=10)
    await r.authn.call("storage.analytics.ingest", {**scope, "table": "t", "rows": [[f"row-{marker}"]]}, timeout=10)
    await r.upload(r.authn, f"name-{marker}", f"content-{marker}".encode() * 1000, category="canary")


def _files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(str(path.relative_to(root)))
    return found


async def test_plaintext_canary_is_nowhere_under_the_home(short_tmp: Path) -> None:
    marker = "CANARY-7f3a9c51d2"
    log_file = short_tmp / "h-logs.txt"
    stream = io.StringIO()
    configure_logging("test", stream=stream)
    try:
        async with storage_rig(short_tmp / "h") as r:
            await _write_everything(r, marker)
            # Read it all back through the mesh, so the marker provably went in.
            assert await r.get(r.authn, f"key-{marker}".encode(), category="canary") == f"value-{marker}".encode()
            job = await r.job("storage.backup.create", {"passphrase": "canary backup passphrase 1"})
            assert job["state"] == "done", job
            verified = await r.operator.call("storage.verify", timeout=30)
            assert verified["ok"], verified
            home = r.home.root
            # While storage runs: the WAL files, journals and any temporary files exist now.
            live = _files_containing(home, marker.encode())
            wal = [p for p in home.rglob("*") if p.name.endswith(("-wal", ".wal")) or p.suffix == ".log"]
            await r.stop_storage()  # then closed: what stays on disk
    finally:
        structlog.reset_defaults()
    log_file.write_text(stream.getvalue())
    assert stream.getvalue()  # the services did log: the search below covers real output
    needle = marker.encode()
    assert live == [] and wal  # the running stores' write-ahead logs were among the files searched
    assert _files_containing(home, needle) == []
    assert needle not in log_file.read_bytes()
    assert any((home / "backups").iterdir())  # the backup was searched too


async def _rotate(r: StorageRig, purpose: str) -> int:
    reply = await r.operator.call("keyvault.keys.rotate", {"purpose": purpose, "password": PASSWORD}, timeout=30)
    return int(reply["version"])


async def _rotation_done(r: StorageRig, purposes: set[str], version: int = 2) -> bool:
    """True once storage uses ``version`` of every purpose and holds no other (all re-encrypted)."""
    status = await r.operator.call("storage.status", timeout=10)
    held = status["held_versions"]
    return all(held[p] == [version] == [status["versions"][p]] for p in purposes) and \
        status["records_version"] == version


async def test_rotation_reencrypts_every_engine_and_retires_the_old_keys(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        for i in range(30):
            await r.put(r.authn, f"k{i}".encode(), f"v{i}".encode())
        await _write_everything(r, "rotation-marker")
        assert r.storage is not None and r.storage.kv.store is not None
        old_material = r.storage.kv.store._materials[1]
        for purpose in ("rocksdb", "files", "duckdb", "sqlcipher"):
            assert await _rotate(r, purpose) == 2
        await eventually(lambda: _rotation_done(r, {"rocksdb", "files", "duckdb", "sqlcipher"}), deadline=30)
        # The KvStore wiped what it derived from version 1 when rotation retired it, before any request.
        assert old_material.wiped and 1 not in r.storage.kv.store._materials
        status = await r.operator.call("storage.status", timeout=10)
        assert status["versions"]["rocksdb"] == 2 and status["retired"]["rocksdb"] == [1]
        assert {p: v["state"] for p, v in status["rotation"].items()} == {
            "rocksdb": "done", "files": "done", "duckdb": "done", "sqlcipher": "done"}
        assert [await r.get(r.authn, f"k{i}".encode()) for i in range(30)] == [f"v{i}".encode() for i in range(30)]
        assert (await r.operator.call("storage.verify", timeout=30))["ok"]
        assert await r.download(r.authn, "name-rotation-marker", category="canary") == b"content-rotation-marker" * 1000


async def test_rotation_while_storage_is_down_resumes_at_start(short_tmp: Path) -> None:
    async with storage_rig(short_tmp / "h") as r:
        await _write_everything(r, "resume-marker")
        for i in range(20):
            await r.put(r.authn, f"k{i}".encode(), f"v{i}".encode())
        await r.stop_storage()
        for purpose in ("rocksdb", "files", "duckdb", "sqlcipher"):
            await _rotate(r, purpose)
        await r.start_storage()  # finds data under version 1, fetches it, and re-encrypts
        await eventually(lambda: _rotation_done(r, {"rocksdb", "files", "duckdb", "sqlcipher"}), deadline=30)
        assert [await r.get(r.authn, f"k{i}".encode()) for i in range(20)] == [f"v{i}".encode() for i in range(20)]
        got = await r.authn.call("storage.records.query", {"category": "canary",
                                                           "collection": "notes", "where": {"tag": "resume-marker"}},
                                 timeout=10)
        assert [i["doc"]["body"] for i in got["items"]] == ["body-resume-marker"]
        assert (await r.operator.call("storage.verify", timeout=30))["ok"]


async def test_reads_are_metered_into_audit_per_caller(short_tmp: Path) -> None:
    # A caller's own data is metered against the caller and no person (a person's data, read with
    # their token, is metered against them: tests/test_authz_enforcement.py).
    async with storage_rig(short_tmp / "h") as r:
        data = os.urandom(300_000)
        await r.upload(r.authn, "big.bin", data)
        assert await r.download(r.authn, "big.bin") == data
        await r.put(r.pairing, b"k", b"v" * 1000)
        assert await r.get(r.pairing, b"k") == b"v" * 1000
        assert r.storage is not None
        await r.storage.meter.flush()  # what the meter does every FLUSH_S seconds
        tail = await r.operator.call("audit.tail", {"type": "storage.read", "limit": 10}, timeout=10)
        reads = {(t["actor"], t.get("on_behalf_of"), t["details"]["subject"]): t["details"] for t in tail["records"]}
        assert reads[("storage", None, "authn")]["bytes"] == len(data)
        own = reads[("storage", None, "pairing")]
        assert (own["category"], own["bytes"], own["count"]) == ("memories", 1000, 1)


def test_file_pieces_shrink_to_fit_the_message_cap() -> None:
    from services.storage.files.engine import piece_bytes
    from shared import StateError

    assert piece_bytes(1 << 20, 65536) == 256 * 1024           # the default cap: four 64 KiB chunks
    assert piece_bytes(200_000, 65536) == 131072               # a smaller cap: whole chunks that fit
    with pytest.raises(StateError):
        piece_bytes(70_000, 65536)                              # not one chunk and its framing


async def test_uploads_are_limited_per_caller_and_discarded_when_idle(short_tmp: Path) -> None:
    from services.storage.files.engine import MAX_UPLOADS, UPLOAD_IDLE_S

    async with storage_rig(short_tmp / "h") as r:
        assert r.storage is not None
        now = [1000.0]
        r.storage.clock = lambda: now[0]  # the idle timer reads this clock

        def begin(client: Any, name: str) -> Any:  # the call, to await or to expect refused
            return client.call("storage.files.put.begin", {"category": "files", "name": name},
                               timeout=10)
        first = [(await begin(r.authn, f"f{i}"))["upload"] for i in range(MAX_UPLOADS)]
        assert await _code(begin(r.authn, "one-too-many")) == "RATE_LIMITED"
        assert (await begin(r.pairing, "other-callers-own"))["upload"]  # a limit per caller
        parts = r.home.data / "storage" / "files" / "tmp"
        assert len(list(parts.iterdir())) == MAX_UPLOADS + 1
        now[0] += UPLOAD_IDLE_S + 1
        fresh = (await begin(r.authn, "after-the-pause"))["upload"]  # the idle ones were discarded
        assert await _code(r.authn.call("storage.files.put.chunk", {"upload": first[0], "data": b"x"},
                                        timeout=10)) == "NOT_FOUND"
        assert (await r.authn.call("storage.files.put.chunk", {"upload": fresh, "data": b"x"}, timeout=10)) == \
            {"received": 1}
        assert len(list(parts.iterdir())) == 1  # their partial files are gone from the disk too

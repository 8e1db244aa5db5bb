"""authz records its audited decisions durably without stopping to wait for the disk
(``AuditRecorder.record_durably``: the fsync on a worker thread, one for every decision recorded
meanwhile).

These tests stall the real fsync of authz's audit spool at the spool's ``fsync`` step (the first one
after arming, on the recorder's thread; later ones, such as another handler's ``record`` on the
event loop, go through), and check that authz keeps answering while denies wait, that the waiting
denies share their fsyncs, that none answers before its record is durable, and that an allow
recorded before a role was revoked is decided again rather than answered after the revocation.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .conftest import eventually, holds
from .disk_stall import DiskStall
from .people_rig import PeopleRig, people_rig

DENIES = 8


async def stalled_authz(rig: PeopleRig) -> DiskStall:
    stall = DiskStall()
    await rig.stop_authz()
    await rig.start_authz(spool_checkpoint=stall)
    return stall


def ask(owner: str, principal: str, category: str) -> dict[str, Any]:
    return {"principal": principal, "action": "read", "category": category, "owner": owner, "user": owner}


async def test_denies_wait_for_one_shared_fsync_while_authz_goes_on_answering(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice = await rig.add_user("alice")
        stall = await stalled_authz(rig)
        assert rig.authz is not None and rig.authz.recorder.shipper is not None
        spool = rig.authz.recorder.spool
        assert spool is not None
        # Shipping acks and fsyncs as well: paused, so that the only fsyncs are the denies'.
        await rig.authz.recorder.shipper.stop()
        before = len(spool)
        stall.armed.set()
        denied = ask(alice, "service:stranger", "memories")  # stranger holds no role: denied, audited
        calls = [asyncio.create_task(rig["frontend"].call("authz.check", denied, timeout=20)) for _ in range(DENIES)]
        assert await stall.wait_entered(), "no deny's record was fsynced"
        # Every deny's record is spooled, and the first fsync is held: authz answers what needs no record.
        await eventually(lambda: holds(len(spool) == before + DENIES), deadline=10)
        health = await rig["meshctl"].call("authz.health", timeout=5)
        assert health["state"] == "ready"
        allowed = await rig["frontend"].call("authz.check", ask(alice, "service:frontend", "memories"), timeout=5)
        assert allowed["allow"] is True and allowed["cache_s"] > 0  # an unaudited allow: no record, no wait
        assert not any(call.done() for call in calls), "a deny answered before its record was durable"
        stall.release.set()
        replies = await asyncio.gather(*calls)
        assert [reply["allow"] for reply in replies] == [False] * DENIES
        assert all(reply["cache_s"] == 0.0 for reply in replies)
        # The held fsync and one more covered all of them (one each would have been eight), both on
        # the recorder's own thread: the loop never waited on the disk.
        assert 1 <= len(stall.fsyncs) <= 2 and all(t.startswith("authz-audit-fsync") for t in stall.fsyncs)
        rig.authz.recorder.shipper.start()
        denies = [r for r in await rig.decisions() if r["target"] == "Service::stranger"]
        assert len(denies) == DENIES and {r["outcome"] for r in denies} == {"denied"}


async def test_an_allow_overtaken_by_a_revocation_while_it_is_recorded_is_decided_again(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice = await rig.add_user("alice")
        stall = await stalled_authz(rig)
        await rig["meshctl"].call("authz.roles.assign", {"principal": "service:stranger", "role": "user-data"},
                                  timeout=10)
        sensitive = ask(alice, "service:stranger", "health")  # a sensitive category: every allow is recorded
        stall.armed.set()
        check = asyncio.create_task(rig["frontend"].call("authz.check", sensitive, timeout=20))
        assert await stall.wait_entered()  # decided "allowed", and its record's fsync is held
        revoked = await rig["meshctl"].call("authz.roles.revoke", {"principal": "service:stranger",
                                                                    "role": "user-data"}, timeout=10)
        assert revoked["roles"] == []
        # The revocation answered first: the check may not answer the allow it decided before it.
        stall.release.set()
        reply = await check
        assert reply["allow"] is False and reply["cache_s"] == 0.0
        outcomes = [r["outcome"] for r in await rig.decisions() if r["target"] == "Service::stranger"]
        assert outcomes == ["allowed", "denied"]

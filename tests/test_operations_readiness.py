"""Health tells the truth through the real CLI, under a real supervisord (DESIGN.md invariant 11).

One mesh walks through the states an operator meets: `up` returns only when every process is ready
(so the first write right after it succeeds), a locked mesh is SEALED with its own exit code, an
unlocked one is healthy again, and a damaged audit database makes `up`, `status` and
`audit verify` fail naming the file and the page, instead of HEALTHY and ``INTERNAL``.
"""

from __future__ import annotations

import asyncio
import json
import os

from services.audit.store import db_path
from shared import MeshClient, MeshHome

from .test_operations_e2e import mesh_home, meshctl, wait_until, write_fast_config

PASSWORD = "readiness-Master-Passphrase-7715"


async def _first_write(home: MeshHome) -> dict[str, object]:
    async with await MeshClient.connect(home, "authn", timeout=10) as client:
        reply: dict[str, object] = await client.call(
            "storage.kv.put", {"category": "notes", "key": b"first", "value": b"written"},
            timeout=10)
        return reply


def _state(home: MeshHome) -> tuple[int, dict[str, object]]:
    done = meshctl(home, "status", "--json")
    return done.returncode, json.loads(done.stdout)


def _state_if(home: MeshHome, code: int) -> dict[str, object] | None:
    """The status report when ``meshctl status`` exits with ``code``, else None (for ``wait_until``)."""
    got, report = _state(home)
    return report if got == code else None


def _storage_failed(home: MeshHome) -> dict[str, object] | None:
    """Storage's readiness once it says ``failed``, else None (for ``wait_until``)."""
    _, report = _state(home)
    storage = next(r for r in report["services"] if r["name"] == "storage")  # type: ignore[attr-defined]
    ready: dict[str, object] = storage["ready"]
    return ready if ready["state"] == "failed" else None


def test_up_waits_for_ready_sealed_is_its_own_verdict_and_damage_is_named() -> None:
    with mesh_home() as home:
        write_fast_config(home)
        password_file = home.root / "password"
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(PASSWORD + "\n")
        init = meshctl(home, "init", "--password-file", str(password_file))
        assert init.returncode == 0, init.stderr
        up = meshctl(home, "up", "--timeout", "90")
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        # Ready means ready: storage has its keys the moment `up` returns.
        assert asyncio.run(_first_write(home)) == {"stored": True}
        code, report = _state(home)
        assert (code, report["state"], report["exit_code"]) == (0, "healthy", 0)
        assert all(r["ready"]["state"] == "ready" for r in report["services"])  # type: ignore[attr-defined, index]
        assert report["audit"]["log"] == "ok"  # type: ignore[index]

        # Locked: SEALED, exit 3, not HEALTHY and not UNHEALTHY; `up` on it says so at once.
        assert meshctl(home, "security", "lock", "--yes").returncode == 0
        sealed = wait_until(lambda: _state_if(home, 3), 10, "status says sealed")
        assert sealed["state"] == "sealed" and "meshctl security unlock" in sealed["verdict"]
        text = meshctl(home, "status")
        assert text.returncode == 3 and "SEALED" in text.stdout.splitlines()[0]
        assert "meshctl: the mesh is sealed: run `meshctl security unlock`" in text.stderr
        again = meshctl(home, "up", "--timeout", "30")
        assert again.returncode == 3 and "sealed" in again.stderr
        unlock = meshctl(home, "security", "unlock", "--password-file", str(password_file))
        assert unlock.returncode == 0, unlock.stderr
        wait_until(lambda: _state_if(home, 0), 20, "healthy again after the unlock")

        # A damaged audit database: `up` stops early, naming it; status is unhealthy; verify names the page.
        assert meshctl(home, "down", "--yes").returncode == 0
        path = db_path(home)
        size = path.stat().st_size
        with path.open("r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(64))
        broken = meshctl(home, "up", "--timeout", "60")
        assert broken.returncode == 1
        assert f"audit: failed: {path}: the audit database failed its integrity check (page" in broken.stderr
        code, report = _state(home)
        assert code == 1 and report["state"] == "unhealthy" and report["audit"]["log"] == "failed"  # type: ignore[index]
        # `up` stops the moment a process fails by its own fault (audit here). Storage may still be
        # starting then: `down` until it registers (CI saw that), then `sealed` until its first key
        # fetch is refused. So wait for its verdict rather than reading one moment of its start.
        storage = wait_until(lambda: _storage_failed(home), 30, "storage says failed")
        assert storage["dependency"] == "keyvault", storage
        verify = meshctl(home, "audit", "verify")
        assert verify.returncode == 1 and "INTERNAL" not in verify.stderr
        assert "the database is damaged" in verify.stderr and str(path) in verify.stderr
        assert "page" in verify.stderr and "restore audit.db" in verify.stderr


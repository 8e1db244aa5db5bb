"""``python -m shared.run ENTRY``: a service from outside the project, run as a real process
against a real in-process mesh; every bad ENTRY refused with one line and exit 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from shared import CertificateError, MeshClient, Unavailable
from shared.run import main

from .conftest import FAST_CONFIG, TEST_IDENTITIES, eventually
from .mesh import InProcessMesh
from .processes import REPO

# The operator may call the companion's service; nothing else about the mesh changes.
NOTES_CONFIG = FAST_CONFIG + '\n[acl.identity.meshctl]\ncall = ["notes.*"]\n'

NOTES_SOURCE = textwrap.dedent('''
    """A companion's service, written as its developer would: no __main__ of its own."""
    from dataclasses import field
    from typing import Any

    from shared import RequestContext, Service, handler, message


    @message
    class Note:
        text: str = field(metadata={"max_len": 200})


    class Notes(Service):
        name = "notes"

        def __init__(self) -> None:
            super().__init__()
            self.notes: list[str] = []

        @handler("add", request=Note)
        async def add(self, ctx: RequestContext, req: Note) -> dict[str, Any]:
            self.notes.append(req.text)
            return {"count": len(self.notes), "caller": ctx.caller}


    class NotAService:
        name = "plain"


    class Nameless(Service):
        pass


    class Reserved(Service):
        name = "broker"
''')


@pytest_asyncio.fixture
async def notes_mesh(short_tmp: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(short_tmp / "home", NOTES_CONFIG, dict(TEST_IDENTITIES)) as running:
        yield running


def notes_file(directory: Path) -> Path:
    path = directory / "notes_service.py"
    path.write_text(NOTES_SOURCE)
    return path


def spawn(entry: str, home: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m shared.run ENTRY`` with ``home`` as its mesh home (and its mesh.toml)."""
    env = {**os.environ, "CURVEMESH_HOME": str(home)}
    env.pop("CURVEMESH_CONFIG", None)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "shared.run", entry], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def finished(proc: subprocess.Popen[bytes], seconds: float = 20) -> int:
    try:
        return await asyncio.to_thread(proc.wait, seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)
        raise AssertionError(f"the runner did not exit within {seconds} s") from None


async def test_a_service_from_a_file_runs_is_called_and_stops_on_sigterm(notes_mesh: InProcessMesh,
                                                                         short_tmp: Path) -> None:
    notes_mesh.add_identity("notes", "service")  # the provisioning helper: keypair, allow-list
    log = short_tmp / "notes.log"
    proc = spawn(f"{notes_file(short_tmp)}:Notes", notes_mesh.home.root, log)
    try:
        operator = await notes_mesh.client("meshctl")

        async def added() -> dict | None:
            try:
                return await operator.call("notes.add", {"text": "buy milk"}, timeout=1)
            except Unavailable:  # not registered yet
                return None

        reply = await eventually(added, deadline=20)
        assert reply == {"count": 1, "caller": "meshctl"}  # the broker stamped the caller
        assert (await operator.call("notes.add", {"text": "call mum"}, timeout=2))["count"] == 2
        assert (await operator.call("notes.health", timeout=2))["service"] == "notes"
        proc.send_signal(signal.SIGTERM)
        assert await finished(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # Logged like the project's own services: JSON lines under the service's name.
    assert {"registered", "stopping"} <= {e["event"] for e in events}
    assert all(e.get("process") == "notes" for e in events)
    assert "Traceback" not in log.read_text()


async def test_a_missing_key_names_its_path_and_what_creates_it(notes_mesh: InProcessMesh,
                                                                short_tmp: Path) -> None:
    log = short_tmp / "notes.log"
    proc = spawn(f"{notes_file(short_tmp)}:Notes", notes_mesh.home.root, log)
    assert await finished(proc) == 2
    last = log.read_text().strip().splitlines()[-1]
    path = notes_mesh.home.secret_key_path("notes")
    assert last == (f"notes: no keypair for 'notes' at {path}: `meshctl init` creates the keys of the broker, "
                    "every declared service and meshctl; a service the mesh does not declare yet is added with "
                    "`meshctl service add notes --entry ENTRY` (docs/services.md), which creates its keypair "
                    "and admits it")
    assert "Traceback" not in log.read_text()


async def test_a_missing_mesh_key_points_at_meshctl_init(notes_mesh: InProcessMesh) -> None:
    path = notes_mesh.home.secret_key_path("meshctl")
    path.unlink()
    with pytest.raises(CertificateError) as refused:
        await MeshClient.connect(notes_mesh.home, "meshctl", config=notes_mesh.config, timeout=2)
    assert refused.value.message.startswith(f"no keypair for 'meshctl' at {path}: `meshctl init` creates the keys")


@pytest.mark.parametrize(("entry", "expected"), [
    ("notes_service.py", "'notes_service.py' has no ':ClassName'; expected package.module:ClassName or "
                         "path/to/file.py:ClassName"),
    ("no_such_pkg.notes:Notes", "no module named 'no_such_pkg.notes' on the Python path; expected"),
    ("{dir}/missing.py:Notes", "no file at {dir}/missing.py; expected"),
    ("{dir}/notes_service.py:Absent", "{dir}/notes_service.py defines no 'Absent'; expected"),
    ("{dir}/notes_service.py:NotAService", "{dir}/notes_service.py:NotAService is not a subclass of shared.Service"),
    ("{dir}/notes_service.py:Nameless", "{dir}/notes_service.py:Nameless sets no name"),
    ("shared._service:Service", "shared._service:Service is not a subclass of shared.Service"),
    ("services.broker.schema:Not-a-class", "'Not-a-class' is not a class name; expected"),
    ("{dir}/broken.py:Notes", "importing {dir}/broken.py failed: RuntimeError: no database configured "
                              "({dir}/broken.py:1)"),
    ("{dir}/notes_service.py:Reserved", "{dir}/notes_service.py:Reserved has name 'broker', reserved for the broker"),
])
def test_a_bad_entry_exits_2_with_one_line_naming_the_problem(
        entry: str, expected: str, short_tmp: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # a loaded file puts its folder first
    notes_file(short_tmp)
    (short_tmp / "broken.py").write_text('raise RuntimeError("no database configured")\n')
    assert main([entry.format(dir=short_tmp)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("shared.run: " + expected.format(dir=short_tmp)), err


def test_a_bad_entry_as_a_process_prints_one_line_and_no_traceback(short_tmp: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "shared.run", "no_such_pkg:Notes"], cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr == ("shared.run: no module named 'no_such_pkg' on the Python path; expected "
                           "package.module:ClassName or path/to/file.py:ClassName\n")
    done = subprocess.run([sys.executable, "-m", "shared.run"], cwd=REPO, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "usage:" in done.stderr


def test_a_class_that_claims_another_identity_than_its_declaration_is_refused(
        short_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file declared as ``notes`` whose class says ``storage`` would run with storage's keypair."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    entry = f"{notes_file(short_tmp)}:Notes"
    assert main([entry, "--as", "storage"]) == 2
    err = capsys.readouterr().err
    assert err == (f"shared.run: {short_tmp}/notes_service.py:Notes has name 'notes' but is declared as 'storage': "
                   "a process runs only under the identity it is declared as\n")


@pytest.mark.parametrize("target", ["file", "folder"])
def test_code_someone_else_could_change_is_not_run(target: str, short_tmp: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = notes_file(short_tmp)
    place = path if target == "file" else path.parent
    os.chmod(place, 0o777 if target == "folder" else 0o666)
    try:
        assert main([f"{path}:Notes", "--as", "notes"]) == 2
    finally:
        os.chmod(place, 0o700 if target == "folder" else 0o600)
    err = capsys.readouterr().err
    assert err.startswith(f"shared.run: {place} is writable by group or others") and "chmod go-w" in err, err

"""Shared fixtures: a real in-process mesh with real CURVE keys in a temporary home."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog

from shared import MeshHome

from .mesh import InProcessMesh
from .netns import NetnsPair, require_root
from .secret_service import check_host, running_secret_service

# Fast timings so liveness and revocation tests finish quickly; limits stay on.
FAST_CONFIG = """
[broker]
heartbeat_interval_ms = 100
liveness_ms = 600
cert_reload_interval_ms = 100

[runtime]
heartbeat_interval_ms = 100
liveness_ms = 1000
reconnect_min_ms = 50
reconnect_max_ms = 500
handshake_timeout_ms = 3000
default_timeout_ms = 5000
shutdown_grace_ms = 3000

[limits.identity.flooder]
rate = 1.0
burst = 5

[acl.role.operator]
call = ["mesh.*", "*.health", "echo.*"]
publish = ["test."]
subscribe = ["*"]

[acl.identity.flooder]
call = ["echo.echo"]

[acl.identity.outsider]
call = ["echo.health"]
publish = ["outsider."]
subscribe = ["outsider."]

# The data keys of the project's services (mesh.toml declares them as each service's `keys`).
[keyvault.entitlements]
storage = ["sqlcipher", "duckdb", "rocksdb", "files", "backups"]
audit = ["audit-hmac", "audit-signing"]
authn = ["token-signing", "accounts"]
authz = ["authz"]
pairing = ["pairing"]
"""

# A tiny master Argon2 profile, allowed only with test_profiles: a derivation in milliseconds.
TEST_ARGON2 = """
[argon2]
test_profiles = true

[argon2.master]
memory_kib = 1024
iterations = 1
parallelism = 1
"""

TEST_IDENTITIES = {
    "keyvault": "service", "storage": "service", "echo": "service", "meshctl": "operator",
    "flooder": "device", "outsider": "device",
}


@pytest.fixture(scope="session", autouse=True)
def secret_service() -> Iterator[str]:
    """Every test (and every process a test starts) talks to a real Secret Service."""
    # Without the daemons every test would fail the same way: stop the session at once with
    # the one line that names the command installing them (make test would have run it).
    try:
        check_host()
    except RuntimeError as missing:
        pytest.exit(str(missing), returncode=1)
    saved = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    with running_secret_service() as address:
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
        try:
            yield address
        finally:
            if saved is None:
                os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = saved


@pytest.fixture(scope="session", autouse=True)
def anchor_home() -> Iterator[Path]:
    """The default anchor directory (``$XDG_STATE_HOME/curvemesh``) of every test and of every
    process a test starts is in a temporary directory of this session: tests never read or
    write the user's own ``~/.local/state``, and a test that needs its own sets ``anchor_dir``."""
    saved = os.environ.get("XDG_STATE_HOME")
    with tempfile.TemporaryDirectory(prefix="cmstate") as path:
        os.environ["XDG_STATE_HOME"] = path
        try:
            yield Path(path)
        finally:
            if saved is None:
                os.environ.pop("XDG_STATE_HOME", None)
            else:
                os.environ["XDG_STATE_HOME"] = saved


@pytest.fixture(autouse=True)
def logging_of_this_test_only() -> Iterator[None]:
    """structlog's configuration is process-wide: a test that runs meshctl in-process (which sets
    the level to critical) must not silence the log lines a later test captures and asserts on."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def fast_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[MeshHome]:
    """An empty home with the fast test configuration, for in-process ``meshctl init``
    with no terminal attached (init then generates a recovery passphrase)."""
    from tools.meshctl_cli import _intake

    from .test_operations_e2e import write_fast_config
    monkeypatch.setattr(_intake, "on_terminal", lambda: False)
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    with tempfile.TemporaryDirectory(prefix="cm") as path:
        home = MeshHome(Path(path) / "h")
        write_fast_config(home)
        yield home


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: unix socket paths are limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="cm") as path:
        yield Path(path)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    """Two network namespaces joined by a veth, the mesh's and a device's (tests/netns.py): new
    for each test, torn down after it (a failed one too). Skips the test when not root."""
    require_root()
    with NetnsPair() as pair:
        yield pair


@pytest_asyncio.fixture
async def mesh(short_tmp: Path) -> AsyncIterator[InProcessMesh]:
    async with InProcessMesh(short_tmp / "home", FAST_CONFIG, dict(TEST_IDENTITIES)) as running:
        yield running


async def eventually(check: Callable[[], Awaitable[Any]], deadline: float = 5.0,
                     poll: float = 0.02) -> Any:
    """Poll ``check`` until it returns a truthy value or ``deadline`` seconds pass.

    This waits for a condition with a deadline; it never sleeps in place of one.
    """
    end = time.monotonic() + deadline
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {deadline} s")
        await asyncio.sleep(poll)


async def holds(value: bool) -> bool:
    """A condition already computed, in the shape :func:`eventually` polls:
    ``await eventually(lambda: holds(x.count > 0))``."""
    return value


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Any]:
    """The plugin sandbox tests' rig (tests/sandbox_rig.py): real sandboxed children, each stopped
    when the test ends."""
    from .sandbox_rig import Rig, bpf

    started = Rig(tmp_path, bpf())
    try:
        yield started
    finally:
        await started.close()


def resident_bytes(path: Path) -> int:
    """How much of the file ``path`` is in the page cache (util-linux ``fincore``)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, timeout=30, check=True)
    return int(out.stdout.strip())

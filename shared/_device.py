"""A device's side of the mesh: join by pairing, keep what it learned, connect in detached mode.

A device directory (``meshctl pair join --device-dir DIR``; default ``~/.config/curvemesh-device``)
holds, all 0600 in a 0700 directory:

- ``device.key_secret`` / ``device.key``: the device's own CURVE keypair, made on the device for
  this pairing (the secret never leaves it);
- ``audit.witness``: the latest audit checkpoint the device has seen (:class:`~shared.transparency.Witness`);
- ``device.toml``: written last, so its presence means "paired": the identity the mesh admitted the
  device as, the broker's full public key (pinned: a broker with another key is refused at the
  handshake), the broker's tcp endpoints, and the audit log's checkpoint-signing key.

:func:`connect_device` dials the endpoints with CURVE and the pinned key, and on every (re)connection
checks the audit log against the witness before anything else: a log that shrank or forked is
reported to the mesh and the client refuses to go on (:class:`~shared.transparency.WitnessMismatch`).
:func:`connect_frontend` picks the mode from what it is given: a device directory is detached, a
mesh home is coupled (ipc, the mesh's own certificates; no pairing).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from . import pake
from ._certs import fingerprint, generate, load_keypair, save_keypair
from ._client import MeshClient
from ._config import RuntimeConfig
from ._connection import Connection
from ._errors import ConfigError, Conflict, MeshError, Unavailable
from ._files import write_atomic
from ._home import MeshHome
from ._witness import Witness, WitnessMismatch, witness_check

PROFILE: Final = "device.toml"
SECRET: Final = "device.key_secret"  # noqa: S105 - a file name, not a secret
WITNESS: Final = "audit.witness"
PROFILE_VERSION: Final = 1
CLIENT_VERSION: Final = "curvemesh-device/1"
#: What a device is told when pairing fails, whatever the reason: nothing about which step failed.
PAIRING_FAILED: Final = ("pairing failed: the code was wrong, expired or already used, or the window is closed; "
                         "ask for a new code (meshctl pair start)")


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What a paired device knows about its mesh (``device.toml``)."""

    directory: Path
    name: str
    broker_public_key: bytes
    endpoints: tuple[str, ...]
    audit_public_key: bytes
    paired_at: float

    @property
    def broker_fingerprint(self) -> str:
        return fingerprint(self.broker_public_key)


def default_directory() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "curvemesh-device"


def load_profile(directory: Path) -> DeviceProfile:
    """Read ``directory/device.toml``; :class:`ConfigError` naming the file and what is wrong."""
    path = directory / PROFILE
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not a paired device directory; pair first: meshctl pair join CODE "
                          f"--endpoint tcp://HOST:PORT --device-dir {directory}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    keys = {"version", "name", "broker_public_key", "endpoints", "audit_public_key", "paired_at"}
    if set(data) != keys or data["version"] != PROFILE_VERSION:
        raise ConfigError(f"{path}: not a device profile of version {PROFILE_VERSION} "
                          f"(keys: {', '.join(sorted(keys))})")
    try:
        endpoints = tuple(str(e) for e in data["endpoints"])
        if not endpoints or not all(e.startswith("tcp://") for e in endpoints):
            raise ValueError("endpoints")
        return DeviceProfile(directory, str(data["name"]), str(data["broker_public_key"]).encode("ascii"),
                             endpoints, bytes.fromhex(str(data["audit_public_key"])), float(data["paired_at"]))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ConfigError(f"{path}: a field has the wrong form ({exc})") from None


def _render(profile: DeviceProfile) -> bytes:
    endpoints = ", ".join(f'"{e}"' for e in profile.endpoints)
    return (f"# curvemesh device profile, written by `meshctl pair join`; delete the directory to unpair.\n"
            f"version = {PROFILE_VERSION}\n"
            f'name = "{profile.name}"\n'
            f'broker_public_key = "{profile.broker_public_key.decode("ascii")}"\n'
            f"endpoints = [{endpoints}]\n"
            f'audit_public_key = "{profile.audit_public_key.hex()}"\n'
            f"paired_at = {profile.paired_at!r}\n").encode()


async def join(code: str, endpoint: str, directory: Path, *, name: str = "", expect_broker: str | None = None,
               timeout: float = 10.0, client_version: str = CLIENT_VERSION) -> DeviceProfile:
    """Pair this device with the mesh whose pairing entry point is ``endpoint`` (``tcp://host:port``),
    using the one-time ``code``; on success the device directory holds its keypair, its profile and
    its first witnessed checkpoint. ``expect_broker``: the broker fingerprint a QR code carried (the
    welcome must name that key). Raises :class:`Conflict` if the directory is already paired and
    :class:`Unavailable` with one uniform message when pairing fails."""
    host, port = _host_port(endpoint)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / PROFILE).exists() or (directory / SECRET).exists():
        raise Conflict(f"{directory} already holds a paired device; to pair again, remove it first")
    pair = generate("device", "device")
    save_keypair(pair, directory)
    try:
        hello = pake.DeviceHello(pair.certificate.public_key, name, client_version)
        welcome = await _exchange(pake.DeviceSide(code), host, port, hello, timeout)
        if expect_broker is not None and welcome.broker_public_key and \
                fingerprint(welcome.broker_public_key) != expect_broker:
            raise pake.PairingError("broker key differs from the QR code")
        if welcome.checkpoint:
            Witness(directory / WITNESS, welcome.audit_public_key).observe(welcome.checkpoint, [])
        profile = DeviceProfile(directory, welcome.device_name, welcome.broker_public_key, welcome.endpoints,
                                welcome.audit_public_key, time.time())
        write_atomic(directory / PROFILE, _render(profile))
        return profile
    except (pake.PairingError, OSError, TimeoutError, MeshError) as exc:
        for leftover in (SECRET, "device.key", WITNESS):
            with contextlib.suppress(FileNotFoundError):
                (directory / leftover).unlink()
        if isinstance(exc, MeshError) and not isinstance(exc, Unavailable):
            raise
        raise Unavailable(PAIRING_FAILED) from None


async def _exchange(side: pake.DeviceSide, host: str, port: int, hello: pake.DeviceHello,
                    timeout: float) -> pake.Welcome:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(pake.encode_frame(side.hello()))
        await writer.drain()
        reply = await pake.read_frame(reader, timeout=timeout)
        writer.write(pake.encode_frame(side.confirm(reply, hello)))
        await writer.drain()
        return side.welcome(await pake.read_frame(reader, timeout=timeout))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _host_port(endpoint: str) -> tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise ConfigError("endpoint: tcp://HOST:PORT, as `meshctl pair start` shows it")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("endpoint: tcp://HOST:PORT, as `meshctl pair start` shows it")
    return host.strip("[]"), int(port)


class DeviceClient(MeshClient):
    """A :class:`MeshClient` that refuses to go on once its witness saw the audit log rewritten."""

    refused: MeshError | None = None

    async def call(self, target: str, body: Any = None, *, timeout: float | None = None) -> Any:
        if self.refused is not None:
            raise self.refused
        return await super().call(target, body, timeout=timeout)


async def connect_device(directory: Path | None = None, *, config: RuntimeConfig | None = None,
                         witness: bool = True, timeout: float = 10.0) -> DeviceClient:
    """Connect a paired device in detached mode: tcp, CURVE, the pinned broker key, its own keypair.
    Tries the profile's endpoints in order. With ``witness`` (the default), checks the audit log
    against the device's witness now and after every reconnection; a mismatch is reported to the
    mesh and raised (:class:`~shared.transparency.WitnessMismatch`), and the client refuses every
    later call."""
    directory = directory or default_directory()
    profile = load_profile(directory)
    keypair = load_keypair(directory / SECRET)
    runtime = config or RuntimeConfig()
    last: MeshError | None = None
    for endpoint in profile.endpoints:
        connection = Connection(keypair, profile.broker_public_key, endpoint, runtime)
        client = DeviceClient(connection, runtime)
        try:
            await connection.open(timeout)
        except MeshError as exc:
            await connection.close()
            last = exc
            continue
        if not witness:
            return client
        keeper = Witness(directory / WITNESS, profile.audit_public_key)

        async def check(client: DeviceClient = client, keeper: Witness = keeper) -> None:
            try:
                await witness_check(client, keeper)
            except WitnessMismatch as exc:
                client.refused = exc
                raise

        try:
            await check()
        except BaseException:
            await client.close()
            raise
        client.connect_hooks.append(check)
        return client
    raise last or Unavailable("the device profile names no endpoint")


async def connect_frontend(path: Path, name: str | None = None, **kwargs: Any) -> MeshClient:
    """A frontend's connection, its mode picked from ``path``: a device directory (``device.toml``)
    connects detached (:func:`connect_device`); a mesh home connects coupled, over ipc, as identity
    ``name`` with the home's keypair (:meth:`MeshClient.connect`)."""
    if (path / PROFILE).exists():
        return await connect_device(path, **kwargs)
    if name is None:
        raise ConfigError(f"{path} is a mesh home (coupled mode): name the identity to connect as")
    return await MeshClient.connect(MeshHome(path), name, **kwargs)

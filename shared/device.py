"""A device's side of the mesh: pairing, its profile, and connecting in detached mode.

``meshctl pair join`` and a frontend on another host use these; the code is in :mod:`shared._device`::

    profile = await device.join("1234-5678", "tcp://192.168.1.20:7420", Path("~/.config/curvemesh-device"))
    client = await device.connect_device(profile.directory)      # tcp + CURVE, broker key pinned
    await client.call("authn.login.password", {...})

On every connection a device checks the audit log against the checkpoint it kept (its witness);
a log that shrank or forked is reported and refused (:class:`shared.transparency.WitnessMismatch`).
"""

from __future__ import annotations

from ._device import (
    CLIENT_VERSION,
    PAIRING_FAILED,
    DeviceClient,
    DeviceProfile,
    connect_device,
    connect_frontend,
    default_directory,
    join,
    load_profile,
)

__all__ = ["CLIENT_VERSION", "PAIRING_FAILED", "DeviceClient", "DeviceProfile", "connect_device", "connect_frontend",
           "default_directory", "join", "load_profile"]

"""Message types of the broker's own ``mesh.*`` methods."""

from __future__ import annotations

from dataclasses import field

from shared import message


@message
class Empty:
    """No fields."""


@message
class CertRef:
    """A certificate named by identity name, Z85 public key, or fingerprint (prefix of 8+ hex digits)."""

    ref: str = field(metadata={"max_len": 128})


@message
class CertAccept:
    ref: str = field(metadata={"max_len": 128})
    name: str = field(metadata={"max_len": 63})
    role: str = field(metadata={"max_len": 16})


@message
class CertList:
    state: str | None = field(default=None, metadata={"max_len": 16})


@message
class DeviceEnroll:
    """A device's CURVE public key (Z85) and the identity name it is admitted as."""

    public_key: str = field(metadata={"max_len": 40})
    name: str = field(metadata={"max_len": 63})


@message
class DeviceName:
    name: str = field(metadata={"max_len": 63})

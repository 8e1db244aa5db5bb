"""Message types of the pairing service, checked strictly at the wire boundary (:func:`shared.message`)."""

from __future__ import annotations

from dataclasses import field

from shared import message

_LABEL = {"max_len": 64}


@message
class PairStart:
    """``name``: what the device will be called (else what it suggests); ``ttl_s``: how long the
    window stays open; ``host``: the address devices reach this machine at, when the broker listens
    on a wildcard address and ``[pairing] advertise_host`` is empty."""

    name: str | None = field(default=None, metadata=_LABEL)
    ttl_s: int | None = None
    host: str | None = field(default=None, metadata={"max_len": 253})


@message
class WindowRef:
    window: str | None = field(default=None, metadata={"max_len": 32})


@message
class DeviceRef:
    """A device by its name, its identity, or its key fingerprint (a prefix of 8+ hex digits)."""

    ref: str = field(metadata={"max_len": 80})


@message
class DeviceRename:
    ref: str = field(metadata={"max_len": 80})
    name: str = field(metadata=_LABEL)


@message
class DeviceList:
    all: bool = False

"""The two sides of a pairing as state machines: pure functions of the messages, no I/O.

The device is SPAKE2's side A, the mesh side B, with fixed identities, so a message of one side can
never be taken for the other's. Each step runs once, in order; any failure, an order error included,
ends the session for good (state ``failed``, every key wiped), so a peer gets one try per session.

    device                                         mesh
    hello()        {v, t:"pake", m}           ->   reply(hello)
    confirm(reply) <- {v, t:"pake", m, c}          (mesh confirmation c)
                   {v, t:"confirm", c, s}     ->   confirm(message) -> DeviceHello
    welcome(msg)   <- {v, t:"welcome", s}          welcome(Welcome)

Nothing the peer sends is trusted before its confirmation checks out: the device seals its hello
only after the mesh's MAC is right, and the mesh opens that hello only after the device's MAC is.
"""

from __future__ import annotations

from typing import Any, Final

from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from spake2.ed25519_basic import NotOnCurve

from ._crypto import SEAL_OVERHEAD
from ._pake_codes import normalize_code
from ._pake_frames import MAX_FRAME, PAKE_VERSION, PairingProtocolError, expect_message
from ._pake_keys import DEVICE, MAC_BYTES, MESH, KeySchedule
from ._pake_payloads import DeviceHello, Welcome, decode_hello, decode_welcome, encode_hello, encode_welcome

__all__ = ["DEVICE_ID", "MESH_ID", "SPAKE_MESSAGE_BYTES", "DeviceSide", "MeshSide"]

DEVICE_ID: Final = b"curvemesh-device/1"
MESH_ID: Final = b"curvemesh-mesh/1"
#: What SPAKE2 (Ed25519 group) sends: a side byte (b"A" or b"B") and a 32-byte group element.
SPAKE_MESSAGE_BYTES: Final = 33
_SPAKE_FIELD: Final = (SPAKE_MESSAGE_BYTES, SPAKE_MESSAGE_BYTES)
_MAC_FIELD: Final = (MAC_BYTES, MAC_BYTES)
_SEALED_FIELD: Final = (SEAL_OVERHEAD + 1, MAX_FRAME)


def _finish(spake: Any, message: bytes, side: bytes) -> bytes:
    """Finish SPAKE2 with the peer's ``message`` and return the shared key.

    The library refuses bad input with a mix of types (SPAKEError for a wrong side or a reflected
    message, ValueError for an element outside the group, NotOnCurve for bytes that are no point);
    each is a malformed message, not a wrong code, which only key confirmation can tell.
    """
    if message[:1] != side:
        raise PairingProtocolError("the SPAKE2 message is from the wrong side")
    try:
        key = spake.finish(message)
    except (SPAKEError, ValueError, NotOnCurve):
        raise PairingProtocolError("the SPAKE2 message is not a valid group element") from None
    if type(key) is not bytes:  # the library is untyped: check what it promises
        raise PairingProtocolError("SPAKE2 gave no key")
    return key


class _Session:
    """The state both sides share: the step reached, the SPAKE2 object until it finishes, the keys."""

    __slots__ = ("_keys", "_sent", "_spake", "_state")

    def __init__(self, spake: Any) -> None:
        self._state = "new"
        self._spake: Any = spake
        self._sent = b""
        self._keys: KeySchedule | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state}>"

    @property
    def state(self) -> str:
        """``new``, then one state per step taken, ``done`` at the end, or ``failed``."""
        return self._state

    def _enter(self, expected: str) -> None:
        if self._state != expected:
            self._fail()
            raise PairingProtocolError(f"pairing step out of order (the session is {self._state})")

    def _fail(self) -> None:
        self._state = "failed"
        self._spake = None
        if self._keys is not None:
            self._keys.wipe()
            self._keys = None

    def _start(self) -> bytes:
        message = self._spake.start()
        if type(message) is not bytes or len(message) != SPAKE_MESSAGE_BYTES:
            raise PairingProtocolError("SPAKE2 gave a message of an unexpected shape")
        self._sent = message
        return message

    def _finish(self, message: bytes, side: bytes, device_message: bytes, mesh_message: bytes) -> KeySchedule:
        spake, self._spake = self._spake, None  # one finish only, and the password goes with it
        self._keys = KeySchedule(_finish(spake, message, side), device_message, mesh_message)
        return self._keys

    def _done(self) -> None:
        self._schedule().wipe()
        self._keys = None
        self._state = "done"

    def _schedule(self) -> KeySchedule:
        if self._keys is None:
            raise PairingProtocolError("pairing keys are gone")
        return self._keys


class DeviceSide(_Session):
    """The device's side (SPAKE2 side A): :meth:`hello`, :meth:`confirm`, :meth:`welcome`, once each
    and in that order. ``code`` may be typed in any form :func:`normalize_code` accepts
    (:class:`~shared.BadRequest` otherwise)."""

    __slots__ = ()

    def __init__(self, code: str) -> None:
        super().__init__(SPAKE2_A(normalize_code(code).encode("ascii"), idA=DEVICE_ID, idB=MESH_ID))

    def hello(self) -> dict[str, Any]:
        """The first message: ``{"v": 1, "t": "pake", "m": <SPAKE2 message>}``."""
        self._enter("new")
        try:
            message = self._start()
        except BaseException:
            self._fail()
            raise
        self._state = "hello-sent"
        return {"v": PAKE_VERSION, "t": "pake", "m": message}

    def confirm(self, reply: dict[str, Any], device: DeviceHello) -> dict[str, Any]:
        """Finish SPAKE2 with the mesh's reply and check its confirmation (:class:`WrongCode` if it
        fails); return ``{"v": 1, "t": "confirm", "c": <our confirmation>, "s": <sealed device>}``."""
        self._enter("hello-sent")
        try:
            if not isinstance(device, DeviceHello):
                raise PairingProtocolError("the device's hello must be a DeviceHello")
            fields = expect_message(reply, "pake", {"m": _SPAKE_FIELD, "c": _MAC_FIELD})
            keys = self._finish(fields["m"], b"B", self._sent, fields["m"])
            keys.check_mac(MESH, fields["c"])
            answer = {"v": PAKE_VERSION, "t": "confirm", "c": keys.mac(DEVICE),
                      "s": keys.seal(DEVICE, encode_hello(device))}
        except BaseException:
            self._fail()
            raise
        self._state = "confirmed"
        return answer

    def welcome(self, message: dict[str, Any]) -> Welcome:
        """Open and validate the mesh's sealed welcome; the session is then done."""
        self._enter("confirmed")
        try:
            fields = expect_message(message, "welcome", {"s": _SEALED_FIELD})
            welcome = decode_welcome(self._schedule().open(MESH, fields["s"]))
        except BaseException:
            self._fail()
            raise
        self._done()
        return welcome


class MeshSide(_Session):
    """The mesh's side (SPAKE2 side B): :meth:`reply`, :meth:`confirm`, :meth:`welcome`, once each
    and in that order.

    Each :meth:`reply` answers one guess of the code: its confirmation tells whoever sent the hello
    whether the guess was right, even if they never send a confirm. So the caller counts an attempt
    when it calls :meth:`reply`, not when :meth:`confirm` raises :class:`WrongCode`, and retires the
    code after an attempt that does not reach ``done``: one instance, one code, one attempt."""

    __slots__ = ()

    def __init__(self, code: str) -> None:
        super().__init__(SPAKE2_B(normalize_code(code).encode("ascii"), idA=DEVICE_ID, idB=MESH_ID))

    def reply(self, hello: dict[str, Any]) -> dict[str, Any]:
        """Answer the device's hello: ``{"v": 1, "t": "pake", "m": <SPAKE2 message>, "c": <our
        confirmation>}``. The device learns from ``c`` whether its code was right; an attacker
        without the code learns only that one guess was wrong, but learns it here (see the class)."""
        self._enter("new")
        try:
            fields = expect_message(hello, "pake", {"m": _SPAKE_FIELD})
            sent = self._start()
            keys = self._finish(fields["m"], b"A", fields["m"], sent)
            answer = {"v": PAKE_VERSION, "t": "pake", "m": sent, "c": keys.mac(MESH)}
        except BaseException:
            self._fail()
            raise
        self._state = "replied"
        return answer

    def confirm(self, message: dict[str, Any]) -> DeviceHello:
        """Check the device's confirmation (:class:`WrongCode` if it fails), then open and validate
        its sealed hello."""
        self._enter("replied")
        try:
            fields = expect_message(message, "confirm", {"c": _MAC_FIELD, "s": _SEALED_FIELD})
            keys = self._schedule()
            keys.check_mac(DEVICE, fields["c"])
            hello = decode_hello(keys.open(DEVICE, fields["s"]))
        except BaseException:
            self._fail()
            raise
        self._state = "confirmed"
        return hello

    def welcome(self, welcome: Welcome) -> dict[str, Any]:
        """Seal ``welcome`` for the device: ``{"v": 1, "t": "welcome", "s": <sealed welcome>}``; the
        session is then done and its last key wiped."""
        self._enter("confirmed")
        try:
            if not isinstance(welcome, Welcome):
                raise PairingProtocolError("the welcome must be a Welcome")
            keys = self._schedule()
            answer = {"v": PAKE_VERSION, "t": "welcome", "s": keys.seal(MESH, encode_welcome(welcome))}
        except BaseException:
            self._fail()
            raise
        self._done()
        return answer


"""ZAP decisions (a pure function) and the handler thread that must never die."""

from __future__ import annotations

import struct
from types import MappingProxyType

import zmq
import zmq.utils.z85

from services.broker.zap import ZapHandler, decide
from shared import certs

CERT = certs.generate("storage", "service").certificate
RAW = zmq.utils.z85.decode(CERT.public_key)
ALLOWED = MappingProxyType({RAW: CERT})


def request(domain: bytes = b"curvemesh", mechanism: bytes = b"CURVE", creds: list[bytes] | None = None,
            version: bytes = b"1.0") -> list[bytes]:
    return [version, b"rid-1", domain, b"127.0.0.1", b"", mechanism, *(creds if creds is not None else [RAW])]


def parse_metadata(data: bytes) -> dict[str, bytes]:
    out, offset = {}, 0
    while offset < len(data):
        size = data[offset]
        name = data[offset + 1:offset + 1 + size].decode()
        (length,) = struct.unpack_from(">I", data, offset + 1 + size)
        start = offset + 5 + size
        out[name] = data[start:start + length]
        offset = start + length
    return out


def test_a_known_key_is_admitted_with_its_name_role_and_key() -> None:
    decision = decide(request(), b"curvemesh", ALLOWED, "c0ffee")
    version, rid, status, _, user_id, metadata = decision.reply
    assert (version, rid, status, user_id) == (b"1.0", b"rid-1", b"200", b"storage")
    assert parse_metadata(metadata) == {"X-Role": b"service", "X-Key": CERT.public_key, "X-Conn": b"c0ffee"}
    assert decision.unknown_key is None
    # Without a given token every handshake gets a fresh 128-bit one (hex: no NUL byte,
    # which zmq_msg_gets would cut the value at).
    tokens = {parse_metadata(decide(request(), b"curvemesh", ALLOWED).reply[5])["X-Conn"] for _ in range(2)}
    assert len(tokens) == 2 and all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)


def test_everything_else_is_refused() -> None:
    stranger = zmq.utils.z85.decode(zmq.curve_keypair()[0])
    cases = {
        "unknown key": (request(creds=[stranger]), b"400"),
        "wrong domain": (request(domain=b"other"), b"400"),
        "NULL": (request(mechanism=b"NULL", creds=[]), b"400"),
        "PLAIN": (request(mechanism=b"PLAIN", creds=[b"admin", b"admin"]), b"400"),
        "short key": (request(creds=[RAW[:31]]), b"400"),
        "two credentials": (request(creds=[RAW, RAW]), b"400"),
        "bad version": (request(version=b"2.0"), b"500"),
        "truncated": ([b"1.0", b"rid"], b"500"),
        "empty": ([], b"500"),
    }
    for name, (frames, status) in cases.items():
        decision = decide(frames, b"curvemesh", ALLOWED)
        assert decision.reply[2] == status, name
        assert decision.reply[4] == b"", name  # no user id for a refusal
    assert decide(request(creds=[stranger]), b"curvemesh", ALLOWED).unknown_key == stranger


def test_the_handler_thread_answers_500_and_survives_its_own_failure() -> None:
    context = zmq.Context()
    calls = {"n": 0}

    def snapshot() -> MappingProxyType:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bug in the allow-list")
        return ALLOWED

    handler = ZapHandler(context, "curvemesh", snapshot)
    handler.start()
    try:
        client = context.socket(zmq.DEALER)
        client.rcvtimeo = 3000
        client.connect("inproc://zeromq.zap.01")
        for expected in (b"500", b"200"):
            client.send_multipart([b"", *request()])
            assert client.recv_multipart()[3] == expected
        assert handler.alive() and handler.errors == 1
        client.close(0)
    finally:
        handler.stop()
        context.term()

"""Envelope codec: bounded, strict, and never crashing on arbitrary bytes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import BadRequest, decode_body, decode_header, encode_body, encode_header, split_target

LIMIT = 4096


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_never_crash_the_header_decoder(data: bytes) -> None:
    try:
        header = decode_header(data, LIMIT)
    except BadRequest:
        return
    assert isinstance(header, dict) and header["v"] == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=8192))
def test_arbitrary_bytes_never_crash_the_body_decoder(data: bytes) -> None:
    try:
        decode_body(data, LIMIT)
    except BadRequest:
        pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(msgpack_values)
def test_valid_bodies_round_trip(value: object) -> None:
    assert decode_body(encode_body(value), 1 << 20) == value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=10), msgpack_values, max_size=8))
def test_random_maps_are_either_valid_headers_or_refused(header: dict) -> None:
    try:
        decoded = decode_header(msgpack.packb(header), LIMIT)
    except BadRequest:
        return
    assert decoded["k"] in {"req", "rep", "err", "pub", "sub", "unsub", "reg", "bye", "hb"}


def test_oversize_frames_are_refused_before_decoding() -> None:
    with pytest.raises(BadRequest, match="exceeds the limit"):
        decode_header(msgpack.packb({"v": 1, "k": "hb", "x": "a" * LIMIT}), LIMIT)
    with pytest.raises(BadRequest, match="exceeds the limit"):
        decode_body(b"\x00" * (LIMIT + 1), LIMIT)


def test_deep_nesting_is_refused() -> None:
    value: object = "leaf"
    for _ in range(40):
        value = [value]
    with pytest.raises(BadRequest, match="nested deeper"):
        decode_body(msgpack.packb(value), 1 << 20)
    # Far deeper than msgpack's own stack: refused, not a crash.
    with pytest.raises(BadRequest):
        decode_body(b"\x91" * 5000 + b"\xc0", 1 << 20)


def test_non_string_keys_are_refused() -> None:
    for key in (1, b"bytes", 1.5):
        with pytest.raises(BadRequest):
            decode_body(msgpack.packb({key: 1}), 1 << 20)
    with pytest.raises(BadRequest):
        decode_header(msgpack.packb({"v": 1, "k": "hb", 1: 2}, strict_types=False), LIMIT)


def test_extension_types_and_timestamps_are_refused() -> None:
    with pytest.raises(BadRequest, match="extension"):
        decode_body(msgpack.packb(msgpack.ExtType(3, b"abc")), 1 << 20)
    with pytest.raises(BadRequest):
        decode_body(msgpack.packb(msgpack.Timestamp(1, 0)), 1 << 20)


def test_unknown_version_is_refused_without_fallback() -> None:
    for version in (0, 2, 255):
        with pytest.raises(BadRequest, match="version"):
            decode_header(msgpack.packb({"v": version, "k": "hb"}), LIMIT)
    with pytest.raises(BadRequest, match="version"):
        decode_header(msgpack.packb({"k": "hb"}), LIMIT)


def test_header_fields_are_checked_per_kind() -> None:
    good = {"v": 1, "k": "req", "id": 1, "to": "a.b", "ttl": 5}
    assert decode_header(encode_header(good), LIMIT) == good
    for bad, reason in [
        ({**good, "extra": 1}, "unknown header field"),
        ({k: v for k, v in good.items() if k != "ttl"}, "missing"),
        ({**good, "id": "1"}, "'id'"),
        ({**good, "id": True}, "'id'"),
        ({**good, "ttl": 2**40}, "'ttl'"),
        ({**good, "k": "nope"}, "unknown message kind"),
    ]:
        with pytest.raises(BadRequest, match=reason):
            decode_header(encode_header(bad), LIMIT)


def test_sender_claims_are_dropped() -> None:
    header = decode_header(encode_header({"v": 1, "k": "hb", "from": "keyvault", "role": "service"}), LIMIT)
    assert header == {"v": 1, "k": "hb"}


def test_errors_never_echo_the_input() -> None:
    secret = "hunter2-planted-secret"
    for data in (msgpack.packb({"v": 1, "k": secret}), msgpack.packb({"v": 1, "k": "hb", secret: 1})[:40],
                 secret.encode()):
        with pytest.raises(BadRequest) as info:
            decode_header(data, LIMIT)
        assert secret not in str(info.value)


def test_targets_are_service_dot_method_and_never_private() -> None:
    assert split_target("mesh.certs.list") == ("mesh", "certs.list")
    for target in ("nodot", ".m", "s.", "s._m", "s.a._b", "_s.m"):
        with pytest.raises(BadRequest):
            split_target(target)


def test_bodies_with_unsupported_types_cannot_be_encoded() -> None:
    with pytest.raises(BadRequest):
        encode_body({"x": object()})
    with pytest.raises(BadRequest):
        encode_body({1: "int key"})

"""Per-event detail schemas: known types keep their fields, drop extras, hash what they should;
planted secrets never survive; unknown types get the name-based safety net."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack
import pytest

from services.audit.sanitize import (
    COUNTS,
    DROPPED,
    DROPPED_FIELDS,
    EVENT_SCHEMAS,
    FLAG,
    HASH,
    HASH_PREFIX,
    NUMBER,
    TALLY,
    TEXT,
    sanitize_details,
    schema_for,
)

KEY = b"k" * 32
SECRETS = ["hunter2-Planted-Password", "tok_PLANTED_0123456789", "-----BEGIN PRIVATE KEY-----AAAA", "493817"]
SECRET_NAMES = ["password", "token", "api_key", "mfa_code", "secret", "passphrase", "otp", "pin"]

SAMPLE: dict[str, Any] = {TEXT: "ok-value", NUMBER: 7, FLAG: True, COUNTS: {"auth": 2, "protocol": 1}, HASH: "sess-1",
                          TALLY: 3}
EVENTS = sorted(e.replace("*", "fired_rule") for e in EVENT_SCHEMAS)


def hashed(value: str) -> str:
    return HASH_PREFIX + hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()


def legit(event: str) -> dict[str, Any]:
    schema = schema_for(event)
    assert schema is not None
    return {name: SAMPLE[treatment] for name, treatment in schema.items()}


@pytest.mark.parametrize("event", EVENTS)
def test_known_type_keeps_its_fields_and_hashes_what_it_should(event: str) -> None:
    schema = schema_for(event)
    assert schema is not None
    out = sanitize_details(legit(event), KEY, event)
    assert DROPPED_FIELDS not in out
    for name, treatment in schema.items():
        if treatment == HASH:
            assert out[name] == hashed("sess-1")
        else:
            assert out[name] == SAMPLE[treatment], name


@pytest.mark.parametrize("event", EVENTS)
def test_known_type_drops_unlisted_fields_and_counts_them_without_naming_them(event: str) -> None:
    details = legit(event) | {"extra_field": "x", "note": {"deep": 1}, "password": "p"}
    out = sanitize_details(details, KEY, event)
    assert out[DROPPED_FIELDS] == 3
    assert not {"extra_field", "note", "password"} & out.keys()
    assert "extra_field" not in repr(out)


@pytest.mark.parametrize("event", [*EVENTS, "made.up", "", "mesh.unknown"])
@pytest.mark.parametrize("secret", SECRETS)
def test_planted_secret_never_survives(event: str, secret: str) -> None:
    schema = schema_for(event) or {}
    details: dict[str, Any] = {name: secret for name in SECRET_NAMES}
    details["nested"] = {"session_token": secret, "list": [{"key": secret}]}
    # every schema field that is not free text gets the secret too (a code sent as a "count")
    for name, treatment in schema.items():
        details[name] = secret if treatment != TEXT else "fine"
        if treatment == COUNTS:
            details[name] = {"a": secret, "password": 1}
    out = sanitize_details(details, KEY, event or None)
    blob = msgpack.packb(out)
    assert secret.encode() not in blob
    assert b"hunter2" not in blob and b"PLANTED" not in blob


def test_wrong_types_in_known_fields_are_hashed_or_dropped() -> None:
    out = sanitize_details({"count": "123456", "reason": 493817, "by_reason": [1]}, KEY, "mesh.handshake_failed")
    assert out["count"] == hashed("123456")
    assert out["by_reason"] == DROPPED
    assert out[DROPPED_FIELDS] == 1  # "reason" is not a handshake_failed field
    out = sanitize_details({"reason": 493817, "count": True}, KEY, "mesh.refused")
    assert out["reason"].startswith(HASH_PREFIX) and out["count"].startswith(HASH_PREFIX)
    assert sanitize_details({"changed": "yes", "sha256": None}, KEY, "mesh.config") == {
        "changed": hashed("yes"), "sha256": None}


def test_alert_rules_share_the_alert_schema_but_ack_has_its_own() -> None:
    assert schema_for("alert.failed_logins") is EVENT_SCHEMAS["alert.*"]
    assert schema_for("alert.ack") is EVENT_SCHEMAS["alert.ack"]
    assert schema_for("alerting") is None and schema_for(None) is None


def test_unknown_type_uses_the_name_based_safety_net() -> None:
    details = {"password": "pw", "reason": "fine", "nested": {"api_key": b"raw"}, "items": [1, 2]}
    out = sanitize_details(details, KEY, "someone.new_event")
    assert out == {"password": hashed("pw"), "reason": "fine",
                   "nested": {"api_key": HASH_PREFIX + hmac.new(KEY, b"raw", hashlib.sha256).hexdigest()},
                   "items": [1, 2]}
    assert DROPPED_FIELDS not in out
    assert sanitize_details(details, KEY) == out  # no type given: the same


def test_kept_values_are_still_bounded() -> None:
    out = sanitize_details({"reason": "x" * 5000}, KEY, "mesh.refused")
    assert len(out["reason"]) < 1100 and "truncated" in out["reason"]


def test_a_tally_keeps_a_count_named_like_a_secret_and_nothing_else() -> None:
    """``sessions_ended`` would be hashed by the name-based rule; as a tally its count is kept, and
    anything but a non-negative integer is still hashed."""
    out = sanitize_details({"device": "phone", "sessions_ended": 2, "grants_revoked": 0}, KEY, "pairing.device_revoked")
    assert out == {"device": "phone", "sessions_ended": 2, "grants_revoked": 0}
    for planted in ("493817", 4.5, -1, True, b"raw"):
        out = sanitize_details({"sessions_ended": planted}, KEY, "pairing.device_revoked")
        assert type(out["sessions_ended"]) is str and out["sessions_ended"].startswith(HASH_PREFIX), planted

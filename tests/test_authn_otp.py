"""One-time codes: pyotp against the RFC 6238 vectors (cryptography-vectors), our window and reuse
rule, and recovery codes."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

import pyotp
import pytest

from services.authn import otp


def vectors() -> list[dict[str, str]]:
    text = (resources.files("cryptography_vectors") / "twofactor" / "rfc-6238.txt").read_text("utf-8")
    out: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "TOTP" in fields:
            out.append(fields)
    return out


def test_the_rfc_6238_vectors_are_all_there() -> None:
    assert len(vectors()) == 18


@pytest.mark.parametrize("vector", vectors(), ids=lambda v: f"{v['MODE']}-{v['TIME']}")
def test_pyotp_gives_the_rfc_6238_codes(vector: dict[str, str]) -> None:
    import base64
    digest: Any = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}[vector["MODE"]]
    secret = base64.b32encode(vector["SECRET"].encode()).decode()
    totp = pyotp.TOTP(secret, digits=8, digest=digest, interval=30)
    assert totp.at(int(vector["TIME"])) == vector["TOTP"]


SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_750_000_015.0


def code_at(offset_steps: int) -> str:
    return pyotp.TOTP(SECRET).at(NOW + 30 * offset_steps)


def test_a_code_is_accepted_for_its_step_and_one_either_side_once() -> None:
    step = otp.step_of(NOW)
    assert otp.match_code(SECRET, code_at(0), NOW, -1) == step
    assert otp.match_code(SECRET, code_at(-1), NOW, -1) == step - 1
    assert otp.match_code(SECRET, code_at(1), NOW, -1) == step + 1
    for wrong in (code_at(2), code_at(-2), "000000" if code_at(0) != "000000" else "111111"):
        with pytest.raises(otp.WrongCode):
            otp.match_code(SECRET, wrong, NOW, -1)
    # Once the current step's code was accepted, it (and an older one) is refused.
    with pytest.raises(otp.WrongCode):
        otp.match_code(SECRET, code_at(0), NOW, step)
    with pytest.raises(otp.WrongCode):
        otp.match_code(SECRET, code_at(-1), NOW, step)
    assert otp.match_code(SECRET, code_at(1), NOW, step) == step + 1


@pytest.mark.parametrize("junk", [None, 123456, "12345", "1234567", "12 456", "١٢٣٤٥٦", "abcdef", ""])
def test_junk_codes_are_wrong_codes_and_never_echoed(junk: Any) -> None:
    with pytest.raises(otp.WrongCode) as caught:
        otp.match_code(SECRET, junk, NOW, -1)
    assert str(caught.value) == "wrong one-time code"


def test_recovery_codes_are_random_normalisable_and_digested() -> None:
    codes = otp.new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10 and all(len(c) == 11 and c[5] == "-" for c in codes)
    assert otp.normalise_recovery(codes[0].upper().replace("-", " ")) == codes[0].replace("-", "")
    assert otp.normalise_recovery("not-a-code") is None and otp.normalise_recovery(None) is None
    assert otp.recovery_digest("abcdeabcde") != otp.recovery_digest("abcdeabcdf")


def test_a_new_secret_is_160_bits_and_its_uri_names_the_account() -> None:
    secret = otp.new_secret()
    assert len(secret) == 32 and otp.new_secret() != secret
    uri = otp.provisioning_uri(secret, "alice", "curvemesh")
    assert uri.startswith("otpauth://totp/curvemesh:alice?") and f"secret={secret}" in uri

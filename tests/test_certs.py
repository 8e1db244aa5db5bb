"""Certificates and key files: safe creation, strict loading, validation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from shared import CertificateError, certs
from shared.files import write_exclusive


def test_keypair_files_have_safe_modes_and_round_trip(tmp_path: Path) -> None:
    os.umask(0o000)  # even with a permissive umask the secret file is 0600
    try:
        pair = certs.generate("storage", "service")
        public, secret = certs.save_keypair(pair, tmp_path)
    finally:
        os.umask(0o022)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o600
    loaded = certs.load_keypair(secret)
    assert loaded.certificate == pair.certificate and loaded.secret_key == pair.secret_key
    assert certs.load_certificate(public) == pair.certificate
    assert pair.secret_key.decode() not in repr(loaded)


def test_existing_key_files_are_never_overwritten(tmp_path: Path) -> None:
    certs.save_keypair(certs.generate("storage", "service"), tmp_path)
    with pytest.raises(FileExistsError):
        certs.save_keypair(certs.generate("storage", "service"), tmp_path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    _, secret = certs.save_keypair(certs.generate("audit", "service"), tmp_path)
    os.chmod(secret, mode)
    with pytest.raises(CertificateError, match="must be 0600"):
        certs.load_keypair(secret)


def test_secret_not_matching_its_public_key_is_refused(tmp_path: Path) -> None:
    pair = certs.generate("audit", "service")
    other = certs.generate("audit", "service")
    _, secret = certs.save_keypair(pair, tmp_path)
    text = secret.read_text().replace(pair.secret_key.decode(), other.secret_key.decode())
    secret.unlink()
    write_exclusive(secret, text.encode(), 0o600)
    with pytest.raises(CertificateError, match="does not match") as info:
        certs.load_keypair(secret)
    assert other.secret_key.decode() not in str(info.value)


@pytest.mark.parametrize("key", ["", "short", "0" * 39, "0" * 41, "~" * 40, "\"" * 40])
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(CertificateError):
        certs.check_public_key(key)


def test_all_zero_key_is_refused() -> None:
    zero = zmq.utils.z85.encode(bytes(32)).decode()
    with pytest.raises(CertificateError, match="all zero"):
        certs.check_public_key(zero)


@pytest.mark.parametrize("text", [
    "garbage",
    'metadata\n    name = "x"\n    role = "service"\n',                       # no curve section
    'metadata\n    name = "x"\n    role = "root"\ncurve\n    public-key = "{k}"\n',   # bad role
    'metadata\n    name = "X Y"\n    role = "service"\ncurve\n    public-key = "{k}"\n',  # bad name
    'curve\n    public-key = "{k}"\ncurve\n    public-key = "{k}"\n',           # duplicate section
])
def test_malformed_certificate_files_are_refused(tmp_path: Path, text: str) -> None:
    key = zmq.curve_keypair()[0].decode()
    path = tmp_path / "bad.key"
    path.write_text(text.replace("{k}", key))
    with pytest.raises(CertificateError):
        certs.load_certificate(path)


def test_keys_containing_hash_characters_load(tmp_path: Path) -> None:
    # Z85 includes '#': a comment parser that cut at '#' would corrupt such keys.
    for _ in range(50):
        pair = certs.generate("svc", "service")
        if b"#" in pair.certificate.public_key:
            break
    path = tmp_path / "svc.key"
    certs.save_public(pair.certificate, path)
    assert certs.load_certificate(path) == pair.certificate


def test_fingerprint_is_sha256_of_the_raw_key() -> None:
    import hashlib
    public, _ = zmq.curve_keypair()
    assert certs.fingerprint(public) == hashlib.sha256(zmq.utils.z85.decode(public)).hexdigest()


def test_z85_decoding_without_libzmq_is_pyzmq_s() -> None:
    # Keys are decoded without pyzmq (z85_decode in shared/_certs.py), so that reading a certificate loads no libzmq
    # (issue 13): the same bytes as pyzmq's decoder for every key, and the same errors for what is
    # not Z85, seen through the fingerprint (a hash of the decoded key).
    import hashlib
    import struct

    for _ in range(200):
        text = zmq.utils.z85.encode(os.urandom(32))
        assert certs.fingerprint(text) == hashlib.sha256(zmq.utils.z85.decode(text)).hexdigest()
        assert certs.check_public_key(text) == text
    for text, raw in ((b"HelloWorld", "864fd26fb559f75b"), (b"%nSc0", "ffffffff"), (b"", "")):  # RFC 32's vector
        assert certs.fingerprint(text) == hashlib.sha256(bytes.fromhex(raw)).hexdigest()
    for bad, error in ((b"abcd", ValueError), (b'abc"d', KeyError), (b"#####", struct.error)):
        with pytest.raises(error):
            zmq.utils.z85.decode(bad)
        with pytest.raises(error):
            certs.fingerprint(bad)


def test_a_name_or_key_with_a_trailing_newline_is_refused() -> None:
    # re.match with "$" accepts a final newline; a name is written into certificate files.
    pair = certs.generate("svc", "service")
    with pytest.raises(CertificateError):
        certs.check_name("abc\n")
    with pytest.raises(CertificateError):
        certs.check_public_key(pair.certificate.public_key.decode() + "\n")

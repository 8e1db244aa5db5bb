"""Signed plugin packages (issue 17): the manifest, the canonical content hash, publisher keys,
signing and verification, and staging a directory or an archive, attacked first.

Real Ed25519 keys in tmp_path, real files, real tar archives; nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import BadRequest, CertificateError
from shared.plugins import (
    DEFAULT_REQUIRES,
    LAYERS,
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Capability,
    PackageRefused,
    Quotas,
    content_hash,
    describe_quotas,
    generate_publisher_key,
    load_publisher_key,
    parse_capability,
    parse_manifest,
    parse_publisher_key,
    publisher_key_text,
    sign_package,
    stage_package,
    verify_package,
    version_key,
)

KEY_ID = "acme-2026"
MANIFEST: dict[str, Any] = {
    "name": "notes-summary",
    "version": "1.2.0",
    "publisher": KEY_ID,
    "entry": "plugin",
    "description": "Summarises your notes",
    "capabilities": ["storage.kv:read:summaries", "storage.kv:write:summaries", "userdata:notes:read",
                     "events:subscribe:notes."],
    "quotas": {"memory_mb": 256},
    "sandbox": {"requires": ["rlimits", "no_new_privs", "seccomp", "landlock", "landlock_scope", "netns"]},
}
QUICK = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# -- helpers -----------------------------------------------------------------------------------------


class Publisher:
    """A real publisher key in tmp_path: the private key, its file, and its public key text."""

    def __init__(self, directory: Path, name: str = "publisher") -> None:
        self.path = directory / f"{name}.pem"
        self.text = generate_publisher_key(self.path)
        self.key = load_publisher_key(self.path)
        self.pem = self.path.read_bytes()
        self.raw_private = self.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@pytest.fixture
def acme(tmp_path: Path) -> Publisher:
    keys = tmp_path / "keys"
    keys.mkdir()
    return Publisher(keys)


def write_package(directory: Path, manifest: dict[str, Any] | None = None, **files: bytes) -> Path:
    """A package directory: plugin.toml from ``manifest`` (MANIFEST by default), plugin.py, ``files``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).write_text(tomli_w.dumps(MANIFEST if manifest is None else manifest))
    (directory / "plugin.py").write_bytes(b"def start(host):\n    return 'ready'\n")
    for name, data in files.items():
        path = directory / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


@pytest.fixture
def signed(tmp_path: Path, acme: Publisher) -> Path:
    package = write_package(tmp_path / "pkg", lib__helpers__text=b"def helper():\n    return 1\n")
    sign_package(package, acme.key, KEY_ID)
    return package


def refused(reason: str, action: Callable[[], object]) -> PackageRefused:
    """Run ``action``, expect :class:`PackageRefused` with ``reason``, and return it."""
    with pytest.raises(PackageRefused) as info:
        action()
    assert info.value.reason == reason, str(info.value)
    return info.value


def write_signature(package: Path, key: Ed25519PrivateKey, key_id: str, digest: str, *,
                    message: bytes | None = None) -> None:
    """A plugin.sig made by hand (what a forger, or a careless publisher, could write)."""
    signed_bytes = message if message is not None else (
        b"curvemesh-plugin-signature:v1\n" + key_id.encode() + b"\n" + digest.encode())
    document = {"v": 1, "publisher": key_id, "content_hash": digest,
                "signature": base64.b64encode(key.sign(signed_bytes)).decode()}
    (package / SIGNATURE_FILE).write_text(json.dumps(document))


def trusted(publisher: Publisher, key_id: str = KEY_ID) -> dict[str, str]:
    return {key_id: publisher.text}


# -- sign and verify ---------------------------------------------------------------------------------


def test_a_signed_package_verifies_and_says_who_signed_it(signed: Path, acme: Publisher) -> None:
    verified = verify_package(signed, trusted(acme))
    assert verified.path == signed and verified.publisher == KEY_ID
    assert verified.content_hash == content_hash(signed) and verified.content_hash.startswith("sha256:")
    assert len(verified.content_hash) == len("sha256:") + 64
    raw = parse_publisher_key(acme.text)
    assert verified.publisher_fingerprint == hashlib.sha256(raw).hexdigest()[:16]
    manifest = verified.manifest
    assert (manifest.name, manifest.version, manifest.publisher, manifest.entry) == \
        ("notes-summary", "1.2.0", KEY_ID, "plugin")
    assert [c.text for c in manifest.capabilities] == sorted(MANIFEST["capabilities"])
    assert manifest.quotas == Quotas(memory_mb=256)
    assert manifest.requires == DEFAULT_REQUIRES | {"netns"}
    document = json.loads((signed / SIGNATURE_FILE).read_text())
    assert document.keys() == {"v", "publisher", "content_hash", "signature"} and document["v"] == 1
    assert document["content_hash"] == verified.content_hash and document["publisher"] == KEY_ID
    assert len(base64.b64decode(document["signature"], validate=True)) == 64


def test_signing_again_replaces_the_signature_and_returns_the_hash(signed: Path, acme: Publisher) -> None:
    before = (signed / SIGNATURE_FILE).read_bytes()
    (signed / "plugin.py").write_bytes(b"# version two\n")
    digest = sign_package(signed, acme.key, KEY_ID)
    assert digest == content_hash(signed) and (signed / SIGNATURE_FILE).read_bytes() != before
    assert verify_package(signed, trusted(acme)).content_hash == digest


@pytest.mark.parametrize("change", ["changed", "added", "added_deep", "removed", "executable", "renamed"])
def test_any_change_after_signing_is_tampering(signed: Path, acme: Publisher, change: str) -> None:
    helper = signed / "lib" / "helpers" / "text"
    if change == "changed":
        helper.write_bytes(b"def helper():\n    return 2\n")
    elif change == "added":
        (signed / "extra.py").write_bytes(b"import os\n")
    elif change == "added_deep":
        (signed / "lib" / "helpers" / "__init__.py").write_bytes(b"")
    elif change == "removed":
        helper.unlink()
    elif change == "executable":
        helper.chmod(0o755)
    else:
        helper.rename(signed / "lib" / "helpers" / "text2")
    error = refused("tampered", lambda: verify_package(signed, trusted(acme)))
    assert "added, removed or changed after signing" in str(error)


def test_a_changed_manifest_is_tampering_even_when_it_still_parses(signed: Path, acme: Publisher) -> None:
    wider = {**MANIFEST, "capabilities": [*MANIFEST["capabilities"], "userdata:health:read"]}
    (signed / MANIFEST_FILE).write_text(tomli_w.dumps(wider))
    refused("tampered", lambda: verify_package(signed, trusted(acme)))


def test_empty_directories_carry_no_content(signed: Path, acme: Publisher) -> None:
    (signed / "empty" / "deeper").mkdir(parents=True)
    assert verify_package(signed, trusted(acme)).content_hash == content_hash(signed)


def test_a_package_without_plugin_sig_is_unsigned(signed: Path, acme: Publisher) -> None:
    (signed / SIGNATURE_FILE).unlink()
    error = refused("unsigned", lambda: verify_package(signed, trusted(acme)))
    assert SIGNATURE_FILE in str(error) and "not signed" in str(error)


def test_another_key_under_the_trusted_key_id_is_a_bad_signature(signed: Path, tmp_path: Path) -> None:
    impostor = Publisher(tmp_path / "keys", "impostor")
    sign_package(signed, impostor.key, KEY_ID)  # same key id, another key
    original = Publisher(tmp_path / "keys", "original")
    refused("bad_signature", lambda: verify_package(signed, trusted(original)))
    assert verify_package(signed, trusted(impostor)).publisher == KEY_ID


def test_a_key_id_nobody_listed_is_an_unknown_publisher(signed: Path, acme: Publisher) -> None:
    error = refused("unknown_publisher", lambda: verify_package(signed, {"someone-else": acme.text}))
    assert "[plugins.publishers]" in str(error) and "mesh.toml" in str(error) and KEY_ID in str(error)
    refused("unknown_publisher", lambda: verify_package(signed, {}))


def test_the_manifest_must_name_the_key_that_signed(tmp_path: Path, acme: Publisher) -> None:
    """A valid signature by a trusted key, over the right content, of a manifest that claims another
    publisher: the trusted publisher cannot publish in someone else's name."""
    other = Publisher(tmp_path / "keys", "other")
    package = write_package(tmp_path / "pkg")  # the manifest says KEY_ID
    write_signature(package, other.key, "other", content_hash(package))
    error = refused("bad_signature", lambda: verify_package(package, {KEY_ID: acme.text, "other": other.text}))
    assert "names publisher" in str(error)
    with pytest.raises(PackageRefused, match="must match"):  # and the publisher's tool refuses to make one
        sign_package(package, other.key, "other")


def test_a_signature_moved_to_another_key_id_does_not_verify(signed: Path, acme: Publisher) -> None:
    """The key id is signed: the same key listed under two ids does not let one id's signature pass
    as the other's."""
    document = json.loads((signed / SIGNATURE_FILE).read_text())
    document["publisher"] = "acme-old"
    (signed / SIGNATURE_FILE).write_text(json.dumps(document))
    refused("bad_signature", lambda: verify_package(signed, {KEY_ID: acme.text, "acme-old": acme.text}))


def test_a_signature_over_anything_but_the_domain_separated_message_never_verifies(
        tmp_path: Path, acme: Publisher) -> None:
    package = write_package(tmp_path / "pkg")
    digest = content_hash(package)
    for message in (digest.encode(), KEY_ID.encode() + b"\n" + digest.encode(),
                    b"curvemesh-plugin-signature:v2\n" + KEY_ID.encode() + b"\n" + digest.encode(),
                    b"curvemesh-plugin-content:v1\n" + KEY_ID.encode() + b"\n" + digest.encode()):
        write_signature(package, acme.key, KEY_ID, digest, message=message)
        refused("bad_signature", lambda: verify_package(package, trusted(acme)))
    write_signature(package, acme.key, KEY_ID, digest)
    assert verify_package(package, trusted(acme)).content_hash == digest


def _signature_variants() -> list[tuple[str, bytes | None]]:
    good = {"v": 1, "publisher": KEY_ID, "content_hash": "sha256:" + "a" * 64,
            "signature": base64.b64encode(bytes(64)).decode()}

    def dumped(**changes: Any) -> bytes:
        document = {**good, **changes}
        return json.dumps({k: v for k, v in document.items() if v is not None}).encode()

    return [
        ("not json", b"{not json"),
        ("not utf-8", b"\xff\xfe{}"),
        ("a list", b"[1, 2]"),
        ("empty", b""),
        ("missing signature", dumped(signature=None)),
        ("extra key", json.dumps({**good, "note": "hi"}).encode()),
        ("version 2", dumped(v=2)),
        ("version true", dumped(v=True)),
        ("version string", dumped(v="1")),
        ("bad key id", dumped(publisher="Acme Corp")),
        ("key id not a string", dumped(publisher=7)),
        ("upper-case hash", dumped(content_hash="sha256:" + "A" * 64)),
        ("short hash", dumped(content_hash="sha256:" + "a" * 63)),
        ("md5 hash", dumped(content_hash="md5:" + "a" * 32)),
        ("signature not base64", dumped(signature="!!!!")),
        ("signature too short", dumped(signature=base64.b64encode(bytes(63)).decode())),
        ("signature url-safe alphabet", dumped(signature=base64.urlsafe_b64encode(b"\xfb" * 64).decode())),
        ("huge", b" " * 10_000 + dumped()),
        ("deeply nested", b"[" * 2000 + b"]" * 2000),
        ("a directory", None),
    ]


@pytest.mark.parametrize("case, data", _signature_variants(), ids=[c for c, _ in _signature_variants()])
def test_a_malformed_signature_file_is_a_bad_signature(signed: Path, acme: Publisher, case: str,
                                                       data: bytes | None) -> None:
    sig = signed / SIGNATURE_FILE
    sig.unlink()
    if data is None:
        sig.mkdir()
    else:
        sig.write_bytes(data)
    refused("bad_signature", lambda: verify_package(signed, trusted(acme)))


_SIG_DOCUMENTS = st.fixed_dictionaries({}, optional={
    "v": st.integers() | st.booleans() | st.text(max_size=3), "publisher": st.text(max_size=20) | st.just(KEY_ID),
    "content_hash": st.text(max_size=80), "signature": st.text(max_size=100)})


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600) | _SIG_DOCUMENTS.map(lambda d: json.dumps(d).encode()))
def test_arbitrary_signature_bytes_are_only_ever_refused(signed: Path, acme: Publisher, data: bytes) -> None:
    """The same signed package with ``plugin.sig`` replaced by anything: refused, with a reason of the
    signature's, never an uncaught error (and never accepted)."""
    (signed / SIGNATURE_FILE).write_bytes(data)
    with pytest.raises(PackageRefused) as info:
        verify_package(signed, trusted(acme))
    assert info.value.reason in ("bad_signature", "unknown_publisher", "tampered")


@QUICK
@given(st.text(max_size=60) | st.binary(max_size=40).map(lambda raw: "ed25519:" + base64.b64encode(raw).decode()))
def test_publisher_key_text_only_ever_parses_or_refuses(text: str) -> None:
    try:
        raw = parse_publisher_key(text)
    except PackageRefused as exc:
        assert exc.reason == "unknown_publisher"
    else:
        assert len(raw) == 32 and publisher_key_text(raw) == text


def test_a_signature_file_that_is_a_symlink_is_not_followed(signed: Path, acme: Publisher, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.sig"
    (signed / SIGNATURE_FILE).rename(real)
    (signed / SIGNATURE_FILE).symlink_to(real)
    refused("bad_signature", lambda: verify_package(signed, trusted(acme)))


def test_a_manifest_refused_after_the_signature_checks_is_a_bad_manifest(tmp_path: Path, acme: Publisher) -> None:
    """A correctly signed package whose manifest is wrong (an older publisher tool, a hand-made
    signature) is still refused: the signature vouches for the bytes, not for their sense."""
    no_entry = write_package(tmp_path / "no-entry")
    (no_entry / "plugin.py").unlink()
    write_signature(no_entry, acme.key, KEY_ID, content_hash(no_entry))
    error = refused("bad_manifest", lambda: verify_package(no_entry, trusted(acme)))
    assert "plugin.py" in str(error) and "entry" in str(error)
    refused("bad_manifest", lambda: sign_package(no_entry, acme.key, KEY_ID))
    bad = write_package(tmp_path / "bad", {**MANIFEST, "capabilities": ["userdata:notes:delete"]})
    write_signature(bad, acme.key, KEY_ID, content_hash(bad))
    assert "capabilities[0]" in str(refused("bad_manifest", lambda: verify_package(bad, trusted(acme))))


def test_a_package_without_a_manifest_is_refused(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    (package / MANIFEST_FILE).unlink()
    (package / "sub").mkdir()
    (package / "sub" / MANIFEST_FILE).write_text(tomli_w.dumps(MANIFEST))  # only the top one counts
    assert MANIFEST_FILE in str(refused("bad_manifest", lambda: content_hash(package)))


def test_a_missing_package_is_not_found(tmp_path: Path, acme: Publisher) -> None:
    refused("not_found", lambda: content_hash(tmp_path / "nothing"))
    refused("unsigned", lambda: verify_package(tmp_path / "nothing", trusted(acme)))


def test_a_publisher_key_that_does_not_parse_is_refused_when_verifying(signed: Path, acme: Publisher) -> None:
    refused("unknown_publisher", lambda: verify_package(signed, {KEY_ID: "ed25519:short"}))


def test_package_refused_is_a_bad_request_with_a_known_reason() -> None:
    assert issubclass(PackageRefused, BadRequest) and PackageRefused.code == "BAD_REQUEST"
    with pytest.raises(ValueError):
        PackageRefused("nope", "a reason outside the list is a bug")


# -- the canonical content hash ----------------------------------------------------------------------


def test_the_content_hash_is_exactly_the_documented_format(tmp_path: Path) -> None:
    """An independent computation of the format (so a publisher's tool in another language can
    match it): sorted bytewise by path, so "a-c" comes before "a/b"; the executable flag and size
    are in the line; the top-level plugin.sig is left out, a deeper one is not."""
    package = write_package(tmp_path / "pkg", **{"a__b": b"inner", "a-c": b"dash", "run.sh": b"#!/bin/sh\n",
                                                 "sub__plugin.sig": b"content", "\u00e9t\u00e9.txt": b"summer"})
    (package / "run.sh").chmod(0o700)
    (package / SIGNATURE_FILE).write_text("not part of the content")
    files = sorted((p.relative_to(package).as_posix(), p) for p in package.rglob("*")
                   if p.is_file() and p.relative_to(package).as_posix() != SIGNATURE_FILE)
    files.sort(key=lambda item: item[0].encode("utf-8"))
    assert [rel for rel, _ in files].index("a-c") < [rel for rel, _ in files].index("a/b")
    lines = b"".join(
        f"{rel}\0{'x' if p.stat().st_mode & stat.S_IXUSR else '-'}\0{p.stat().st_size}\0"
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode() for rel, p in files)
    expected = "sha256:" + hashlib.sha256(b"curvemesh-plugin-content:v1\n" + lines).hexdigest()
    assert content_hash(package) == expected


def test_the_owner_executable_bit_changes_the_hash_and_other_mode_bits_do_not(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    script = package / "plugin.py"
    script.chmod(0o644)
    plain = content_hash(package)
    script.chmod(0o600)
    assert content_hash(package) == plain
    script.chmod(0o744)
    assert content_hash(package) != plain
    script.chmod(0o655)  # executable by group and others, not by the owner
    assert content_hash(package) == plain


def test_a_symlink_anywhere_is_refused_and_never_followed(tmp_path: Path, acme: Publisher) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text("the host's file")
    for where in ("passwd", "lib/deep/passwd"):
        package = write_package(tmp_path / f"pkg-{where.count('/')}")
        link = package / where
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/etc/passwd")
        error = refused("unsafe_package", lambda package=package: content_hash(package))
        assert "symbolic link" in str(error) and "root:" not in str(error)
        refused("unsafe_package", lambda package=package: sign_package(package, acme.key, KEY_ID))
    package = write_package(tmp_path / "pkg-dir")
    (package / "lib").symlink_to(outside, target_is_directory=True)
    refused("unsafe_package", lambda: content_hash(package))
    real = write_package(tmp_path / "real")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    refused("unsafe_package", lambda: content_hash(tmp_path / "alias"))


def test_fifos_and_sockets_are_refused_without_being_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = write_package(tmp_path / "p")
    os.mkfifo(package / "pipe")  # opening it for reading would block forever
    assert "fifo" in str(refused("unsafe_package", lambda: content_hash(package)))
    (package / "pipe").unlink()
    monkeypatch.chdir(package)  # a short relative path: AF_UNIX paths are short
    with socket.socket(socket.AF_UNIX) as server:
        server.bind("sock")
        assert "socket" in str(refused("unsafe_package", lambda: content_hash(package)))


@pytest.mark.parametrize("name", ["bad\nname.py", "tab\there", "\u202egnp.py", "nul\x7f", "..hidden",
                                  "...", "ok/..sub/x.py", "nbsp\u00a0.py"])
def test_unsafe_names_are_refused(tmp_path: Path, name: str) -> None:
    package = write_package(tmp_path / "pkg")
    path = package / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    refused("unsafe_package", lambda: content_hash(package))


def test_a_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    fd = os.open(os.fsencode(package) + b"/\xff\xfe.py", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    refused("unsafe_package", lambda: content_hash(package))


def test_too_many_files_is_too_large(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    for i in range(999):  # with plugin.toml and plugin.py: 1001
        (package / f"f{i}").write_bytes(b"")
    assert "1000 files" in str(refused("too_large", lambda: content_hash(package)))
    (package / "f0").unlink()
    assert content_hash(package).startswith("sha256:")


def test_a_file_or_a_package_over_the_limits_is_too_large(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    with open(package / "big.bin", "wb") as big:  # sparse: sizes are checked before reading
        big.truncate((16 << 20) + 1)
    assert "16 MiB" in str(refused("too_large", lambda: content_hash(package)))
    (package / "big.bin").unlink()
    for i in range(5):
        with open(package / f"part{i}.bin", "wb") as part:
            part.truncate(15 << 20)
    assert "64 MiB" in str(refused("too_large", lambda: content_hash(package)))


def test_too_deep_is_too_large(tmp_path: Path) -> None:
    package = write_package(tmp_path / "pkg")
    (package.joinpath(*["d"] * 40)).mkdir(parents=True)
    refused("too_large", lambda: content_hash(package))


# -- publisher keys ----------------------------------------------------------------------------------


def test_a_publisher_key_file_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "publisher.pem"
    text = generate_publisher_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    before = path.read_bytes()
    with pytest.raises(CertificateError, match="already exists") as info:
        generate_publisher_key(path)
    assert path.read_bytes() == before and "BEGIN" not in str(info.value)
    key = load_publisher_key(path)
    assert publisher_key_text(key.public_key().public_bytes(Encoding.Raw, __import__(
        "cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"]).PublicFormat.Raw)) == text


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o700])
def test_a_key_file_others_may_reach_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "publisher.pem"
    generate_publisher_key(path)
    path.chmod(mode)
    if mode & 0o077:
        with pytest.raises(CertificateError, match="group or others") as info:
            load_publisher_key(path)
        assert "PRIVATE KEY" not in str(info.value) and f"{mode:04o}" in str(info.value)
    else:
        load_publisher_key(path)


def test_a_key_file_that_is_a_link_or_not_a_key_is_refused(tmp_path: Path, acme: Publisher) -> None:
    link = tmp_path / "link.pem"
    link.symlink_to(acme.path)
    with pytest.raises(CertificateError, match="symlink"):
        load_publisher_key(link)
    wrong = tmp_path / "wrong.pem"
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption
    x25519 = X25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    encrypted = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                          BestAvailableEncryption(b"passphrase"))
    for data in (x25519, encrypted, b"garbage", acme.pem[:-40], acme.pem * 40):
        wrong.unlink(missing_ok=True)
        wrong.write_bytes(data)
        wrong.chmod(0o600)
        with pytest.raises(CertificateError, match="not an unencrypted PKCS#8 Ed25519") as info:
            load_publisher_key(wrong)
        assert "BEGIN" not in str(info.value)
    with pytest.raises(CertificateError, match="cannot be read"):
        load_publisher_key(tmp_path / "absent.pem")


@pytest.mark.parametrize("text", [
    "", "ed25519:", "ed25519:" + "A" * 43 + "=", "ED25519:" + base64.b64encode(b"\x01" * 32).decode(),
    "x25519:" + base64.b64encode(b"\x01" * 32).decode(), "ed25519:" + base64.b64encode(b"\x01" * 31).decode(),
    "ed25519:" + base64.b64encode(b"\x01" * 33).decode(), "ed25519:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
    "ed25519:" + base64.b64encode(b"\x01" * 32).decode()[:-1], " ed25519:" + base64.b64encode(b"\x01" * 32).decode(),
    "ed25519:" + base64.b64encode(b"\x01" * 32).decode()[:-2] + "B=",  # non-canonical trailing bits
])
def test_publisher_key_text_is_exactly_ed25519_base64_of_32_bytes(text: str) -> None:
    refused("unknown_publisher", lambda: parse_publisher_key(text))


def test_publisher_key_text_round_trips() -> None:
    raw = bytes(range(1, 33))
    assert parse_publisher_key(publisher_key_text(raw)) == raw
    with pytest.raises(ValueError):
        publisher_key_text(b"short")


def test_no_message_ever_carries_key_material(tmp_path: Path, acme: Publisher) -> None:
    """The private key, planted where a careless publisher or operator might paste it (the
    signature file, the manifest, the publishers table, a key file open to others), never comes
    back in an error message."""
    pem_text = acme.pem.decode()
    body = "".join(pem_text.splitlines()[1:-1])
    secrets = [pem_text, body, body[:24], acme.raw_private.hex(), base64.b64encode(acme.raw_private).decode()]
    messages: list[str] = []
    package = write_package(tmp_path / "pkg")
    (package / SIGNATURE_FILE).write_bytes(acme.pem)
    messages.append(str(refused("bad_signature", lambda: verify_package(package, trusted(acme)))))
    (package / SIGNATURE_FILE).write_bytes(json.dumps({"v": 1, "publisher": KEY_ID, "content_hash": "x",
                                                       "signature": body}).encode())
    messages.append(str(refused("bad_signature", lambda: verify_package(package, trusted(acme)))))
    (package / MANIFEST_FILE).write_bytes(acme.pem)
    messages.append(str(refused("bad_manifest", lambda: parse_manifest(pem_text))))
    messages.append(str(refused("unknown_publisher", lambda: parse_publisher_key(pem_text))))
    messages.append(str(refused("unknown_publisher", lambda: parse_publisher_key("ed25519:" + body))))
    sign_free = write_package(tmp_path / "other")
    sign_package(sign_free, acme.key, KEY_ID)
    messages.append(str(refused("unknown_publisher", lambda: verify_package(sign_free, {KEY_ID: pem_text}))))
    acme.path.chmod(0o644)
    with pytest.raises(CertificateError) as info:
        load_publisher_key(acme.path)
    messages.append(str(info.value))
    for message in messages:
        for secret in secrets:
            assert secret not in message, message


# -- the manifest ------------------------------------------------------------------------------------


def manifest_with(**changes: Any) -> str:
    document = {**MANIFEST, **changes}
    return tomli_w.dumps({k: v for k, v in document.items() if v is not None})


def test_the_documented_manifest_parses() -> None:
    manifest = parse_manifest(manifest_with())
    assert manifest.description == "Summarises your notes" and manifest.entry_file == "plugin.py"
    minimal = parse_manifest(manifest_with(description=None, capabilities=None, quotas=None, sandbox=None))
    assert minimal.description == "" and minimal.capabilities == () and minimal.quotas == Quotas()
    assert minimal.requires == DEFAULT_REQUIRES


def test_capabilities_are_deduplicated_and_sorted() -> None:
    manifest = parse_manifest(manifest_with(capabilities=["userdata:notes:read", "events:subscribe:a.",
                                                          "userdata:notes:read"]))
    assert [c.text for c in manifest.capabilities] == ["events:subscribe:a.", "userdata:notes:read"]


def test_quotas_take_every_key_within_bounds() -> None:
    low = {"memory_mb": 32, "cpu_s": 1, "open_files": 16, "file_size_mb": 1, "processes": 1, "scratch_mb": 1,
           "call_timeout_s": 0.1}
    high = {"memory_mb": 4096, "cpu_s": 3600, "open_files": 1024, "file_size_mb": 1024, "processes": 256,
            "scratch_mb": 1024, "call_timeout_s": 600}
    assert parse_manifest(manifest_with(quotas=low)).quotas == Quotas(**low)
    quotas = parse_manifest(manifest_with(quotas=high)).quotas
    assert quotas == Quotas(**high) and isinstance(quotas.call_timeout_s, float)
    lines = describe_quotas(quotas)
    assert len(lines) == 7 and "4096 MiB" in lines[0] and all(isinstance(line, str) for line in lines)


@pytest.mark.parametrize("changes, named", [
    ({"name": ""}, "name"), ({"name": "Notes"}, "name"), ({"name": "1notes"}, "name"),
    ({"name": "notes_summary"}, "name"), ({"name": "n" * 33}, "name"), ({"name": "notes summary"}, "name"),
    ({"name": 5}, "name"), ({"name": None}, "name: missing"),
    ({"version": "1.2"}, "version"), ({"version": "01.2.3"}, "version"), ({"version": "1.02.3"}, "version"),
    ({"version": "1.2.3-rc1"}, "version"), ({"version": "1.2.3+build5"}, "version"), ({"version": "v1.2.3"}, "version"),
    ({"version": "1.2.3.4"}, "version"), ({"version": ""}, "version"), ({"version": "1234567890.0.0"}, "version"),
    ({"version": "1.2.3\n"}, "version"), ({"version": "\uff11.2.3"}, "version"), ({"version": 1.2}, "version"),
    ({"publisher": "Acme"}, "publisher"), ({"publisher": "-acme"}, "publisher"), ({"publisher": ""}, "publisher"),
    ({"publisher": "a" * 65}, "publisher"), ({"publisher": "acme 2026"}, "publisher"),
    ({"publisher": None}, "publisher: missing"),
    ({"entry": "1plugin"}, "entry"), ({"entry": "plugin.main"}, "entry"), ({"entry": "plugin-x"}, "entry"),
    ({"entry": "class"}, "entry"), ({"entry": "os"}, "entry"), ({"entry": "json"}, "entry"), ({"entry": ""}, "entry"),
    ({"entry": "e" * 65}, "entry"), ({"entry": "plugin.py"}, "entry"), ({"entry": None}, "entry: missing"),
    ({"description": "d" * 201}, "description"), ({"description": "two\nlines"}, "description"),
    ({"description": "tab\there"}, "description"), ({"description": 3}, "description"),
    ({"permissions": ["all"]}, "unknown key 'permissions'"),
    ({"capabilities": ["userdata:notes:delete"]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:read:../x"]}, "capabilities[0]"),
    ({"capabilities": ["events:subscribe:notes. x"]}, "capabilities[0]"),
    ({"capabilities": ["events:subscribe:"]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:delete:x"]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:read:Notes"]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:read:" + "c" * 33]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:read:notes", "userdata:notes"]}, "capabilities[1]"),
    ({"capabilities": ["network:connect:example.com"]}, "capabilities[0]"),
    ({"capabilities": [" storage.kv:read:notes"]}, "capabilities[0]"),
    ({"capabilities": ["storage.kv:read:notes:extra"]}, "capabilities[0]"),
    ({"capabilities": [5]}, "capabilities[0]"), ({"capabilities": "storage.kv:read:notes"}, "capabilities"),
    ({"capabilities": [f"storage.kv:read:c{i}" for i in range(65)]}, "capabilities: at most 64"),
    ({"quotas": {"memory_mb": 31}}, "quotas.memory_mb"), ({"quotas": {"memory_mb": 4097}}, "quotas.memory_mb"),
    ({"quotas": {"memory_mb": "256"}}, "quotas.memory_mb"), ({"quotas": {"memory_mb": True}}, "quotas.memory_mb"),
    ({"quotas": {"memory_mb": 256.0}}, "quotas.memory_mb"), ({"quotas": {"cpu_s": 0}}, "quotas.cpu_s"),
    ({"quotas": {"cpu_s": 3601}}, "quotas.cpu_s"), ({"quotas": {"open_files": 15}}, "quotas.open_files"),
    ({"quotas": {"open_files": 1025}}, "quotas.open_files"), ({"quotas": {"file_size_mb": 0}}, "quotas.file_size_mb"),
    ({"quotas": {"file_size_mb": 1025}}, "quotas.file_size_mb"), ({"quotas": {"processes": 0}}, "quotas.processes"),
    ({"quotas": {"processes": 257}}, "quotas.processes"), ({"quotas": {"scratch_mb": 0}}, "quotas.scratch_mb"),
    ({"quotas": {"scratch_mb": 1025}}, "quotas.scratch_mb"),
    ({"quotas": {"call_timeout_s": 0.05}}, "quotas.call_timeout_s"),
    ({"quotas": {"call_timeout_s": 601}}, "quotas.call_timeout_s"),
    ({"quotas": {"call_timeout_s": float("nan")}}, "quotas.call_timeout_s"),
    ({"quotas": {"call_timeout_s": float("inf")}}, "quotas.call_timeout_s"),
    ({"quotas": {"gpu": 1}}, "quotas: unknown key 'gpu'"), ({"quotas": [1]}, "quotas"),
    ({"sandbox": {"requires": [*sorted(DEFAULT_REQUIRES), "gpu"]}}, "sandbox.requires: unknown sandbox layer 'gpu'"),
    ({"sandbox": {"requires": []}}, "sandbox.requires: leaves out"),
    ({"sandbox": {"requires": ["rlimits", "no_new_privs", "landlock"]}}, "leaves out seccomp"),
    ({"sandbox": {"requires": "netns"}}, "sandbox.requires"),
    ({"sandbox": {"allow": ["network"]}}, "sandbox: unknown key 'allow'"), ({"sandbox": ["netns"]}, "sandbox"),
])
def test_every_bad_manifest_value_is_refused_naming_the_key(changes: dict[str, Any], named: str) -> None:
    error = refused("bad_manifest", lambda: parse_manifest(manifest_with(**changes), source="pkg/plugin.toml"))
    assert str(error).startswith("pkg/plugin.toml: ") and named in str(error), str(error)


def test_a_bad_capability_names_the_forms() -> None:
    message = str(refused("bad_manifest", lambda: parse_capability("userdata:notes:delete")))
    assert all(form in message for form in ("storage.kv:read:<category>", "events:subscribe:<topic prefix>",
                                            "userdata:<category>:write"))


def test_manifest_text_that_is_not_toml_or_too_big_is_refused() -> None:
    assert "not valid TOML" in str(refused("bad_manifest", lambda: parse_manifest("name = ")))
    refused("bad_manifest", lambda: parse_manifest("#" * 70_000))
    refused("bad_manifest", lambda: parse_manifest("x = " + "[" * 5000 + "]" * 5000))


def test_capabilities_in_plain_words() -> None:
    words = {text: parse_capability(text).words() for text in (
        "storage.kv:read:notes", "storage.kv:write:notes", "events:subscribe:notes.", "userdata:notes:read",
        "userdata:notes:write")}
    assert words == {
        "storage.kv:read:notes": "read its own storage in category notes",
        "storage.kv:write:notes": "write its own storage in category notes",
        "events:subscribe:notes.": "receive events on topics starting with notes.",
        "userdata:notes:read": "read your notes (needs your consent)",
        "userdata:notes:write": "write your notes (needs your consent)",
    }
    assert parse_capability("userdata:notes:write") == Capability("userdata", "write", "notes",
                                                                    "userdata:notes:write")


def test_versions_order_by_number_not_by_text() -> None:
    assert version_key("1.10.0") > version_key("1.9.9") > version_key("1.9.0") > version_key("0.99.99")
    assert version_key("0.0.0") == (0, 0, 0) and version_key("10.0.1") == (10, 0, 1)
    for bad in ("1.2", "01.2.3", "1.2.3-rc1", "", " 1.2.3"):
        refused("bad_manifest", lambda bad=bad: version_key(bad))


def test_layers_and_default_requires() -> None:
    assert DEFAULT_REQUIRES <= set(LAYERS) and len(set(LAYERS)) == len(LAYERS) == 8


@QUICK
@given(st.text(max_size=80))
def test_parse_capability_only_ever_refuses(text: str) -> None:
    try:
        grant = parse_capability(text)
    except PackageRefused as exc:
        assert exc.reason == "bad_manifest"
    else:
        assert grant.text == text and parse_capability(grant.text) == grant


@QUICK
@given(st.text(max_size=400))
def test_parse_manifest_only_ever_refuses_arbitrary_text(text: str) -> None:
    try:
        parse_manifest(text)
    except PackageRefused as exc:
        assert exc.reason == "bad_manifest"


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
    | st.sampled_from(["1.2.0", "notes", "plugin", KEY_ID, "storage.kv:read:notes", "rlimits"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)


@QUICK
@given(st.dictionaries(st.sampled_from([*MANIFEST, "other"]) | st.text(max_size=8), _VALUES, max_size=9),
       st.booleans())
def test_parse_manifest_only_ever_refuses_arbitrary_tables(changes: dict[str, Any], on_valid: bool) -> None:
    """Structured fuzzing: a valid manifest with some keys replaced by arbitrary values (or a table of
    arbitrary keys), so the checks past the TOML parser are reached."""
    document = {**MANIFEST, **changes} if on_valid else changes
    try:
        text = tomli_w.dumps({k: v for k, v in document.items() if v is not None})
    except (TypeError, ValueError):
        return  # not representable in TOML (None in a list)
    try:
        parse_manifest(text)
    except PackageRefused as exc:
        assert exc.reason == "bad_manifest"


# -- staging: directories ----------------------------------------------------------------------------


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    area = tmp_path / "staging"
    area.mkdir(mode=0o700)
    return area


def assert_untouched(staging: Path, tmp_path: Path, before: set[Path]) -> None:
    """Nothing left in staging, and nothing new anywhere else under tmp_path."""
    assert list(staging.iterdir()) == []
    assert set(tmp_path.rglob("*")) == before


def test_staging_a_directory_copies_it_privately_and_it_still_verifies(signed: Path, acme: Publisher,
                                                                        staging: Path) -> None:
    (signed / "plugin.py").chmod(0o755)
    sign_package(signed, acme.key, KEY_ID)
    staged = stage_package(signed, staging)
    assert staged.parent == staging
    assert verify_package(staged, trusted(acme)).content_hash == content_hash(signed)
    assert stat.S_IMODE((staged / "plugin.py").stat().st_mode) == 0o500
    assert stat.S_IMODE((staged / MANIFEST_FILE).stat().st_mode) == 0o400
    assert stat.S_IMODE((staged / "lib" / "helpers").stat().st_mode) == 0o700
    assert stat.S_IMODE(staged.stat().st_mode) == 0o700
    assert (staged / SIGNATURE_FILE).read_bytes() == (signed / SIGNATURE_FILE).read_bytes()


def test_staging_refuses_a_symlink_at_any_depth_and_leaves_nothing(signed: Path, staging: Path,
                                                                   tmp_path: Path) -> None:
    (signed / "lib" / "helpers" / "passwd").symlink_to("/etc/passwd")
    before = set(tmp_path.rglob("*"))
    refused("unsafe_package", lambda: stage_package(signed, staging))
    assert_untouched(staging, tmp_path, before)
    (signed / "lib" / "helpers" / "passwd").unlink()
    link = tmp_path / "link-to-package"
    link.symlink_to(signed, target_is_directory=True)
    refused("unsafe_package", lambda: stage_package(link, staging))


def test_staging_refuses_what_is_not_a_package(tmp_path: Path, staging: Path, signed: Path) -> None:
    refused("not_found", lambda: stage_package(tmp_path / "missing.tar.gz", staging))
    (tmp_path / "plugin.zip").write_bytes(b"PK\x03\x04")
    assert ".tar.gz" in str(refused("unsafe_package", lambda: stage_package(tmp_path / "plugin.zip", staging)))
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    refused("unsafe_package", lambda: stage_package(tmp_path / "broken.tar.gz", staging))
    (tmp_path / "broken.tar").write_bytes(b"not a tar at all" * 64)
    refused("unsafe_package", lambda: stage_package(tmp_path / "broken.tar", staging))
    assert list(staging.iterdir()) == []


def test_the_staging_directory_must_be_empty_and_private(tmp_path: Path, signed: Path, staging: Path) -> None:
    (staging / "left-over").write_text("x")
    refused("unsafe_package", lambda: stage_package(signed, staging))
    open_area = tmp_path / "open"
    open_area.mkdir()
    open_area.chmod(0o777)
    refused("unsafe_package", lambda: stage_package(signed, open_area))
    (tmp_path / "area-link").symlink_to(open_area, target_is_directory=True)
    refused("unsafe_package", lambda: stage_package(signed, tmp_path / "area-link"))


# -- staging: archives -------------------------------------------------------------------------------


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = True) -> bytes:
    """A tar archive of exactly ``members`` (header, data), built by hand so it can hold anything."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, data: bytes = b"x", *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info, (data if kind == tarfile.REGTYPE else None)


def package_members(prefix: str = "") -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [member(prefix + MANIFEST_FILE, tomli_w.dumps(MANIFEST).encode()),
            member(prefix + "plugin.py", b"def start(host):\n    return 'ready'\n", mode=0o755)]


@pytest.mark.parametrize("suffix, prefix", [(".tar.gz", "notes-summary/"), (".tgz", ""), (".tar", "./"),
                                            (".tar.gz", "./notes/")])
def test_an_archive_stages_to_the_same_content_as_its_directory(tmp_path: Path, acme: Publisher, staging: Path,
                                                                suffix: str, prefix: str) -> None:
    directory = write_package(tmp_path / "pkg")
    (directory / "plugin.py").chmod(0o755)
    digest = sign_package(directory, acme.key, KEY_ID)
    members = [*([member(prefix.rstrip("/"), kind=tarfile.DIRTYPE, mode=0o755)] if prefix.strip("./") else []),
               *package_members(prefix),
               member(prefix + SIGNATURE_FILE, (directory / SIGNATURE_FILE).read_bytes())]
    archive = tmp_path / f"notes{suffix}"
    archive.write_bytes(tar_bytes(members, compress=suffix != ".tar"))
    staged = stage_package(archive, staging)
    assert verify_package(staged, trusted(acme)).content_hash == digest
    assert stat.S_IMODE((staged / "plugin.py").stat().st_mode) == 0o500
    assert stat.S_IMODE((staged / MANIFEST_FILE).stat().st_mode) == 0o400


def test_two_top_level_entries_are_not_descended_into(tmp_path: Path, staging: Path) -> None:
    archive = tmp_path / "p.tar.gz"
    archive.write_bytes(tar_bytes([*package_members("a/"), member("b/readme", b"hi")]))
    staged = stage_package(archive, staging)
    assert sorted(p.name for p in staged.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("case, bad", [
    ("parent", member("../evil", b"owned")),
    ("parent deep", member("pkg/../../evil", b"owned")),
    ("absolute", member("/tmp/curvemesh-evil-absolute", b"owned")),
    ("dotdot name", member("..evil", b"owned")),
    ("symlink", member("pkg/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd")),
    ("relative symlink", member("pkg/up", kind=tarfile.SYMTYPE, link="../../..")),
    ("hardlink", member("pkg/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd")),
    ("hardlink inside", member("pkg/copy", kind=tarfile.LNKTYPE, link="pkg/plugin.py")),
    ("char device", member("pkg/null", kind=tarfile.CHRTYPE)),
    ("block device", member("pkg/sda", kind=tarfile.BLKTYPE)),
    ("fifo", member("pkg/pipe", kind=tarfile.FIFOTYPE)),
    ("control character", member("pkg/bad\nname", b"x")),
    ("duplicate", member("pkg/plugin.py", b"second copy")),
    ("file over a directory", member("pkg", b"file where the directory is")),
])
def test_a_hostile_archive_is_refused_and_writes_nothing(tmp_path: Path, staging: Path, case: str,
                                                         bad: tuple[tarfile.TarInfo, bytes | None]) -> None:
    archive = tmp_path / "hostile.tar.gz"
    archive.write_bytes(tar_bytes([*package_members("pkg/"), bad]))
    before = set(tmp_path.rglob("*"))
    refused("unsafe_package", lambda: stage_package(archive, staging))
    assert_untouched(staging, tmp_path, before)
    assert not Path("/tmp/curvemesh-evil-absolute").exists()


def test_a_hostile_member_first_is_refused_too(tmp_path: Path, staging: Path) -> None:
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(tar_bytes([member("../evil", b"owned"), *package_members()], compress=False))
    refused("unsafe_package", lambda: stage_package(archive, staging))
    assert not (tmp_path / "evil").exists() and list(staging.iterdir()) == []


def test_an_archive_over_the_limits_is_too_large(tmp_path: Path, staging: Path) -> None:
    before = set(tmp_path.rglob("*"))
    many = tmp_path / "many.tar.gz"
    many.write_bytes(tar_bytes([*package_members(), *(member(f"f{i}", b"") for i in range(999))]))
    before.add(many)
    assert "1000 files" in str(refused("too_large", lambda: stage_package(many, staging)))
    big = tmp_path / "big.tar.gz"
    big.write_bytes(tar_bytes([*package_members(), member("big.bin", bytes((16 << 20) + 1))]))
    before.add(big)
    assert "16 MiB" in str(refused("too_large", lambda: stage_package(big, staging)))
    total = tmp_path / "total.tar.gz"
    total.write_bytes(tar_bytes([*package_members(), *(member(f"p{i}", bytes(15 << 20)) for i in range(5))]))
    before.add(total)
    assert "64 MiB" in str(refused("too_large", lambda: stage_package(total, staging)))
    assert_untouched(staging, tmp_path, before)


def test_a_decompression_bomb_is_refused_before_it_is_unpacked(tmp_path: Path, staging: Path) -> None:
    import gzip

    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as out:
        chunk = bytes(1 << 20)
        for _ in range(100):
            out.write(chunk)
    assert "decompresses to more than" in str(refused("too_large", lambda: stage_package(bomb, staging)))
    assert list(staging.iterdir()) == []

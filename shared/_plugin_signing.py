"""Signing a package and verifying it: ``plugin.sig``.

``plugin.sig`` is JSON, ``{"v": 1, "publisher": "<key id>", "content_hash": "sha256:<64 hex>",
"signature": "<standard base64 of 64 bytes>"}``, exactly these keys. The signature is Ed25519 by the
publisher's key over ``curvemesh-plugin-signature:v1 LF <key id> LF <content hash>``: the key id is
signed too, so a signature cannot be moved under another id, and the domain prefix keeps a
signature over anything else (a token, another format) from ever verifying here.

:func:`verify_package` checks, in this order, and refuses with :class:`PackageRefused` at the first
failure: ``plugin.sig`` present (``unsigned``) and well-formed (``bad_signature``); its key id
listed by the caller (``unknown_publisher``); the content hash recomputed from the files and equal
to the signed one (``tampered``); the signature valid under that key (``bad_signature``); the
manifest valid and its entry file present (``bad_manifest``); the manifest's ``publisher`` the key
that signed (``bad_signature``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._files import write_atomic
from ._plugin_content import SIGNATURE_FILE, PackageContents, package_contents
from ._plugin_grants import PackageRefused, show
from ._plugin_keys import KEY_ID_RE, parse_publisher_key, publisher_fingerprint
from ._plugin_manifest import MANIFEST_FILE, MANIFEST_MAX_BYTES, Manifest, parse_manifest

SIGNATURE_VERSION: Final = 1
SIGNATURE_DOMAIN: Final = b"curvemesh-plugin-signature:v1\n"
SIGNATURE_MAX_BYTES: Final = 4096
_HASH_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_SIG_KEYS: Final = frozenset({"v", "publisher", "content_hash", "signature"})


@dataclass(frozen=True, slots=True)
class VerifiedPackage:
    """A package whose signature, content and manifest were checked by :func:`verify_package`.
    ``publisher`` is the key id that signed; ``publisher_fingerprint`` the first 16 hex digits of
    SHA-256 over that public key, to show the person installing it."""

    path: Path
    manifest: Manifest
    content_hash: str
    publisher: str
    publisher_fingerprint: str


def signed_message(key_id: str, content_hash: str) -> bytes:
    """The bytes a publisher signs for a package of ``content_hash`` under ``key_id``."""
    return SIGNATURE_DOMAIN + key_id.encode("ascii") + b"\n" + content_hash.encode("ascii")


def sign_package(directory: Path, private_key: Ed25519PrivateKey, key_id: str) -> str:
    """Sign the package at ``directory`` as publisher ``key_id``: write ``plugin.sig`` (replacing
    an old one, atomically) and return the content hash signed. The manifest is checked first, and
    must name ``key_id`` as its publisher: a package that could never verify is not signed."""
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise PackageRefused("bad_signature", f"{show(key_id)} is not a publisher key id (1-64 of a-z 0-9 . _ -, "
                                              "starting with a letter or digit)")
    contents = package_contents(directory)
    manifest = _manifest(directory, contents)
    if manifest.publisher != key_id:
        raise PackageRefused("bad_signature", f"{directory / MANIFEST_FILE}: publisher is {manifest.publisher!r}, "
                                              f"not {key_id!r}, the key id you sign with; the two must match")
    digest = contents.content_hash
    signature = private_key.sign(signed_message(key_id, digest))
    document = {"v": SIGNATURE_VERSION, "publisher": key_id, "content_hash": digest,
                "signature": base64.b64encode(signature).decode("ascii")}
    write_atomic(directory / SIGNATURE_FILE, (json.dumps(document, indent=2) + "\n").encode("ascii"), mode=0o644)
    return digest


def verify_package(directory: Path, publishers: Mapping[str, str]) -> VerifiedPackage:
    """Check the package at ``directory`` against the trusted ``publishers`` (key id -> public key
    text, as ``[plugins.publishers]`` lists them) and return what was verified; see the module notes
    for the checks and their order. Verification raises, it never returns a verdict to test."""
    key_id, signed_hash, signature = _read_signature(directory)
    key_text = publishers.get(key_id)
    if key_text is None:
        raise PackageRefused("unknown_publisher", f"{directory}: signed by publisher key {key_id!r}, which this "
                                                  "mesh does not trust; if you trust that publisher, add its public "
                                                  f"key under [plugins.publishers] in mesh.toml ({key_id} = "
                                                  "\"ed25519:...\", as the publisher gives it to you)")
    try:
        raw = parse_publisher_key(key_text)
    except PackageRefused as exc:
        raise PackageRefused("unknown_publisher", f"the key listed for publisher {key_id!r}: {exc.message}") from None
    contents = package_contents(directory)
    digest = contents.content_hash
    if not hmac.compare_digest(digest, signed_hash):
        raise PackageRefused("tampered", f"{directory}: the files do not match what {key_id!r} signed: a file was "
                                         "added, removed or changed after signing; get the package again from its "
                                         "publisher")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, signed_message(key_id, signed_hash))
    except (InvalidSignature, ValueError):
        raise PackageRefused("bad_signature", f"{directory}: {SIGNATURE_FILE} is not a valid signature by "
                                              f"publisher key {key_id!r} (fingerprint {publisher_fingerprint(raw)}); "
                                              "the package is forged or was signed with another key") from None
    manifest = _manifest(directory, contents)
    if manifest.publisher != key_id:
        raise PackageRefused("bad_signature", f"{directory}: the manifest names publisher {manifest.publisher!r} "
                                              f"but {key_id!r} signed it; a package is signed by its own publisher")
    return VerifiedPackage(directory, manifest, digest, key_id, publisher_fingerprint(raw))


def _read_signature(directory: Path) -> tuple[str, str, bytes]:
    """``plugin.sig``'s key id, signed content hash and raw signature, or a refusal."""
    path = directory / SIGNATURE_FILE
    data = _read_signature_file(path)
    document: Any = None
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        document = None
    signature = None
    if isinstance(document, dict) and document.keys() == _SIG_KEYS and type(document["v"]) is int \
            and document["v"] == SIGNATURE_VERSION and isinstance(document["publisher"], str) \
            and KEY_ID_RE.fullmatch(document["publisher"]) and isinstance(document["content_hash"], str) \
            and _HASH_RE.fullmatch(document["content_hash"]) and isinstance(document["signature"], str):
        try:
            signature = base64.b64decode(document["signature"], validate=True)
        except (binascii.Error, ValueError):
            signature = None
    if signature is None or len(signature) != 64:
        raise PackageRefused("bad_signature", f"{path}: not a plugin signature (JSON with v = {SIGNATURE_VERSION}, "
                                              "publisher, content_hash and a base64 Ed25519 signature, nothing "
                                              "else); ask the publisher for the package again")
    return document["publisher"], document["content_hash"], signature


def _read_signature_file(path: Path) -> bytes:
    """``plugin.sig``'s bytes, opened without following a link: absent is ``unsigned``; a link,
    anything but a regular file, or a file too large to be a signature is ``bad_signature``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PackageRefused("unsigned", f"{path}: missing; the package is not signed, ask its publisher for a "
                                         "signed package") from None
    except OSError as exc:
        raise PackageRefused("bad_signature", f"{path}: cannot be read ({exc.strerror}); it must be a regular "
                                              "file, not a link") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PackageRefused("bad_signature", f"{path}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= SIGNATURE_MAX_BYTES and (chunk := os.read(fd, SIGNATURE_MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > SIGNATURE_MAX_BYTES:
        raise PackageRefused("bad_signature", f"{path}: larger than {SIGNATURE_MAX_BYTES} bytes, so not a signature")
    return b"".join(chunks)


def _manifest(directory: Path, contents: PackageContents) -> Manifest:
    """The manifest as it was hashed, parsed, with its entry file present."""
    path = directory / MANIFEST_FILE
    if len(contents.manifest) > MANIFEST_MAX_BYTES:
        raise PackageRefused("bad_manifest", f"{path}: larger than {MANIFEST_MAX_BYTES} bytes; a manifest is a few "
                                             "lines of TOML")
    try:
        text = contents.manifest.decode("utf-8")
    except UnicodeDecodeError:
        raise PackageRefused("bad_manifest", f"{path}: not UTF-8 text") from None
    manifest = parse_manifest(text, source=str(path))
    if manifest.entry_file not in contents.files:
        raise PackageRefused("bad_manifest", f"{path}: entry {manifest.entry!r} needs {manifest.entry_file} at the "
                                             "top of the package, and there is none")
    return manifest

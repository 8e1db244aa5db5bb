"""Publisher keys: the Ed25519 keys plugin publishers sign with, their key ids, and their public
half as the text mesh.toml lists under ``[plugins.publishers]``.

The public key text is ``ed25519:<standard base64 of the 32 raw bytes>``; its fingerprint, shown
when a plugin is installed, is the first 16 hex digits of SHA-256 over the raw key. The private key
is a PKCS#8 PEM file (unencrypted: it is a publisher's signing key, kept on the publisher's
machine like an SSH key), 0600, never overwritten.

``cryptography`` is imported where it is used: the configuration checks publisher key text with
this module, and a program that only reads the configuration must not load the crypto stack
(tests/test_shared_exports.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ._certs import write_exclusive
from ._errors import CertificateError
from ._plugin_grants import PackageRefused, show

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: A publisher key id, as mesh.toml and a manifest's ``publisher`` name it.
KEY_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
KEY_PREFIX: Final = "ed25519:"
PUBLIC_KEY_BYTES: Final = 32
_KEY_TEXT_RE: Final = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")
#: A PKCS#8 PEM Ed25519 private key is 119 bytes; anything much larger is not one.
_PRIVATE_FILE_MAX: Final = 4096


def check_key_id(key_id: object, where: str) -> str:
    """``key_id`` if it is a valid publisher key id, else :class:`PackageRefused` (``bad_manifest``)."""
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        raise PackageRefused("bad_manifest", f"{where}: {show(key_id)} is not a publisher key id (1-64 of "
                                             "a-z 0-9 . _ -, starting with a letter or digit)")
    return key_id


def publisher_key_text(public: bytes) -> str:
    """The text form of a raw 32-byte Ed25519 public key: ``ed25519:<base64>``."""
    if not isinstance(public, bytes | bytearray) or len(public) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
    return KEY_PREFIX + base64.b64encode(bytes(public)).decode("ascii")


def parse_publisher_key(text: str) -> bytes:
    """The raw 32 bytes of a publisher key written as ``ed25519:<base64>``; anything else (another
    algorithm, a private key, a wrong length, padding or alphabet, an all-zero key) raises
    :class:`PackageRefused` (``unknown_publisher``: no publisher can be known by it)."""
    raw = None
    if isinstance(text, str) and _KEY_TEXT_RE.fullmatch(text):
        try:
            raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
        except binascii.Error:
            raw = None
    # The canonical encoding only: the last character's unused bits must be zero, so one key has
    # exactly one text (the same key can never be listed twice under different spellings).
    if raw is None or len(raw) != PUBLIC_KEY_BYTES or raw == bytes(PUBLIC_KEY_BYTES) \
            or publisher_key_text(raw) != text:
        raise PackageRefused("unknown_publisher", "not a publisher public key: expected 'ed25519:' followed by the "
                                                  "standard base64 of 32 bytes (44 characters ending in '='), as "
                                                  "generate_publisher_key prints it")
    return raw


def publisher_fingerprint(public: bytes) -> str:
    """Short fingerprint of a raw public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public).hexdigest()[:16]


def generate_publisher_key(private_path: Path) -> str:
    """Make a new publisher key: write its private half to ``private_path`` (PKCS#8 PEM, mode 0600
    from the first instant, ``O_EXCL``: an existing file is never overwritten) and return the public
    key text to list under ``[plugins.publishers]``. Raises :class:`~shared.CertificateError` when
    the file exists or cannot be written."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        write_exclusive(private_path, pem, 0o600)
    except FileExistsError:
        raise CertificateError(f"{private_path}: already exists; a publisher key is never overwritten (packages "
                               "signed with it would no longer verify). Choose another path, or remove the old "
                               "key yourself if you mean to replace it") from None
    except OSError as exc:
        raise CertificateError(f"{private_path}: cannot be written ({exc.strerror})") from None
    return publisher_key_text(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def load_publisher_key(private_path: Path) -> Ed25519PrivateKey:
    """Read a publisher's private key written by :func:`generate_publisher_key`. Refuses (with
    :class:`~shared.CertificateError`, naming the file, never quoting it) a symlink, anything but a
    regular file, a file group or others may read or write, and anything but an unencrypted PKCS#8
    Ed25519 key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        fd = os.open(private_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CertificateError(f"{private_path}: cannot be read ({exc.strerror}); a publisher key is a regular "
                               "file, not a symlink") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CertificateError(f"{private_path}: is not a regular file")
        if info.st_mode & 0o077:
            raise CertificateError(f"{private_path}: the publisher's private key is accessible by group or others "
                                   f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {private_path}`, "
                                   "and treat the key as exposed if others could read it")
        data = os.read(fd, _PRIVATE_FILE_MAX + 1)
    finally:
        os.close(fd)
    key = None
    if len(data) <= _PRIVATE_FILE_MAX:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None  # malformed, encrypted or unsupported: reported below, the contents never quoted
    if not isinstance(key, Ed25519PrivateKey):
        raise CertificateError(f"{private_path}: not an unencrypted PKCS#8 Ed25519 private key (make one with "
                               "generate_publisher_key)")
    return key

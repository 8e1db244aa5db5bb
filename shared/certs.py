"""CURVE certificates: make, write, load and check the keypairs that identify every process.

A :class:`Certificate` is a Z85 public key with the identity (name and role) it stands for; a
:class:`KeyPair` adds its secret key. Files use ZeroMQ's certificate format with a ``metadata``
section; the code and the full contract (0600 and ``O_EXCL`` at creation, secret files others can
read refused at load) are in :mod:`shared._certs`.

- :func:`generate` makes a keypair for a name and one of the :data:`ROLES`;
- :func:`save_keypair` / :func:`save_public` write one, never overwriting;
- :func:`load_keypair` / :func:`load_certificate` read one strictly;
- :func:`check_name`, :func:`check_public_key` and :func:`fingerprint` validate and name keys.

Writing other private files the same way (``O_EXCL``, exact mode) is :func:`shared.files.write_exclusive`.
"""

from __future__ import annotations

from ._certs import (
    ROLES,
    Certificate,
    KeyPair,
    check_name,
    check_public_key,
    fingerprint,
    generate,
    load_certificate,
    load_keypair,
    save_keypair,
    save_public,
)

__all__ = [
    "ROLES",
    "Certificate",
    "KeyPair",
    "check_name",
    "check_public_key",
    "fingerprint",
    "generate",
    "load_certificate",
    "load_keypair",
    "save_keypair",
    "save_public",
]

"""Signed plugin packages: the format, and the checks plugin-host runs before a plugin runs.

A package is a directory (or a ``.tar.gz``/``.tgz``/``.tar`` archive of one) holding
``plugin.toml`` (the manifest), the plugin's Python files, and ``plugin.sig``, the publisher's
Ed25519 signature over the package's canonical content hash. Installing one is::

    staged = stage_package(source, staging)                   # a private copy (staging: empty, 0700)
    package = verify_package(staged, config.plugins.publishers)  # raises PackageRefused
    package.manifest.capabilities                             # what to show and ask consent for

Every check raises :class:`PackageRefused` (a :class:`~shared.BadRequest`) whose ``reason`` is a short
code (``bad_manifest``, ``bad_signature``, ``unsigned``, ``unknown_publisher``, ``tampered``,
``unsafe_package``, ``too_large``, ``not_found``) and whose message says what is wrong and what to do,
naming the file or key and never carrying key material. Nothing returns a verdict to test.

The manifest (``plugin.toml``; unknown keys and out-of-range values are refused naming the key)::

    name = "notes-summary"            # 1-32 of a-z 0-9 -, starting with a letter
    version = "1.2.0"                 # MAJOR.MINOR.PATCH only: no leading zeros ("01.2.3"), no
                                      # "1.2", no suffix ("1.2.3-rc1"); order with version_key
    publisher = "acme-2026"           # the key id that must sign it, listed in mesh.toml
    entry = "plugin"                  # the module imported from the package: plugin.py must exist
                                      # (a Python identifier, not a keyword or a stdlib module name)
    description = "Summarises your notes"   # optional: one printable line, at most 200 characters
    capabilities = ["storage.kv:read:summaries", "storage.kv:write:summaries",
                    "userdata:notes:read", "events:subscribe:notes."]   # optional, at most 64
    [quotas]          # optional; each key bounded: memory_mb 32..4096, cpu_s 1..3600,
    memory_mb = 256   # open_files 16..1024, file_size_mb 1..1024, processes 1..256,
                      # scratch_mb 1..1024, call_timeout_s 0.1..600 (defaults: Quotas())
    [sandbox]         # optional; default DEFAULT_REQUIRES, and a list must include all of those:
    requires = ["rlimits", "no_new_privs", "seccomp", "landlock", "landlock_scope", "netns"]  # more, never fewer

Capabilities are exactly ``storage.kv:read:<category>``, ``storage.kv:write:<category>`` (the
plugin's own storage), ``events:subscribe:<topic prefix>``, ``userdata:<category>:read`` and
``userdata:<category>:write`` (the person's data, each call also needing their consent; there is no
delete). A category is ``[a-z][a-z0-9_-]{0,31}``, a topic prefix ``[a-z][a-z0-9_.-]{0,63}``.

The content hash (:func:`content_hash`): every regular file except the top-level ``plugin.sig``,
sorted by POSIX relative path (bytewise UTF-8), each as the line ``relpath NUL x|- NUL size NUL
sha256hex LF`` (``x``: executable by its owner); the hash is ``"sha256:" + sha256(b"curvemesh-plugin-
content:v1\\n" + lines)``. Empty directories carry no content. Symlinks (never followed), devices,
fifos, sockets, non-printable names and components starting with ``..`` are refused
(``unsafe_package``); so are more than 1000 files, a file over 16 MiB or a package over 64 MiB
(``too_large``).

``plugin.sig`` is ``{"v": 1, "publisher": "<key id>", "content_hash": "sha256:...", "signature":
"<base64>"}``, the signature over ``b"curvemesh-plugin-signature:v1\\n" + key_id + b"\\n" +
content_hash``. :func:`verify_package` checks, in order: the signature file present (``unsigned``) and
well-formed (``bad_signature``); its key id listed in ``publishers`` (``unknown_publisher``); the
recomputed content hash equal to the signed one (``tampered``); the signature valid under that key
(``bad_signature``); the manifest valid with its entry file present (``bad_manifest``); the
manifest's ``publisher`` equal to the signing key id (``bad_signature``).

Publisher keys: :func:`generate_publisher_key` writes a PKCS#8 PEM private key (0600, never
overwriting) and returns the public key text ``ed25519:<base64 of 32 bytes>`` that goes under
``[plugins.publishers]`` in mesh.toml; key-file problems raise :class:`~shared.CertificateError`.
:func:`sign_package` writes ``plugin.sig``.

The code is in :mod:`shared._plugin_grants`, :mod:`shared._plugin_manifest`,
:mod:`shared._plugin_keys`, :mod:`shared._plugin_content`, :mod:`shared._plugin_staging` and
:mod:`shared._plugin_signing`; ``[plugins]`` of mesh.toml is :class:`shared.PluginsConfig`.
"""

from __future__ import annotations

from ._plugin_content import (
    MAX_DEPTH,
    MAX_DIRECTORIES,
    MAX_FILE_BYTES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    SIGNATURE_FILE,
    content_hash,
)
from ._plugin_grants import (
    CAPABILITY_FORMS,
    DEFAULT_REQUIRES,
    LAYERS,
    QUOTA_BOUNDS,
    REASONS,
    Capability,
    PackageRefused,
    Quotas,
    describe_quotas,
    parse_capability,
)
from ._plugin_keys import (
    KEY_ID_RE,
    generate_publisher_key,
    load_publisher_key,
    parse_publisher_key,
    publisher_fingerprint,
    publisher_key_text,
)
from ._plugin_manifest import MANIFEST_FILE, Manifest, parse_manifest, version_key
from ._plugin_signing import VerifiedPackage, sign_package, verify_package
from ._plugin_staging import ARCHIVE_SUFFIXES, stage_package

__all__ = [
    "ARCHIVE_SUFFIXES", "CAPABILITY_FORMS", "DEFAULT_REQUIRES", "KEY_ID_RE", "LAYERS", "MANIFEST_FILE", "MAX_DEPTH",
    "MAX_DIRECTORIES", "MAX_FILES", "MAX_FILE_BYTES", "MAX_TOTAL_BYTES", "QUOTA_BOUNDS", "REASONS", "SIGNATURE_FILE",
    "Capability", "Manifest", "PackageRefused", "Quotas", "VerifiedPackage", "content_hash", "describe_quotas",
    "generate_publisher_key", "load_publisher_key", "parse_capability", "parse_manifest", "parse_publisher_key",
    "publisher_fingerprint", "publisher_key_text", "sign_package", "stage_package", "verify_package", "version_key",
]

"""The broker's configuration files: the digest that names them, recorded at every start.

:func:`config_digest` identifies the configuration files' content (the base ``mesh.toml`` and the
home's ``mesh.d`` fragments). The ``mesh.config`` audit record of every start carries it, beside the
digest recorded at the previous start (:func:`record_config_at_start`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from shared import MeshHome
from shared.files import write_atomic

from .auditing import AuditTrail

log = structlog.get_logger("broker")

#: The digest of the configuration files recorded at the last start, under the home's spool dir.
CONFIG_DIGEST_FILE: Final = "config.sha256"


def config_digest(files: Sequence[Path]) -> str:
    """The SHA-256 of the configuration ``files`` (base first); raises :class:`OSError`.

    One file: its own SHA-256 (what ``sha256sum mesh.toml`` prints). With fragments: the SHA-256 of
    their sha256sum-style listing, so adding, removing or editing any of them changes it."""
    digests = [(hashlib.sha256(path.read_bytes()).hexdigest(), path) for path in files]
    if len(digests) == 1:
        return digests[0][0]
    listing = "".join(f"{digest}  {path}\n" for digest, path in digests)
    return hashlib.sha256(listing.encode()).hexdigest()


def record_config_at_start(trail: AuditTrail, home: MeshHome, files: Sequence[Path]) -> str | None:
    """Spool a ``mesh.config`` record: the configuration files' digest, the one recorded at the last
    start and whether it changed; return the digest (None when a file cannot be read).

    The digest is then kept in ``<home>/spool/config.sha256`` (written atomically, 0600) for the next
    start. Never stops the broker from starting: an unreadable file is recorded as such."""
    state = home.spool / CONFIG_DIGEST_FILE
    try:
        previous: str | None = state.read_text("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        previous = None
    record: dict[str, Any] = {"outcome": "ok", "path": " + ".join(str(p) for p in files)}
    digest: str | None
    try:
        digest = config_digest(files)
    except OSError as exc:
        digest = None
        record.update(outcome="unreadable", error=exc.strerror or type(exc).__name__)
    record.update(sha256=digest, previous_sha256=previous, changed=digest != previous)
    spool = trail.spool
    dropped = spool.dropped
    trail.record("mesh.config", **record)
    trail.sync()
    spooled = spool.dropped <= dropped  # not lost to a full spool: else report it again
    if spooled and digest is not None and digest != previous:
        try:
            write_atomic(state, (digest + "\n").encode())
        except OSError as exc:
            log.warning("config_digest_not_saved", error=exc.strerror)
    return digest

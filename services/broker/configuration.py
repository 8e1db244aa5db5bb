"""The broker's configuration: the digest that names its files, and reloading it while it runs.

:func:`config_digest` identifies the configuration files' content (the base ``mesh.toml`` and the
home's ``mesh.d`` fragments). The ``mesh.config`` audit record of every start carries it, beside the
digest recorded at the previous start (:func:`record_config_at_start`).

:class:`Configuration` answers ``mesh.config.reload``: the layered configuration is read again
(:func:`shared.mesh_config`) and, if it is valid, its ACL and rate limits are put in force at once
for every connection (:meth:`.state.MeshState.apply`). Everything else is read once, at start: the
broker's own sockets and limits, and the sections other processes read. A reload does not pretend to
apply those; it names every such key whose value differs as ``restart_needed``. An invalid
configuration changes nothing: the running one stays in force.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import structlog

from shared import (
    BadRequest,
    ConfigError,
    Conflict,
    MeshConfig,
    MeshHome,
    RequestContext,
    config_files,
    config_settings,
    handler,
    mesh_config,
)
from shared.files import write_atomic

from .auditing import AuditTrail
from .schema import Empty
from .service import MeshHandlers
from .state import MeshState

log = structlog.get_logger("broker")

#: The digest of the configuration files recorded at the last start, under the home's spool dir.
CONFIG_DIGEST_FILE: Final = "config.sha256"
#: The sections a reload puts in force; every other key takes effect when its process restarts.
APPLIED_ON_RELOAD: Final = ("acl", "limits")
#: Keys other parts take up while running, so no restart is needed for them: the declarations
#: (their rights are the derived ACL above; their programs are supervisord's, applied by meshctl) and
#: keyvault's entitlements (keyvault follows the configuration files).
TAKEN_UP_ELSEWHERE: Final = ("services.", "keyvault.entitlements.")


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


def restart_needed(running: MeshConfig, new: MeshConfig) -> list[str]:
    """The dotted keys whose value differs between ``running`` and ``new`` (a key only one of them
    has differs too) outside the sections a reload applies, in the new configuration's order."""
    before, after = config_settings(running), config_settings(new)
    keys = [*after, *(key for key in before if key not in after)]
    missing = object()
    return [key for key in keys
            if key.split(".", 1)[0] not in APPLIED_ON_RELOAD and not key.startswith(TAKEN_UP_ELSEWHERE)
            and before.get(key, missing) != after.get(key, missing)]


class Configuration(MeshHandlers):
    """The configuration in force: its digest, recorded at start, and ``mesh.config.reload``."""

    def __init__(self, home: MeshHome, files: Sequence[Path], state: MeshState, trail: AuditTrail,
                 clock: Callable[[], float]) -> None:
        self.home = home
        self.state = state
        self.trail = trail
        self._clock = clock
        #: The files the configuration was read from at start, base first.
        self.files = tuple(files)
        #: The digest of the configuration in force (None when a file could not be read at start).
        self.digest: str | None = None

    def record_start(self) -> str | None:
        """Spool this start's ``mesh.config`` record and keep its digest as the one in force."""
        self.digest = record_config_at_start(self.trail, self.home, self.files)
        return self.digest

    def _refused(self, ctx: RequestContext, error: BadRequest | Conflict) -> BadRequest | Conflict:
        """Record a refused reload (who asked, and why: the configuration error names file and key,
        never a value's secret, as configuration holds none) and hand back the error to raise."""
        self.trail.record("mesh.config_refused", actor=ctx.caller, role=ctx.role, sha256=self.digest,
                          error=error.message)
        self.trail.sync()
        return error

    @handler("config.reload", request=Empty)
    async def reload(self, ctx: RequestContext, _: Empty) -> dict[str, Any]:
        """``mesh.config.reload`` (no body) → ``{"sha256", "previous_sha256", "restart_needed": [key, …]}``.

        Reads ``mesh.toml`` and ``<home>/mesh.d/*.toml`` again. Invalid (a bad key or value, bad
        TOML, a fragment someone else could have written): ``BAD_REQUEST`` with the configuration
        error, which names the file and the key, and nothing changes. Valid: the new ACL and rate
        limits apply to every connection from its next message on (a right taken away is refused at
        once, a right given is granted without reconnecting); ``restart_needed`` lists the other keys
        that differ from the configuration in force (endpoints, socket limits, ``zap_domain``, other
        processes' sections ...), which take effect when their process restarts. ``sha256`` is the
        digest of the files read (as in the ``mesh.config`` record at start), ``previous_sha256`` the
        one in force before. Audited as ``mesh.config_reloaded`` (a refusal as ``mesh.config_refused``
        with the error), durably before the answer.
        ``meshctl config reload``."""
        root = self.home.root
        try:
            before = config_digest(config_files(root))
            config = mesh_config(root)
            after = config_digest(config_files(root))
        except ConfigError as exc:
            raise self._refused(ctx, BadRequest(exc.message)) from None
        except OSError as exc:  # a file its digest could not read: said as the layers' reader says it
            raise self._refused(ctx, BadRequest(f"{exc.filename}: cannot be read ({exc.strerror})")) from None
        if before != after:
            # The digest must name what is put in force, so a file edited mid-read is not applied.
            raise self._refused(ctx, Conflict("the configuration files changed while they were read; reload again"))
        running = self.state.config
        restart = restart_needed(running, config)
        self.state.apply(dataclasses.replace(running, acl=config.acl, limits=config.limits), self._clock())
        previous, self.digest = self.digest, after
        self.trail.record("mesh.config_reloaded", actor=ctx.caller, role=ctx.role,
                          previous_sha256=previous, sha256=after)
        self.trail.sync()  # durable before the operator is told it is done
        log.info("config_reloaded", sha256=after, previous_sha256=previous, restart_needed=restart)
        return {"sha256": after, "previous_sha256": previous, "restart_needed": restart}

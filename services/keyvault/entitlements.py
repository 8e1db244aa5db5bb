"""Who may fetch which data keys, kept in step with the configuration files.

The entitlements are the ``keys`` of the ``[services.*]`` declarations plus any
``[keyvault.entitlements]`` table. ``meshctl service add`` and ``remove`` change them while keyvault
runs, so keyvault does not keep the table it read at start: before it decides on a release, it
checks whether any configuration file changed (path, inode, size and modification time; a few
``stat`` calls against key fetches that are rate-limited per identity) and, if so, reads the layered
configuration again with the same checks as at start.

A configuration that no longer parses changes nothing: the table in force stays (it was valid, and
a broken file must not widen or silently drop anyone's rights), and a warning names the problem once
per change of the files. A service whose declaration was removed loses its entitlement at its next
fetch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from shared import ConfigError, MeshConfig, config_files, mesh_config

log = structlog.get_logger("keyvault")

_Signature = tuple[tuple[str, int, int, int], ...]


class Entitlements:
    """The entitlement table; ``follow`` re-reads it when the files under ``home_root`` change (a
    configuration handed in by a test, not read from files, has nothing to follow)."""

    def __init__(self, home_root: Path, config: MeshConfig, *, follow: bool) -> None:
        self.home_root = home_root
        self.follow = follow
        self.table: Mapping[str, tuple[str, ...]] = config.keyvault.entitlements
        self._seen = self._signature() if follow else None

    def of(self, identity: str) -> tuple[str, ...]:
        """The purposes ``identity`` may fetch now."""
        if self.follow:
            self._refresh()
        return self.table.get(identity, ())

    def _signature(self) -> _Signature | None:
        try:
            files = config_files(self.home_root)
            stats = [(str(path), os.stat(path)) for path in files]
        except (ConfigError, OSError):
            return None  # unreadable now: reading it again will say why
        return tuple((name, st.st_ino, st.st_size, st.st_mtime_ns) for name, st in stats)

    def _refresh(self) -> None:
        seen = self._signature()
        if seen is not None and seen == self._seen:
            return
        self._seen = seen
        try:
            table = mesh_config(self.home_root).keyvault.entitlements
        except ConfigError as exc:
            log.warning("entitlements_kept", reason=exc.message,
                        hint="the configuration files no longer parse; the entitlements in force stay")
            return
        if table != self.table:
            log.info("entitlements_reloaded", identities=sorted(table))
            self.table = table

"""Which mesh home a command works on. Apart from :mod:`._lifecycle` so that resolving it costs
a command nothing: every command needs it, and few need what starting and stopping a mesh imports."""

from __future__ import annotations

from pathlib import Path

from shared import ConfigError, MeshHome

from ._output import CliError


def home_from(value: str | None) -> MeshHome:
    """The home from ``--home`` or ``$CURVEMESH_HOME``; a missing one is a one-line error."""
    try:
        return MeshHome.from_env(Path(value) if value else None)
    except ConfigError as exc:
        raise CliError(exc.message, status=2) from None

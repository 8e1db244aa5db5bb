"""The mesh's configuration as layers: one base file, then the home's fragments merged over it.

The base is ``$CURVEMESH_CONFIG`` if set, else ``<home>/mesh.toml`` if it exists (a complete file
that replaces the project's), else the project's ``mesh.toml`` (the defaults). Over it come the
fragments ``<home>/mesh.d/*.toml``, in the order of their names: an operator's overrides and the
declarations of added services, each a partial mesh.toml. Merging is by key: a table merges into
the table of the same name key by key, and any other value (a number, a string, a list) replaces
the one before it whole; so a fragment adds ``[acl.identity.notes]`` without copying the rest,
and ``call = []`` in a fragment takes a grant away.

Contract:

- Every fragment is parsed and validated on its own first, so a bad one is refused naming its file
  and key; the merged result is then validated as a whole (cross-key rules).
- A fragment grants rights, so it must be the operator's: a regular file (no symlink) owned by the
  user the mesh runs as, writable by nobody else, in a directory that is the same. Anything else is
  refused at start, fail closed. Files not ending in ``.toml`` are ignored (editor backups).
- :func:`provenance` says, for every effective key, which layer set it (or that it is built in, or
  that the ``[services.*]`` declarations gave it: the ACL and entitlements in force), for
  ``meshctl config show``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._config import MeshConfig, build_config, config_path
from ._errors import ConfigError

FRAGMENTS_DIR: Final = "mesh.d"
BUILT_IN: Final = "built-in default"
#: The source of an ACL or entitlement value that the ``[services.*]`` declarations gave.
DERIVED: Final = "[services.*] declarations"
_DERIVED_SECTIONS: Final = ("acl.", "keyvault.entitlements.")


@dataclass(frozen=True, slots=True)
class Layers:
    """The files the configuration is made of, base first, and what they hold once read."""

    files: tuple[Path, ...]
    tables: tuple[dict[str, Any], ...]

    @property
    def base(self) -> Path:
        return self.files[0]

    @property
    def fragments(self) -> tuple[Path, ...]:
        return self.files[1:]


def fragment_files(home: Path | None) -> list[Path]:
    """``<home>/mesh.d/*.toml`` in name order (none without a home or a mesh.d)."""
    if home is None:
        return []
    folder = home / FRAGMENTS_DIR
    if not folder.exists():
        return []
    _check_owned(folder, directory=True)
    return sorted(p for p in folder.iterdir() if p.name.endswith(".toml") and not p.name.startswith("."))


def _check_owned(path: Path, *, directory: bool = False) -> None:
    """Refuse a layer (or its folder) that someone else could have written."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    kind = stat.S_ISDIR if directory else stat.S_ISREG
    if not kind(info.st_mode):
        raise ConfigError(f"{path}: must be a {'directory' if directory else 'regular file'}, not a symlink "
                          "or anything else")
    if info.st_uid != os.getuid():
        raise ConfigError(f"{path}: belongs to another user; a configuration fragment grants rights, so it "
                          "must be yours")
    if info.st_mode & 0o022:
        raise ConfigError(f"{path}: writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                          f"run `chmod go-w {path}`")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    build_config(data, str(path))  # alone first: a bad key is reported with its own file
    return data


def config_files(home: Path | None) -> tuple[Path, ...]:
    """The layers' files, base first (checked as :func:`read_layers` checks them, not read)."""
    fragments = fragment_files(home)
    for fragment in fragments:
        _check_owned(fragment)
    return (config_path(home), *fragments)


def read_layers(home: Path | None) -> Layers:
    """Read (and validate, each on its own) the base and every fragment of ``home``."""
    files = config_files(home)
    return Layers(files, tuple(_read(path) for path in files))


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: tables key by key, any other value replaced whole."""
    merged = dict(base)
    for key, value in over.items():
        below = merged.get(key)
        merged[key] = merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


def build(layers: Layers) -> MeshConfig:
    """The configuration the layers make together, validated as a whole."""
    data: dict[str, Any] = {}
    for table in layers.tables:
        data = merge(data, table)
    return build_config(data, " + ".join(str(p) for p in layers.files))


def mesh_config(home: Path | None) -> MeshConfig:
    """The configuration every process of the mesh in ``home`` runs with (see the module doc)."""
    return build(read_layers(home))


def provenance(layers: Layers) -> list[tuple[str, Any, str]]:
    """``(key, value, source)`` for every effective setting, in the order of the configuration's
    sections: ``source`` is the last layer that set the key, or :data:`BUILT_IN`."""
    origin: dict[str, str] = {}
    written: dict[str, Any] = {}
    for path, table in zip(layers.files, layers.tables, strict=True):
        for key, value in _leaves(table):
            origin[key], written[key] = str(path), value
    rows: list[tuple[str, Any, str]] = []
    for key, value in _effective(build(layers), ""):
        source = origin.get(key, BUILT_IN)
        if key.startswith(_DERIVED_SECTIONS) and value != written.get(key):
            # The ACL and entitlements in force add the declarations' rules to what a file wrote.
            source = DERIVED if key not in origin else f"{source} + {DERIVED}"
        rows.append((key, value, source))
    return rows


def _leaves(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    keys: list[tuple[str, Any]] = []
    for key, value in table.items():
        where = f"{prefix}.{key}" if prefix else key
        keys += _leaves(value, where) if isinstance(value, dict) else [(where, value)]
    return keys


def _effective(value: Any, prefix: str) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        rows: list[tuple[str, Any]] = []
        for spec in dataclasses.fields(value):
            rows += _effective(getattr(value, spec.name), f"{prefix}.{spec.name}" if prefix else spec.name)
        return rows
    if isinstance(value, Mapping):
        rows = []
        for key, item in value.items():
            rows += _effective(item, f"{prefix}.{key}")
        return rows
    return [(prefix, list(value) if isinstance(value, tuple) else value)]

"""The anchor directory: where file-kept trust anchors live, outside the mesh home.

An *anchor* is something the mesh compares the home against, so it must not travel or roll
back with the home (DESIGN.md invariant 12): the master key when there is no platform keyring,
audit's trusted checkpoint and storage's backup lineage. With a platform keyring they live
there; without one they live here, one file per keyring account, so that copying the home
alone reads nothing and restoring an older home alone rolls nothing back.

Contract:

- :func:`anchor_dir` is ``[keyvault] anchor_dir`` when set, else
  ``${XDG_STATE_HOME:-$HOME/.local/state}/curvemesh``. It refuses (:class:`ConfigError`,
  naming the setting) a directory inside the home, a symlink, a directory owned by someone
  else or open to group or others; it creates a missing one 0700.
- :func:`slot_file` names a slot after its keyring account (``master:<mesh id>`` becomes
  ``master_<mesh id>``), so two meshes never share a slot.
- Moving a slot a previous version kept in the home into its new place is :mod:`._anchor_move`'s
  (it needs the keystores, which need this module).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

from ._errors import ConfigError
from ._home import MeshHome

ENV_STATE: Final = "XDG_STATE_HOME"
SETTING: Final = "keyvault.anchor_dir"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def _default() -> Path:
    state = os.environ.get(ENV_STATE, "")
    # The XDG spec says a relative value is invalid and must be ignored.
    if state and Path(state).is_absolute():
        return Path(state) / "curvemesh"
    user_home = os.environ.get("HOME", "")
    if not user_home or not Path(user_home).is_absolute():
        raise ConfigError(f"{SETTING}: neither {ENV_STATE} nor HOME names a directory; set {SETTING} in "
                          "mesh.toml to a directory outside the mesh home")
    return Path(user_home) / ".local" / "state" / "curvemesh"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def anchor_dir(home: MeshHome, setting: str) -> Path:
    """The checked anchor directory for ``[keyvault] anchor_dir`` = ``setting`` (see module doc)."""
    where = SETTING if setting else f"{SETTING} (default from ${ENV_STATE} or $HOME)"
    path = Path(setting) if setting else _default()
    if _inside(path.resolve(), home.root.resolve()):
        raise ConfigError(f"{where}: {path} is inside the mesh home {home.root}; anchors must live outside "
                          f"it, or a copy of the home carries them along: set {SETTING} elsewhere")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{where}: {path} cannot be created ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{where}: {path} is a symlink or not a directory; it must be a real directory")
    if info.st_uid != os.getuid():
        raise ConfigError(f"{where}: {path} belongs to another user; it must be yours")
    if info.st_mode & 0o077:
        raise ConfigError(f"{where}: {path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                          f"run `chmod 700 {path}`")
    return path


def slot_file(directory: Path, account: str) -> Path:
    """The file of the slot of keyring account ``account`` in ``directory``."""
    return directory / _UNSAFE.sub("_", account)

"""Where installed packages and plugin scratch directories live on disk.

- ``<home>/data/plugin-host/packages/<name>-<version>-<hash>/``: an installed package, copied (never
  linked) from what the operator named, verified, then made read-only. The copy is what runs: a
  package changed at its source after installing changes nothing, and the copy itself is verified
  against its content hash again before every start (a file changed on disk refuses to run).
- ``<home>/data/plugin-host/staging/<random>/``: a package being installed; it becomes the
  installed copy by a rename, or is deleted.
- the scratch directories, one per plugin, on a memory file system (``/dev/shm``) so that what a
  plugin writes there never reaches a disk in the clear; inside its sandbox the plugin also gets a
  private tmpfs of its ``scratch_mb`` quota over it where the kernel allows (layer ``tmpfs``). A
  plugin's scratch is emptied when it stops: persistent data goes through storage (encrypted).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Final

from shared import StateError

#: Where scratch directories go: a memory file system on every Linux.
MEMORY_FS: Final = Path("/dev/shm")  # noqa: S108 - a private 0700 directory is made under it, never a shared name


class Shelf:
    """The on-disk places of one plugin-host (``root``: ``<home>/data/plugin-host``)."""

    def __init__(self, root: Path, home_root: Path) -> None:
        self.root = root
        self.packages = root / "packages"
        self.staging = root / "staging"
        # One scratch tree per mesh home, named by a digest of the home's path (several homes may run).
        digest = hashlib.sha256(str(home_root.resolve()).encode()).hexdigest()[:12]
        self.scratch_root = MEMORY_FS / f"curvemesh-{digest}-plugins"

    def prepare(self) -> None:
        """Create the directories (0700) and clear what an earlier run left half done."""
        for path in (self.root, self.packages, self.staging):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        private_directory(self.scratch_root)
        for leftover in self.staging.iterdir():
            remove_tree(leftover)
        for leftover in self.scratch_root.iterdir():
            remove_tree(leftover)

    def close(self) -> None:
        """Remove the scratch tree (every plugin has stopped): nothing stays in memory after plugin-host."""
        remove_tree(self.scratch_root)

    def new_staging(self) -> Path:
        path = self.staging / secrets.token_hex(8)
        path.mkdir(mode=0o700)
        return path

    def keep(self, staged: Path, name: str, version: str, content_hash: str) -> Path:
        """Move a verified staged package into place, read-only; its final path."""
        final = self.packages / f"{name}-{version}-{content_hash.split(':', 1)[-1][:12]}"
        if final.exists():
            remove_tree(final)
        os.rename(staged, final)
        for path, _, files in os.walk(final):
            for f in files:
                os.chmod(os.path.join(path, f), stat.S_IMODE(os.lstat(os.path.join(path, f)).st_mode) & 0o500)
            os.chmod(path, 0o500)
        return final

    def scratch(self, name: str) -> Path:
        """A fresh, empty scratch directory for ``name`` (0700)."""
        path = self.scratch_root / name
        remove_tree(path)
        path.mkdir(mode=0o700)
        return path

    def clear_scratch(self, name: str) -> None:
        remove_tree(self.scratch_root / name)

    def discard(self, path: Path) -> None:
        remove_tree(path)


def private_directory(path: Path) -> None:
    """Make ``path`` (in a world-writable directory such as /dev/shm) ours alone, or refuse.

    Its name is predictable, so another local user may have made it first, or put a symlink there:
    it is used only when it is a real directory (not a link), owned by us and 0700."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise StateError(f"{path} is not a private directory of this user (a link, another owner, or open to "
                         "others); remove it and start plugin-host again")


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it, read-only parts included; nothing if it is gone."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for sub, dirs, _ in os.walk(path):
        os.chmod(sub, 0o700)
        for d in dirs:
            full = os.path.join(sub, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path)

"""Storage's own bookkeeping, and where its stores live in the home.

``<home>/data/storage/state`` holds no user data and no key: the mesh's backup lineage (an id and
the sequence number of the newest backup made or restored, for rollback detection) and which key
versions storage has retired. It is msgpack, rewritten with :func:`shared.files.write_atomic`
(0600, fsynced, crash-safe). A state file that does not decode is refused, never reset: resetting
it would silently disable rollback detection.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from shared import MeshHome, StateError
from shared.files import write_atomic

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths of the stores inside a home (directories 0700, files 0600)."""

    root: Path

    @classmethod
    def of(cls, home: MeshHome) -> Layout:
        return cls(home.data / "storage")

    @property
    def records(self) -> Path:
        return self.root / "records" / "records.db"

    @property
    def kv(self) -> Path:
        return self.root / "kv"

    @property
    def analytics(self) -> Path:
        return self.root / "analytics"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def work(self) -> Path:
        """Scratch space for snapshots and restores: only ciphertext is ever written here."""
        return self.root / "work"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def ensure(self) -> None:
        for directory in (self.root, self.records.parent, self.kv.parent, self.analytics, self.files, self.work):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)


@dataclass(slots=True)
class StorageState:
    """``mesh_id``: random, names this mesh's backup lineage. ``backup_seq``: the newest backup's
    sequence number (made here, or restored here). ``retired``: purpose → versions no longer used.
    ``restoring``: the archive a restore was importing when it stopped (None when none is half done)."""

    mesh_id: str = field(default_factory=lambda: secrets.token_hex(16))
    backup_seq: int = 0
    backup_time: float = 0.0
    retired: dict[str, list[int]] = field(default_factory=dict)
    restoring: str | None = None

    @classmethod
    def load(cls, path: Path) -> StorageState:
        """Read the state, or a fresh one when there is none yet. :class:`StateError` if unreadable."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            data: Any = msgpack.unpackb(raw, raw=False, strict_map_key=True)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("unknown version")
            retired = {str(k): [int(v) for v in vs] for k, vs in dict(data["retired"]).items()}
            restoring = data["restoring"]
            if restoring is not None and not isinstance(restoring, str):
                raise ValueError("restoring")
            return cls(str(data["mesh_id"]), int(data["backup_seq"]), float(data["backup_time"]), retired, restoring)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise StateError(f"{path}: the storage state file is damaged ({type(exc).__name__}); "
                             "restore it from a backup or investigate before starting storage") from None

    def save(self, path: Path) -> None:
        """Write the state durably (0600, atomic)."""
        write_atomic(path, msgpack.packb({"version": STATE_VERSION, "mesh_id": self.mesh_id,
                                          "backup_seq": self.backup_seq, "backup_time": self.backup_time,
                                          "retired": self.retired, "restoring": self.restoring},
                                         use_bin_type=True))

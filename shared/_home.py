"""The mesh's home directory: one place for keys, certificates, sockets, data and logs.

``CURVEMESH_HOME`` names it. Every directory inside is created mode 0700, so
two meshes with different homes run side by side without seeing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._errors import ConfigError

ENV_HOME: Final = "CURVEMESH_HOME"
# A unix socket path is limited to 108 bytes including the terminating NUL.
_MAX_IPC_PATH: Final = 107


@dataclass(frozen=True, slots=True)
class MeshHome:
    """Paths inside a mesh home. Construction does no I/O; :meth:`ensure` creates them."""

    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> MeshHome:
        """The home named by ``override`` or ``$CURVEMESH_HOME``; refuse to guess one."""
        value = override if override is not None else os.environ.get(ENV_HOME)
        if not value:
            raise ConfigError(f"{ENV_HOME} is not set: it names the mesh's home directory")
        return cls(Path(value).absolute())

    @property
    def keys(self) -> Path:
        """Each process's keypair: ``<name>.key`` and ``<name>.key_secret``."""
        return self.root / "keys"

    @property
    def certs(self) -> Path:
        """The broker's certificate store (allow-list and pending keys)."""
        return self.root / "certs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def broker_socket(self) -> Path:
        return self.run / "broker.sock"

    @property
    def broker_endpoint(self) -> str:
        path = str(self.broker_socket)
        if len(path.encode()) > _MAX_IPC_PATH:
            raise ConfigError(
                f"{ENV_HOME} is too deep: the broker socket path would be {len(path.encode())} bytes, "
                f"the limit for unix sockets is {_MAX_IPC_PATH}"
            )
        return f"ipc://{path}"

    def secret_key_path(self, name: str) -> Path:
        return self.keys / f"{name}.key_secret"

    def public_key_path(self, name: str) -> Path:
        return self.keys / f"{name}.key"

    def ensure(self) -> None:
        """Create the home and its directories with mode 0700 (tightening existing ones)."""
        for path in (self.root, self.keys, self.certs, self.run, self.log, self.spool, self.data):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)

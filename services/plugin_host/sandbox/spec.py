"""What plugin-host asks of a sandbox: the layers, the limits and the spec of one child.

Light on purpose (dataclasses and re only): the child imports this module too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

#: Every confinement layer a child applies, in the order the child applies them (rlimits come
#: after netns and tmpfs, see child.py; this tuple is the vocabulary, not the order).
LAYERS: Final = ("rlimits", "no_new_privs", "seccomp", "landlock", "landlock_net", "landlock_scope", "netns", "tmpfs")

#: A plugin's name, and the module its entry names: plain identifiers, nothing a path could hide in.
NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")
ENTRY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}\Z")

#: Upper bounds on what a spec may ask for; anything above is a configuration error.
MAX_LIMITS: Final = {"memory_mb": 65536, "cpu_s": 86400, "open_files": 65536, "file_size_mb": 65536,
                     "processes": 65536, "scratch_mb": 65536}
#: The largest frame either side may send, whatever a spec says (the child's receive buffer).
HARD_MAX_FRAME: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Kernel resource limits of one child.

    ``memory_mb`` bounds its address space (RLIMIT_AS), ``cpu_s`` the CPU seconds of its whole
    life (RLIMIT_CPU, soft; the hard limit is one second more), ``open_files`` its descriptors,
    ``file_size_mb`` any file it writes, ``processes`` RLIMIT_NPROC (which the kernel does not
    apply to uid 0: there fork is stopped by seccomp instead), ``scratch_mb`` the size of the
    tmpfs mounted over its scratch directory.
    """

    memory_mb: int
    cpu_s: int
    open_files: int
    file_size_mb: int
    processes: int
    scratch_mb: int

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or not 1 <= value <= MAX_LIMITS[field.name]:
                raise ValueError(f"Limits.{field.name} must be an int from 1 to {MAX_LIMITS[field.name]}")
        if self.memory_mb < 32:
            raise ValueError("Limits.memory_mb must be at least 32: the interpreter alone needs that much")
        if self.open_files < 8:
            raise ValueError("Limits.open_files must be at least 8: the child itself holds 4")

    def as_wire(self) -> dict[str, int]:
        """The limits as the setup frame carries them."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


LIMIT_NAMES: Final = frozenset(field.name for field in fields(Limits))


@dataclass(frozen=True)
class SandboxSpec:
    """One plugin's child: what to import, where, under which limits and required layers.

    ``package_dir`` is the plugin's code (read-only to it), ``entry`` the module imported from
    it, ``scratch_dir`` the only place it may write (an existing, empty directory; a tmpfs of
    ``limits.scratch_mb`` is mounted over it inside the child when the ``tmpfs`` layer applies).
    ``requires``: layers the child must apply or refuse to run the plugin at all.
    """

    name: str
    package_dir: Path
    entry: str
    scratch_dir: Path
    limits: Limits
    requires: frozenset[str]
    max_message_bytes: int = 262144
    messages_per_s: int = 10_000
    log_bytes_per_s: int = 65536

    def __post_init__(self) -> None:
        if type(self.name) is not str or not NAME_RE.match(self.name):
            raise ValueError("SandboxSpec.name must be 1 to 64 of a-z, 0-9, '_' and '-', starting with a letter")
        if type(self.entry) is not str or not ENTRY_RE.match(self.entry):
            raise ValueError("SandboxSpec.entry must be a dotted module name")
        for what in ("package_dir", "scratch_dir"):
            path = getattr(self, what)
            if not isinstance(path, Path) or not path.is_absolute():
                raise ValueError(f"SandboxSpec.{what} must be an absolute Path")
        if not isinstance(self.limits, Limits):
            raise ValueError("SandboxSpec.limits must be a Limits")
        if not isinstance(self.requires, frozenset) or not self.requires <= set(LAYERS):
            raise ValueError(f"SandboxSpec.requires must be a frozenset of {', '.join(LAYERS)}")
        if type(self.max_message_bytes) is not int or not 1024 <= self.max_message_bytes <= HARD_MAX_FRAME:
            raise ValueError(f"SandboxSpec.max_message_bytes must be from 1024 to {HARD_MAX_FRAME}")
        for what in ("messages_per_s", "log_bytes_per_s"):
            value = getattr(self, what)
            if type(value) is not int or value < 1:
                raise ValueError(f"SandboxSpec.{what} must be a positive int")

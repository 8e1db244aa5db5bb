"""What a plugin package may be granted: capabilities, quotas and sandbox layers, and the refusal
every check of a package raises.

The grammar of a capability is closed: four forms, nothing else (see :func:`parse_capability`).
A capability grants only what plugin-host then checks on every call; a ``userdata`` grant
additionally needs the person's consent at the time of the call (authz), the manifest alone never
reaches anyone's data. Quotas are bounded here so no manifest can ask for more than these bounds;
mesh.toml's ``[plugins]`` may cap them lower.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Final

from ._errors import BadRequest

#: The short codes :attr:`PackageRefused.reason` takes.
#: The first eight are the package's own faults (found here); the last four are what an installer
#: adds about a package that verifies: not the content or grants approved, quotas above its limits,
#: a sandbox layer the kernel lacks, a version below one installed before.
REASONS: Final = frozenset({"bad_manifest", "bad_signature", "unsigned", "unknown_publisher", "tampered",
                            "unsafe_package", "too_large", "not_found",
                            "not_approved", "quota", "sandbox", "rollback"})

#: Every sandbox layer plugin-host knows, from the outermost in.
LAYERS: Final[tuple[str, ...]] = ("rlimits", "no_new_privs", "seccomp", "landlock", "landlock_net",
                                  "landlock_scope", "netns", "tmpfs")
#: The layers every plugin runs under; a manifest may require more, never fewer.
#: landlock_scope is among them because without it a plugin, running as plugin-host's user, could
#: signal plugin-host and every other process of that user (and reach abstract unix sockets).
DEFAULT_REQUIRES: Final = frozenset({"rlimits", "no_new_privs", "seccomp", "landlock", "landlock_scope"})


class PackageRefused(BadRequest):
    """A plugin package, its manifest, its signature or a publisher key was refused.

    ``reason`` is one of :data:`REASONS` (for the audit log and for code that reacts to it); the
    message says what is wrong and what to do next, naming the file or key. It never carries key
    material, and values quoted from a package are cut short and escaped.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(message)
        self.reason: str = reason


def show(value: object, limit: int = 60) -> str:
    """``value`` quoted for a message: ``repr`` (so control characters and lone surrogates come
    out escaped), cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


CATEGORY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
TOPIC_PREFIX_RE: Final = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

CAPABILITY_FORMS: Final = ("storage.kv:read:<category>", "storage.kv:write:<category>",
                           "events:subscribe:<topic prefix>", "userdata:<category>:read",
                           "userdata:<category>:write")
_FORMS_TEXT: Final = (", ".join(CAPABILITY_FORMS) + " (a category is 1-32 of a-z 0-9 _ -, starting with a "
                      "letter; a topic prefix 1-64 of a-z 0-9 _ . -, starting with a letter)")


@dataclass(frozen=True, slots=True)
class Capability:
    """One grant of a manifest. ``kind`` is ``storage.kv``, ``events`` or ``userdata``; ``action``
    ``read``, ``write`` or ``subscribe``; ``target`` the category (``storage.kv``: the plugin's own
    storage; ``userdata``: the person's data of that category) or the topic prefix (``events``);
    ``text`` the grant as written in the manifest."""

    kind: str
    action: str
    target: str
    text: str

    def words(self) -> str:
        """The grant in plain words, for the person asked to install the plugin."""
        if self.kind == "storage.kv":
            return f"{self.action} its own storage in category {self.target}"
        if self.kind == "events":
            return f"receive events on topics starting with {self.target}"
        return f"{self.action} your {self.target} (needs your consent)"


def parse_capability(text: str) -> Capability:
    """Parse one grant of exactly one of the forms of :data:`CAPABILITY_FORMS`; anything else (a
    ``delete``, whitespace, a path, upper case) raises :class:`PackageRefused` (``bad_manifest``)
    listing the forms."""
    if isinstance(text, str) and len(text) <= 128:
        parts = text.split(":")
        if len(parts) == 3:
            kind, first, second = parts
            if kind == "storage.kv" and first in ("read", "write") and CATEGORY_RE.fullmatch(second):
                return Capability(kind, first, second, text)
            if kind == "events" and first == "subscribe" and TOPIC_PREFIX_RE.fullmatch(second):
                return Capability(kind, first, second, text)
            if kind == "userdata" and second in ("read", "write") and CATEGORY_RE.fullmatch(first):
                return Capability(kind, second, first, text)
    raise PackageRefused("bad_manifest", f"{show(text)} is not a capability; the forms are {_FORMS_TEXT}")


#: Each quota's bounds, inclusive: no manifest may ask for less or more.
QUOTA_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "memory_mb": (32, 4096),
    "cpu_s": (1, 3600),
    "open_files": (16, 1024),
    "file_size_mb": (1, 1024),
    "processes": (1, 256),
    "scratch_mb": (1, 1024),
    "call_timeout_s": (0.1, 600),
}


@dataclass(frozen=True, slots=True)
class Quotas:
    """What one plugin process may use: address space (``memory_mb``), CPU seconds (``cpu_s``),
    open file descriptors, the largest file it may write (``file_size_mb``), processes and threads,
    its private scratch space (``scratch_mb``), and how long one call into it may take."""

    memory_mb: int = 256
    cpu_s: int = 30
    open_files: int = 64
    file_size_mb: int = 16
    processes: int = 32
    scratch_mb: int = 64
    call_timeout_s: float = 10.0


def parse_quotas(table: object, where: str) -> Quotas:
    """Build :class:`Quotas` from the manifest's ``[quotas]`` table (``where`` prefixes messages):
    unknown keys, wrong types and values outside :data:`QUOTA_BOUNDS` are refused naming the key."""
    if not isinstance(table, dict):
        raise PackageRefused("bad_manifest", f"{where}: must be a table of limits ({', '.join(QUOTA_BOUNDS)})")
    unknown = sorted(show(key) for key in table if key not in QUOTA_BOUNDS)
    if unknown:
        raise PackageRefused("bad_manifest", f"{where}: unknown key {', '.join(unknown)}; the quotas are "
                                             f"{', '.join(QUOTA_BOUNDS)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        lo, hi = QUOTA_BOUNDS[key]
        whole = key != "call_timeout_s"
        kind = "a whole number" if whole else "a number"
        if type(value) is not int and (whole or type(value) is not float):
            raise PackageRefused("bad_manifest", f"{where}.{key}: must be {kind} from {lo:g} to {hi:g}, "
                                                 f"not {show(value)}")
        if not (math.isfinite(value) and lo <= value <= hi):
            raise PackageRefused("bad_manifest", f"{where}.{key}: {show(value)} is outside {lo:g}..{hi:g}")
        values[key] = value if whole else float(value)
    return Quotas(**values)


def describe_quotas(q: Quotas) -> list[str]:
    """The quotas in plain words, one line each, in the order of :class:`Quotas`."""
    words = {
        "memory_mb": f"memory: up to {q.memory_mb} MiB",
        "cpu_s": f"processor time: up to {q.cpu_s} s in all",
        "open_files": f"open files: up to {q.open_files} at once",
        "file_size_mb": f"largest file it may write: {q.file_size_mb} MiB",
        "processes": f"processes and threads: up to {q.processes}",
        "scratch_mb": f"scratch space: {q.scratch_mb} MiB, emptied when it stops",
        "call_timeout_s": f"each call: answered within {q.call_timeout_s:g} s or stopped",
    }
    return [words[spec.name] for spec in fields(Quotas)]


def parse_requires(value: object, where: str) -> frozenset[str]:
    """The sandbox layers a manifest requires: a list of names from :data:`LAYERS` that includes every
    layer of :data:`DEFAULT_REQUIRES` (a manifest may ask for more confinement, never less)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PackageRefused("bad_manifest", f"{where}: must be a list of sandbox layers ({', '.join(LAYERS)})")
    unknown = sorted(show(item) for item in value if item not in LAYERS)
    if unknown:
        raise PackageRefused("bad_manifest", f"{where}: unknown sandbox layer {', '.join(unknown)}; the layers "
                                             f"are {', '.join(LAYERS)}")
    requires = frozenset(value)
    missing = [layer for layer in LAYERS if layer in DEFAULT_REQUIRES - requires]
    if missing:
        raise PackageRefused("bad_manifest", f"{where}: leaves out {', '.join(missing)}; every plugin runs under "
                                             f"{', '.join(sorted(DEFAULT_REQUIRES, key=LAYERS.index))}, a "
                                             "manifest may add layers but never remove one")
    return requires

"""How a child ended, in plain words, and the exceptions the host side raises.

The child signals a few endings with dedicated exit codes (below); the host classifies
everything else from the wait status and the CPU time the kernel accounted. A reason the host
decided itself (it killed the child for a timeout, a flood, an oversized or malformed frame, or
because it was asked to stop) wins over whatever the status says.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Final

# Exit codes of the child (child.py). A plugin can call os._exit with one of them: then it only
# mislabels its own ending, it gains nothing.
EXIT_BOOT: Final = 70         # the bootstrap itself failed (no or a broken setup frame)
EXIT_IMPORT: Final = 71       # the plugin's entry module raised while being imported
EXIT_PROTOCOL: Final = 76     # the host sent a frame the child does not accept
EXIT_UNAVAILABLE: Final = 78  # a required layer could not be applied (EX_CONFIG)
EXIT_MEMORY: Final = 79       # plugin code raised MemoryError (RLIMIT_AS)

REASONS: Final = ("stopped", "call_timeout", "seccomp", "cpu_quota", "memory_quota", "file_quota", "flood",
                  "oversized", "protocol", "crash", "start_failed", "sandbox_unavailable")
MAX_DETAIL: Final = 200


def printable(text: str, limit: int) -> str:
    """``text`` with every non-printable character escaped, cut to ``limit`` characters."""
    out = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass(frozen=True)
class ExitInfo:
    """How a child ended: ``reason`` is one of :data:`REASONS`, ``detail`` plain printable
    words (at most 200 characters of anything the plugin controls), ``returncode`` as
    :mod:`subprocess` gives it (negative for a signal), None when it was never known."""

    reason: str
    detail: str
    returncode: int | None


class ChildGone(Exception):
    """The child ended (or never became ready); ``exit`` says how."""

    def __init__(self, exit: ExitInfo) -> None:
        super().__init__(f"plugin child gone: {exit.reason}: {exit.detail}")
        self.exit = exit


class PluginFailed(Exception):
    """The plugin's function raised ``type_name``; ``denied`` when the kernel refused it
    something (PermissionError, or an OSError with EPERM or EACCES)."""

    def __init__(self, type_name: str, message: str, denied: bool) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.denied = denied


class RequestDenied(Exception):
    """Raised by an ``on_request`` handler to refuse a plugin's request with ``code`` and
    ``message``; the plugin sees it as ``curvemesh_plugin.Denied`` (code ``UNAVAILABLE`` is
    kept for failures and reaches it as ``curvemesh_plugin.Error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SandboxUnavailable(Exception):
    """A layer the spec requires cannot be applied on this machine; the plugin never ran."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"sandbox layer {layer} unavailable: {reason}")
        self.layer = layer
        self.reason = reason


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(returncode: int, *, cpu_seconds: float, cpu_limit: int, ready: bool) -> ExitInfo:
    """The ending the wait status shows, for a child the host did not kill itself.

    ``cpu_seconds`` is the user+system time the kernel accounted to it, which tells the CPU
    hard limit's SIGKILL from another one (the host's own SIGKILLs never come here).
    """
    if returncode < 0:
        sig = -returncode
        name = _signal_name(sig)
        if sig == signal.SIGSYS:
            return ExitInfo("seccomp", f"killed by {name}: it made a system call the sandbox forbids", returncode)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_seconds >= cpu_limit):
            return ExitInfo("cpu_quota", f"killed by {name} after {cpu_seconds:.1f} s of CPU (limit {cpu_limit} s)",
                            returncode)
        if sig == signal.SIGXFSZ:
            return ExitInfo("file_quota", f"killed by {name}: it wrote a file beyond its size limit", returncode)
        what = "before it was ready" if not ready else "while running"
        return ExitInfo("start_failed" if not ready else "crash", f"killed by {name} {what}", returncode)
    if returncode == EXIT_MEMORY:
        return ExitInfo("memory_quota", "it ran out of memory (MemoryError under its address-space limit)",
                        returncode)
    if returncode == EXIT_UNAVAILABLE:
        return ExitInfo("sandbox_unavailable", "a required sandbox layer could not be applied", returncode)
    if not ready:
        why = {EXIT_BOOT: "its bootstrap failed", EXIT_IMPORT: "the plugin failed to import",
               EXIT_PROTOCOL: "it refused the host's setup frame"}.get(returncode, "it exited")
        return ExitInfo("start_failed", f"{why} before it was ready (exit code {returncode})", returncode)
    if returncode == EXIT_PROTOCOL:
        return ExitInfo("protocol", "it refused a frame from the host (exit code 76)", returncode)
    return ExitInfo("crash", f"it exited on its own with code {returncode}", returncode)

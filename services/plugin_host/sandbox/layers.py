"""The confinement steps the child applies to itself, through libc (ctypes) and landlockpy.

Each function raises OSError (or landlockpy's LandlockError, an OSError) when the kernel refuses;
:func:`apply_all` runs them in the order child.py documents and records, per layer, whether it
applied and, if not, why in plain words. Only the child calls these (they are irreversible).
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
from collections.abc import Callable
from typing import Any, Final

import landlockpy
from landlockpy import AccessFS, AccessNet, Scope
from landlockpy import _syscall as landlock_syscall

from .spec import LAYERS

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long  # as landlockpy expects it (below)
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
# landlockpy looks libc up with ctypes.util.find_library, which runs /sbin/ldconfig in a
# subprocess; the child hands it the libc it already has instead (same library, no process).
landlock_syscall._libc = _libc

CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWNET: Final = 0x40000000
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 0x40000
PR_SET_PDEATHSIG: Final = 1
PR_SET_SECCOMP: Final = 22
PR_CAPBSET_DROP: Final = 24
PR_SET_NO_NEW_PRIVS: Final = 38
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
SECCOMP_MODE_FILTER: Final = 2
CAP_SETPCAP: Final = 8
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
MIB: Final = 1024 * 1024

READ: Final = AccessFS.READ_FILE | AccessFS.READ_DIR
#: What the plugin may do in its scratch directory: read, write, create and remove files and
#: directories, and move them around inside it. Not: execute, make devices, fifos, sockets, links.
SCRATCH: Final = (READ | AccessFS.WRITE_FILE | AccessFS.TRUNCATE | AccessFS.MAKE_REG | AccessFS.MAKE_DIR
                  | AccessFS.REMOVE_FILE | AccessFS.REMOVE_DIR | AccessFS.REFER)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return int(_libc.prctl(option, arg2, arg3, 0, 0))


def die_with_parent() -> None:
    """SIGKILL this process when the thread that spawned it (plugin-host's loop thread) ends."""
    _check(prctl(PR_SET_PDEATHSIG, 9), "prctl(PR_SET_PDEATHSIG)")


def unshare_network() -> None:
    """A new, empty network namespace (only a loopback that is down). Without root, in a new user
    namespace too (mapping this uid and gid to themselves), which is what makes it allowed."""
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        # Raw os calls: nothing imported lazily here (in the new user namespace, files the host's
        # uid could read only through a capability are out of reach).
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def private_scratch(scratch_dir: str, size_mb: int) -> None:
    """A mount namespace of its own, private (nothing propagates back to the host's), and a fresh
    tmpfs of ``size_mb`` over the scratch directory: nosuid, nodev, noexec, mode 0700."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount(/, MS_REC|MS_PRIVATE)")
    options = f"size={size_mb}m,mode=0700".encode()
    _check(_libc.mount(b"curvemesh-scratch", os.fsencode(scratch_dir), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       options), "mount(tmpfs)")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets.

    A plugin runs as the host's uid. As root, its capabilities would take it past every owner and
    mode check (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: Landlock would be all that stands between
    it and any file, and /proc/<pid>/mem of its own uid's processes), past the ptrace and signal
    checks (CAP_SYS_PTRACE, CAP_KILL), and out of its rlimits (CAP_SYS_RESOURCE). RLIMIT_NPROC
    does not bind a holder of CAP_SYS_RESOURCE or CAP_SYS_ADMIN, and never binds uid 0, with or
    without capabilities: there, seccomp is what stops new processes. Without root, the user
    namespace of the netns step hands the child a full set again (inside that namespace).

    The bounding set goes first: dropping from it needs CAP_SETPCAP, which capset removes last.
    A child holding capabilities but not CAP_SETPCAP (an unprivileged host given some ambient
    capability, and no user namespace) cannot shrink its bounding set; that set only matters
    across execve, which no_new_privs and seccomp both forbid.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    if data[0].effective & (1 << CAP_SETPCAP):
        cap = 0
        while prctl(PR_CAPBSET_DROP, cap) == 0:
            cap += 1
        if ctypes.get_errno() != errno.EINVAL:  # EINVAL: past the last capability this kernel has
            raise OSError(ctypes.get_errno(), f"prctl(PR_CAPBSET_DROP, {cap}) failed")
    _check(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    _check(_libc.capset(ctypes.byref(header), (_CapData * 2)()), "capset(empty)")


def set_rlimits(limits: dict[str, int]) -> None:
    """Soft and hard limits alike (except CPU: SIGXCPU at ``cpu_s``, SIGKILL one second later)."""
    mb = limits["memory_mb"] * MIB
    for what, want_soft, want_hard in (
        (resource.RLIMIT_AS, mb, mb),
        (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * MIB, limits["file_size_mb"] * MIB),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
        (resource.RLIMIT_MEMLOCK, 0, 0),
    ):
        # Never above the hard limit the host already runs under (raising it is not allowed).
        _, current = resource.getrlimit(what)
        hard = want_hard if current == resource.RLIM_INFINITY else min(want_hard, current)
        try:
            resource.setrlimit(what, (min(want_soft, hard), hard))
        except ValueError as exc:
            raise OSError(errno.EINVAL, f"setrlimit: {exc}") from None


def no_new_privs() -> None:
    _check(prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")


def landlock(read_paths: list[str], scratch_dir: str, failed: dict[str, str]) -> set[str]:
    """Restrict the filesystem to ``read_paths`` (read-only) and ``scratch_dir`` (read-write),
    TCP bind and connect to nothing, and abstract unix sockets and signals to its own domain.

    Best effort: returns the Landlock layers that applied, and names in ``failed`` the ones this
    kernel's ABI lacks. Raises OSError when Landlock itself cannot be applied."""
    abi = landlockpy.abi_version()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "this kernel has no Landlock, or it is disabled at boot")
    applied = {"landlock"}
    net = AccessNet.BIND_TCP | AccessNet.CONNECT_TCP if abi >= 4 else AccessNet.NONE
    scoped = Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL if abi >= 6 else Scope.NONE
    if net:
        applied.add("landlock_net")
    else:
        failed["landlock_net"] = f"Landlock ABI {abi} has no network rules (they need ABI 4)"
    if scoped:
        applied.add("landlock_scope")
    else:
        failed["landlock_scope"] = f"Landlock ABI {abi} has no scopes (they need ABI 6)"
    with landlockpy.Ruleset(handled_fs=landlockpy.fs_for_abi(abi), handled_net=net, scoped=scoped) as ruleset:
        for path in read_paths:
            if os.path.exists(path):  # a runtime directory this installation lacks grants nothing
                # A rule on a file may carry file rights only.
                ruleset.allow_path(path, READ if os.path.isdir(path) else AccessFS.READ_FILE)
        ruleset.allow_path(scratch_dir, SCRATCH)
        ruleset.restrict(no_new_privs=False)  # no_new_privs is its own layer, set just before
    return applied


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load_seccomp(bpf: bytes) -> None:
    """Install the host's precompiled filter on this (single-threaded) process."""
    program = ctypes.create_string_buffer(bpf, len(bpf))
    fprog = _SockFprog(len(bpf) // 8, ctypes.cast(program, ctypes.c_void_p))
    _check(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog)), "prctl(PR_SET_SECCOMP)")


def reason(exc: BaseException) -> str:
    """An OSError in plain words (errno name and message), for the unavailable frame."""
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def apply_all(setup: dict[str, Any], required: set[str],
              on_required_failure: Callable[[str, str], None]) -> dict[str, bool]:
    """Apply every layer in order; a required layer that fails calls ``on_required_failure(layer,
    reason)`` at once (which does not return). Returns which layers applied."""
    failed: dict[str, str] = {}
    applied: set[str] = set()

    def step(layer: str, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            failed[layer] = reason(exc)
        else:
            applied.add(layer)
        if layer in failed and layer in required:
            on_required_failure(layer, failed[layer])

    scratch = setup["scratch_dir"]
    step("netns", unshare_network)
    step("tmpfs", lambda: private_scratch(scratch, setup["limits"]["scratch_mb"]))
    os.chdir(scratch)  # into the tmpfs when one was mounted over it
    drop_capabilities()  # not a layer: never run with capabilities, whatever the spec says
    step("rlimits", lambda: set_rlimits(setup["limits"]))
    step("no_new_privs", no_new_privs)
    try:
        applied |= landlock([*setup["read_paths"], setup["package_dir"]], scratch, failed)
    except OSError as exc:
        for layer in ("landlock", "landlock_net", "landlock_scope"):
            failed[layer] = reason(exc)
    for layer in ("landlock", "landlock_net", "landlock_scope"):
        if layer in failed and layer in required:
            on_required_failure(layer, failed[layer])
    step("seccomp", lambda: load_seccomp(setup["bpf"]))
    return {layer: layer in applied for layer in LAYERS}

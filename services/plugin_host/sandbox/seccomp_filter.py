"""The seccomp filter of every child, compiled once by the host with libseccomp (pyseccomp).

Default allow, with a deny list: an interpreter needs hundreds of ordinary system calls (and
new kernels add more), while what a confined plugin must never do is a short, stable list. A
denied call kills the whole process (SECCOMP_RET_KILL_PROCESS, seen by the host as SIGSYS),
so a plugin cannot probe the filter call by call. Calls of another architecture (i386 through
``int 0x80``, x32) are killed the same way.

The filter leaves as raw BPF (:func:`compile_filter`) and travels in the setup frame; the child
loads it with one prctl and never needs libseccomp itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Final

#: Killed outright, grouped by what they would give a plugin. Names this architecture does not
#: have (``socketcall`` on x86_64, say) are pseudo-calls libseccomp handles.
DENIED: Final = (
    # Any network or IPC endpoint: the inherited socketpair is its only channel.
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "socketcall",
    # Another program or another process (threads stay possible: see clone below).
    "execve", "execveat", "fork", "vfork",
    # Other processes' memory and descriptors.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # Mounts, namespaces and file handles (the way around path-based rules).
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "name_to_handle_at", "open_by_handle_at", "quotactl",
    "quotactl_fd", "fanotify_init",
    # Kernel attack surface no plugin needs.
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "uselib", "vhangup", "lookup_dcookie",
    # The machine itself.
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon",
    "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "iopl", "ioperm",
    "sethostname", "setdomainname",
    # Its own limits and identity: the rlimits stay as set, the uid and capabilities as dropped.
    "setrlimit", "capset", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid",
    "setfsgid", "setgroups", "personality",
    # System V and POSIX message IPC: a channel to other plugins outside any namespace it has.
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)

CLONE_THREAD: Final = 0x00010000
#: clone flags that would create namespaces (they need capabilities the child dropped; killed anyway).
#: (CLONE_NEWTIME, 0x80, overlaps the exit-signal byte of clone and works only through clone3.)
CLONE_NAMESPACES: Final = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


def _rule(flt: object, action: int, name: str, *args: object) -> None:
    import pyseccomp

    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    if number == -1:  # __NR_SCMP_ERROR: libseccomp does not know the name at all
        return
    flt.add_rule(action, number, *args)  # type: ignore[attr-defined]


def compile_filter() -> bytes:
    """The filter as raw BPF (``struct sock_filter`` array) for ``PR_SET_SECCOMP``.

    Imports pyseccomp (and with it libseccomp) here only, so that the child, which imports this
    package, never loads it. Raises OSError when libseccomp is missing or refuses the filter.
    """
    try:
        import pyseccomp
    except RuntimeError:  # pyseccomp's word for "libseccomp.so not found"
        raise OSError(errno.ENOENT, "libseccomp is not installed (Debian: libseccomp2); "
                                    "tools/host-deps --check up names the command") from None

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    kill = pyseccomp.KILL_PROCESS
    for name in DENIED:
        _rule(flt, kill, name)
    # A new process is clone without CLONE_THREAD (fork, vfork, posix_spawn); a thread is allowed.
    _rule(flt, kill, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    for flag in CLONE_NAMESPACES:
        _rule(flt, kill, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes glibc fall back to clone.
    _rule(flt, pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    # prlimit64 reads limits with a NULL new limit (getrlimit); setting one is killed.
    _rule(flt, kill, "prlimit64", pyseccomp.Arg(2, pyseccomp.NE, 0))
    # A binary tree instead of a linear list; an older libseccomp keeps the list (slower, the same).
    with contextlib.suppress(OSError):
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    fd = os.memfd_create("curvemesh-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        flt.export_bpf(out)
        out.seek(0)
        bpf = out.read()
    if not bpf or len(bpf) % 8:
        raise OSError(errno.EINVAL, "libseccomp exported an empty or truncated filter")
    return bpf

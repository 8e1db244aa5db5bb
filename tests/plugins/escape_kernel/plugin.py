"""Going around Python: raw system calls through ctypes, the host's process, namespaces."""

import ctypes
import os
import signal

import curvemesh_plugin as cp

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_socket = 41
X32_SYSCALL_BIT = 0x40000000


@cp.function()
def raw_socket(args):
    return libc.syscall(SYS_socket, 2, 1, 0)


@cp.function()
def x32_socket(args):
    return libc.syscall(X32_SYSCALL_BIT | SYS_socket, 2, 1, 0)


@cp.function()
def unshare(args):
    return libc.unshare(0x10000000 | 0x40000000)  # CLONE_NEWUSER | CLONE_NEWNET


@cp.function()
def ptrace(args):
    return libc.ptrace(16, args["pid"], 0, 0)  # PTRACE_ATTACH


@cp.function()
def kill(args):
    os.kill(args["pid"], signal.SIGTERM)
    return True


@cp.function()
def raise_limit(args):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return True


@cp.function()
def become(args):
    os.setuid(0)
    return True

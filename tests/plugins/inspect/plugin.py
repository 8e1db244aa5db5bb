"""What a plugin finds in its own process: descriptors, environment, limits, path."""

import os
import resource
import sys

import curvemesh_plugin as cp


@cp.function()
def fds(args):
    found = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


@cp.function()
def environ(args):
    return dict(os.environ)


@cp.function()
def limits(args):
    names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE", "RLIMIT_CORE", "RLIMIT_NPROC",
             "RLIMIT_MEMLOCK")
    return {name: list(resource.getrlimit(getattr(resource, name))) for name in names}


@cp.function()
def path(args):
    return sys.path


@cp.function()
def imports(args):
    """The standard library, extension modules and the system libraries they load."""
    import bz2
    import ctypes
    import decimal
    import hashlib
    import json
    import lzma
    import sqlite3
    import unicodedata
    import zlib
    return [json.dumps({"a": 1}), str(decimal.Decimal("1.1") * 2), hashlib.sha256(b"").hexdigest()[:8],
            len(zlib.compress(b"x")) > 0, len(lzma.compress(b"x")) > 0, len(bz2.compress(b"x")) > 0,
            unicodedata.name("a"), ctypes.sizeof(ctypes.c_int),
            sqlite3.connect(":memory:").execute("select 41 + 1").fetchone()[0]]


@cp.function()
def capabilities(args):
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class Data(ctypes.Structure):
        _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))

    libc = ctypes.CDLL(None, use_errno=True)
    data = (Data * 2)()
    assert libc.capget(ctypes.byref(Header(0x20080522, 0)), data) == 0
    sets = [d.effective | d.permitted | d.inheritable for d in data]
    return {"bounding": [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1],  # PR_CAPBSET_READ
            "ambient": [cap for cap in range(64) if libc.prctl(47, 1, cap, 0, 0) == 1],  # PR_CAP_AMBIENT_IS_SET
            "held": sets, "no_new_privs": libc.prctl(39, 0, 0, 0, 0), "seccomp": libc.prctl(21, 0, 0, 0, 0)}


@cp.function()
def ids(args):
    return [os.getuid(), os.geteuid(), os.getgid(), os.getegid()]


@cp.function()
def modules(args):
    return sorted(sys.modules)

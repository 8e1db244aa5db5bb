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
    libc = __import__("ctypes").CDLL(None, use_errno=True)
    bounding = [cap for cap in range(64) if libc.prctl(23, cap, 0, 0, 0) == 1]  # PR_CAPBSET_READ
    return {"bounding": bounding, "no_new_privs": libc.prctl(39, 0, 0, 0, 0), "seccomp": libc.prctl(21, 0, 0, 0, 0)}

"""Filesystem escapes: reading and writing outside its directory and scratch."""

import os

import curvemesh_plugin as cp


@cp.function()
def read(args):
    with open(args["path"], "rb") as f:
        return f.read()


@cp.function()
def listdir(args):
    return sorted(os.listdir(args["path"]))


@cp.function()
def write(args):
    with open(args["path"], "wb") as f:
        f.write(b"written by a plugin")
    return True


@cp.function()
def scratch(args):
    """Its own scratch works: write, read back, list, remove, and the tmpfs size."""
    with open("note.txt", "w") as f:
        f.write(args["text"])
    os.mkdir("sub")
    os.rename("note.txt", "sub/note.txt")
    with open(os.path.join(os.environ["TMPDIR"], "sub", "note.txt")) as f:
        text = f.read()
    listing = os.listdir(".")
    os.remove("sub/note.txt")
    os.rmdir("sub")
    vfs = os.statvfs(".")
    return {"text": text, "listing": listing, "cwd": os.getcwd(), "bytes": vfs.f_blocks * vfs.f_frsize}


@cp.function()
def run_from_scratch(args):
    """A shared library written to scratch cannot be mapped executable (noexec tmpfs)."""
    import ctypes
    with open("lib.so", "wb") as out, open(args["library"], "rb") as src:
        out.write(src.read())
    ctypes.CDLL(os.path.abspath("lib.so"))
    return True

"""Durable, private file replacement: the one way state files are rewritten."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def _no_step(step: str) -> None:
    """No fault injection (production)."""


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path: for a directory this makes the renames, creations and
    deletions of its entries durable, which fsyncing the files alone does not."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cached(file: int | Path) -> None:
    """Ask the kernel to drop a file's pages (an open descriptor, or a path opened without following
    a symlink) from the page cache (``POSIX_FADV_DONTNEED``), for large files written or read once
    (a backup archive, a restore's staging and what it imports). Pages not written back yet stay:
    sync a file first to drop what was written. Where the call does not exist the pages stay for
    the kernel to evict in its own time."""
    if not hasattr(os, "posix_fadvise"):
        return
    if isinstance(file, int):
        os.posix_fadvise(file, 0, 0, os.POSIX_FADV_DONTNEED)
        return
    fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600,
                 checkpoint: Callable[[str], None] = _no_step) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one,
    never a mix: a temporary file (created with ``mode``, never through the umask) is
    written and fsynced, renamed over ``path``, and the directory is fsynced.

    ``checkpoint`` is called with ``"state-written"`` and ``"state-renamed"``: tests use it
    to kill the process at each step.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    checkpoint("state-written")
    os.replace(tmp, path)
    fsync_path(path.parent)
    checkpoint("state-renamed")

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


def drop_cached(fd: int) -> None:
    """Ask the kernel to drop the open file ``fd``'s pages from the page cache
    (``POSIX_FADV_DONTNEED``), for a large file written once and not read again soon (a backup
    archive). Pages not written back yet stay: sync the file first to drop what was written. Where
    the call does not exist the pages stay for the kernel to evict in its own time."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


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

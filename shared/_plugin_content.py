"""A package's content: walking its files without ever following a link, its limits, and the
canonical content hash a publisher signs.

The hash covers every regular file under the package directory except the top-level
``plugin.sig``, sorted by POSIX relative path (bytewise UTF-8). Each contributes one line,
``<relpath> NUL <x|-> NUL <size> NUL <sha256 hex> LF`` (``x``: executable by its owner), and the
hash is ``sha256:`` + SHA-256 of ``curvemesh-plugin-content:v1 LF`` followed by the lines. Empty
directories carry no content. Symlinks, devices, fifos and sockets are refused wherever they are,
never followed or opened; so are names with non-printable characters or a component starting with
``..``, and packages beyond the limits below.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._plugin_grants import PackageRefused, show
from ._plugin_manifest import MANIFEST_FILE

SIGNATURE_FILE: Final = "plugin.sig"
MAX_FILES: Final = 1000
MAX_DIRECTORIES: Final = 1000
MAX_DEPTH: Final = 32
MAX_FILE_BYTES: Final = 16 << 20
MAX_TOTAL_BYTES: Final = 64 << 20
HASH_DOMAIN: Final = b"curvemesh-plugin-content:v1\n"
CHUNK: Final = 1 << 16
_MiB: Final = 1 << 20


def check_part(part: str, where: str) -> None:
    """Refuse (``unsafe_package``) a path component that is empty, ``.``, starts with ``..``, holds a
    non-printable character (controls, separators other than the space, lone surrogates) or a
    slash; ``where`` (the package and the path) starts the message."""
    if not part or part == "." or part.startswith("..") or "/" in part or not part.isprintable():
        raise PackageRefused("unsafe_package", f"{where}: the name {show(part)} is unsafe (empty, non-printable, "
                                               "or starting with '..'); a package's paths are printable and stay "
                                               "inside it")


class Budget:
    """The limits of one package, counted as its files are admitted and read."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.files = 0
        self.total = 0

    def admit(self, rel: str, size: int) -> None:
        """Count one more file of ``size`` bytes as declared (by ``stat`` or a tar header)."""
        self.files += 1
        if self.files > MAX_FILES:
            raise PackageRefused("too_large", f"{self.where}: more than {MAX_FILES} files; a plugin package "
                                              "holds at most that many")
        if size > MAX_FILE_BYTES:
            raise PackageRefused("too_large", f"{self.where}: {rel} is {size} bytes; a file of a package is at "
                                              f"most {MAX_FILE_BYTES // _MiB} MiB")
        if self.total + size > MAX_TOTAL_BYTES:
            raise PackageRefused("too_large", f"{self.where}: the package is over {MAX_TOTAL_BYTES // _MiB} MiB "
                                              f"(reached at {rel})")

    def read(self, rel: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` passed through, counted against the file and total limits as they come: a file
        that grows after it was admitted is refused, never read past the limits."""
        size = 0
        for chunk in chunks:
            size += len(chunk)
            self.total += len(chunk)
            if size > MAX_FILE_BYTES or self.total > MAX_TOTAL_BYTES:
                raise PackageRefused("too_large", f"{self.where}: {rel} grew past the limits while it was read "
                                                  f"({MAX_FILE_BYTES // _MiB} MiB a file, "
                                                  f"{MAX_TOTAL_BYTES // _MiB} MiB a package)")
            yield chunk


def fd_chunks(fd: int) -> Iterator[bytes]:
    """The contents of an open file, a chunk at a time."""
    while chunk := os.read(fd, CHUNK):
        yield chunk


@dataclass(frozen=True, slots=True)
class PackageFile:
    """A regular file of a package while it is visited: its POSIX relative path, an open descriptor,
    whether its owner may execute it, and its size when it was opened."""

    rel: str
    fd: int
    executable: bool
    size: int


def open_directory(directory: Path) -> int:
    """An ``O_NOFOLLOW`` descriptor of the package directory: a missing one is ``not_found``, a
    symlink or anything but a directory ``unsafe_package``."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PackageRefused("not_found", f"{directory}: no such package directory") from None
    except OSError as exc:
        raise PackageRefused("unsafe_package", f"{directory}: cannot be opened as a package directory "
                                               f"({exc.strerror}); give the path of a real directory, not a "
                                               "symlink") from None


def walk_files(directory: Path, visit: Callable[[PackageFile], None], budget: Budget, *,
               skip_signature: bool) -> None:
    """Call ``visit`` for every regular file under ``directory`` (the top-level ``plugin.sig`` left
    out when ``skip_signature``), after ``budget`` admitted it. Every directory and file is opened
    relative to its parent's descriptor with ``O_NOFOLLOW``, so a link swapped in while the walk runs
    is refused, not followed."""
    root = open_directory(directory)
    try:
        _walk(root, "", 0, [0], visit, budget, skip_signature)
    finally:
        os.close(root)


def _walk(dir_fd: int, prefix: str, depth: int, directories: list[int], visit: Callable[[PackageFile], None],
          budget: Budget, skip_signature: bool) -> None:
    where = budget.where
    try:
        with os.scandir(dir_fd) as listing:
            names = sorted(entry.name for entry in listing)
    except OSError as exc:
        raise PackageRefused("unsafe_package", f"{where}: {prefix or '.'} cannot be listed ({exc.strerror})") \
            from None
    for name in names:
        rel = prefix + name
        check_part(name, f"{where}: {show(rel)}")
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise PackageRefused("unsafe_package", f"{where}: {show(rel)} cannot be read ({exc.strerror})") \
                from None
        if stat.S_ISDIR(info.st_mode):
            directories[0] += 1
            if depth + 1 > MAX_DEPTH or directories[0] > MAX_DIRECTORIES:
                raise PackageRefused("too_large", f"{where}: more than {MAX_DIRECTORIES} directories or deeper "
                                                  f"than {MAX_DEPTH} levels (at {show(rel)})")
            child = _open(name, dir_fd, rel, where, os.O_DIRECTORY)
            try:
                _walk(child, rel + "/", depth + 1, directories, visit, budget, skip_signature)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            if skip_signature and rel == SIGNATURE_FILE:
                continue
            budget.admit(rel, info.st_size)
            fd = _open(name, dir_fd, rel, where, os.O_NONBLOCK)
            try:
                opened = os.fstat(fd)
                if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    raise PackageRefused("unsafe_package", f"{where}: {show(rel)} changed while it was read")
                visit(PackageFile(rel, fd, bool(opened.st_mode & stat.S_IXUSR), opened.st_size))
            finally:
                os.close(fd)
        else:
            raise PackageRefused("unsafe_package", f"{where}: {show(rel)} is {_kind(info.st_mode)}; a package holds "
                                                   "only regular files and directories (links are never followed)")


def _open(name: str, dir_fd: int, rel: str, where: str, flags: int) -> int:
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags, dir_fd=dir_fd)
    except OSError as exc:
        raise PackageRefused("unsafe_package", f"{where}: {show(rel)} cannot be opened ({exc.strerror}); it may "
                                               "have been replaced by a link while it was read") from None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@dataclass(frozen=True, slots=True)
class PackageContents:
    """What one walk of a package found: its content hash, the relative paths the hash covers, and
    the manifest's bytes exactly as they were hashed (so what is parsed is what was signed, even if
    the file changed after the walk)."""

    content_hash: str
    files: frozenset[str]
    manifest: bytes


def package_contents(directory: Path) -> PackageContents:
    """Walk the package at ``directory`` once (see the module notes). A package without a top-level
    ``plugin.toml`` is refused (``bad_manifest``)."""
    lines: list[tuple[bytes, bytes]] = []
    manifest: list[bytes] = []

    def visit(item: PackageFile) -> None:
        digest = hashlib.sha256()
        size = 0
        for chunk in budget.read(item.rel, fd_chunks(item.fd)):
            digest.update(chunk)
            size += len(chunk)
            if item.rel == MANIFEST_FILE:
                manifest.append(chunk)
        path = item.rel.encode("utf-8")
        flag = "x" if item.executable else "-"
        lines.append((path, path + f"\0{flag}\0{size}\0{digest.hexdigest()}\n".encode("ascii")))

    budget = Budget(str(directory))
    walk_files(directory, visit, budget, skip_signature=True)
    files = frozenset(line[0].decode("utf-8") for line in lines)
    if MANIFEST_FILE not in files:
        raise PackageRefused("bad_manifest", f"{directory}: no {MANIFEST_FILE} at the top of the package; every "
                                             "plugin package has its manifest there")
    digest = hashlib.sha256(HASH_DOMAIN)
    for _, line in sorted(lines):
        digest.update(line)
    return PackageContents("sha256:" + digest.hexdigest(), files, b"".join(manifest))


def content_hash(directory: Path) -> str:
    """The canonical content hash (``sha256:<64 hex>``) of the package at ``directory``; see the
    module notes for exactly what it covers and what is refused."""
    return package_contents(directory).content_hash

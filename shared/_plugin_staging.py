"""Staging a package: copying a directory, or unpacking an archive, into a private directory the
caller owns, so that what is verified and then run is a copy nobody else can change.

Every file is created by this module with ``O_EXCL | O_NOFOLLOW`` relative to a directory
descriptor it opened itself, mode 0400 (0500 when its owner could execute the original), inside
directories of mode 0700; nothing is written anywhere else. A directory source is walked without
following links (:mod:`._plugin_content`). An archive (``.tar.gz``, ``.tgz``, ``.tar``) is checked
whole before a byte is written: its size after decompression, every member's name (no absolute
path, no ``..``, printable), type (regular files and directories only: no links, devices, fifos or
sparse files), tarfile's own ``data`` extraction filter, duplicates and the package limits; a single
top-level directory is descended into. The contents are then copied out member by member, counted
again as they are read. On any refusal what was written is removed.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final

from ._plugin_content import (
    CHUNK,
    MAX_DEPTH,
    MAX_DIRECTORIES,
    MAX_FILES,
    MAX_TOTAL_BYTES,
    Budget,
    PackageFile,
    check_part,
    fd_chunks,
    walk_files,
)
from ._plugin_grants import PackageRefused, show

ARCHIVE_SUFFIXES: Final = (".tar.gz", ".tgz", ".tar")
#: What an archive may be, compressed or not: the content plus room for headers and padding.
ARCHIVE_MAX_BYTES: Final = MAX_TOTAL_BYTES + (16 << 20)
#: The name of the staged package directory inside the caller's staging directory.
STAGED_NAME: Final = "package"
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def stage_package(source: Path, staging: Path) -> Path:
    """Copy the package at ``source`` (a directory, or a ``.tar.gz``/``.tgz``/``.tar`` archive of
    one) into ``staging``, an empty directory of the caller's, and return the staged package
    directory (``staging/package``). Refuses with :class:`PackageRefused`: a missing source
    (``not_found``), anything unsafe in it or another kind of file (``unsafe_package``), a package
    over the limits (``too_large``)."""
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise PackageRefused("not_found", f"{source}: no such file or directory; give the path of a plugin "
                                          "package (a directory, or a .tar.gz, .tgz or .tar archive)") from None
    except OSError as exc:
        raise PackageRefused("not_found", f"{source}: cannot be read ({exc.strerror})") from None
    is_archive = stat.S_ISREG(info.st_mode) and source.name.endswith(ARCHIVE_SUFFIXES)
    if not stat.S_ISDIR(info.st_mode) and not is_archive:
        raise PackageRefused("unsafe_package", f"{source}: not a plugin package; give a directory or a .tar.gz, "
                                               ".tgz or .tar archive (a symlink is never followed)")
    root = _staging_root(staging)
    try:
        os.mkdir(STAGED_NAME, 0o700, dir_fd=root)
        writer = _Writer(os.open(STAGED_NAME, _DIR_FLAGS, dir_fd=root))
    except BaseException:
        os.close(root)
        raise
    try:
        if is_archive:
            _unpack(source, writer, staging / STAGED_NAME)
        else:
            budget = Budget(str(source))

            def copy(item: PackageFile) -> None:
                chunks = budget.read(item.rel, fd_chunks(item.fd))
                writer.write(tuple(item.rel.split("/")), chunks, item.executable)

            walk_files(source, copy, budget, skip_signature=False)
        writer.finish()
    except BaseException:
        writer.close()
        shutil.rmtree(STAGED_NAME, dir_fd=root)
        raise
    finally:
        os.close(root)
    return staging / STAGED_NAME


def _staging_root(staging: Path) -> int:
    """A descriptor of ``staging`` once it is checked to be an empty real directory of ours that
    nobody else may write to."""
    try:
        fd = os.open(staging, _DIR_FLAGS)
    except OSError as exc:
        raise PackageRefused("unsafe_package", f"{staging}: the staging directory cannot be opened "
                                               f"({exc.strerror}); create it empty, mode 0700") from None
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or info.st_mode & 0o022 or os.listdir(fd):
        os.close(fd)
        raise PackageRefused("unsafe_package", f"{staging}: the staging directory must be empty, ours, and "
                                               "writable by nobody else (create it with mode 0700)")
    return fd


class _Writer:
    """Creates the staged tree below one directory descriptor, never following anything."""

    def __init__(self, root: int) -> None:
        os.fchmod(root, 0o700)
        self.dirs: dict[tuple[str, ...], int] = {(): root}

    def directory(self, parts: tuple[str, ...]) -> int:
        if parts not in self.dirs:
            parent = self.directory(parts[:-1])
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                raise PackageRefused("unsafe_package", f"{'/'.join(parts)}: cannot be created in the staging "
                                                       f"directory ({exc.strerror})") from None
            os.fchmod(fd, 0o700)
            self.dirs[parts] = fd
        return self.dirs[parts]

    def write(self, parts: tuple[str, ...], chunks: Iterator[bytes], executable: bool) -> None:
        parent = self.directory(parts[:-1])
        mode = 0o500 if executable else 0o400
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=parent)
        except FileExistsError:
            raise PackageRefused("unsafe_package", f"{show('/'.join(parts))} appears twice in the package") from None
        try:
            os.fchmod(fd, mode)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self) -> None:
        for fd in self.dirs.values():
            os.fsync(fd)
        self.close()

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs = {}


def _unpack(source: Path, writer: _Writer, destination: Path) -> None:
    where = str(source)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PackageRefused("unsafe_package", f"{where}: cannot be opened ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as raw:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size > ARCHIVE_MAX_BYTES:
            raise PackageRefused("too_large", f"{where}: an archive of a plugin package is a regular file of at "
                                              f"most {ARCHIVE_MAX_BYTES >> 20} MiB")
        compressed = not source.name.endswith(".tar")
        try:
            if compressed:
                _check_decompressed(raw, where)
                raw.seek(0)
            with tarfile.open(fileobj=raw, mode="r:gz" if compressed else "r:") as tar:
                members = _check_members(tar, where, destination)
                budget = Budget(where)
                for parts, member in members:
                    _extract(tar, member, parts, writer, budget)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise PackageRefused("unsafe_package", f"{where}: not a readable {'gzip-compressed ' * compressed}tar "
                                                   f"archive ({type(exc).__name__})") from None


def _check_decompressed(raw: IO[bytes], where: str) -> None:
    """Refuse a gzip stream that decompresses to more than :data:`ARCHIVE_MAX_BYTES` (a
    decompression bomb), reading it once without keeping it."""
    size = 0
    with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > ARCHIVE_MAX_BYTES:
                raise PackageRefused("too_large", f"{where}: decompresses to more than {ARCHIVE_MAX_BYTES >> 20} "
                                                  "MiB; a plugin package is smaller")


def _check_members(tar: tarfile.TarFile, where: str,
                   destination: Path) -> list[tuple[tuple[str, ...], tarfile.TarInfo]]:
    """Every member checked, before anything is written: the files to extract, with their paths
    inside the package (a single top-level directory taken off)."""
    budget = Budget(where)
    files: dict[tuple[str, ...], tarfile.TarInfo] = {}
    directories: set[tuple[str, ...]] = set()
    count = 0
    for member in tar:
        count += 1
        if count > MAX_FILES + MAX_DIRECTORIES:
            raise PackageRefused("too_large", f"{where}: more than {MAX_FILES} files and {MAX_DIRECTORIES} "
                                              "directories")
        name = member.name
        if name.startswith("/"):
            raise PackageRefused("unsafe_package", f"{where}: member {show(name)} has an absolute path")
        parts = tuple(part for part in name.split("/") if part not in ("", "."))
        for part in parts:
            check_part(part, f"{where}: member {show(name)}")
        if not (member.isreg() or member.isdir()) or member.issparse():
            raise PackageRefused("unsafe_package", f"{where}: member {show(name)} is {_kind(member)}; a package "
                                                   "holds only regular files and directories")
        try:
            tarfile.data_filter(member, str(destination))  # checks only: this module writes the files
        except tarfile.FilterError as exc:
            raise PackageRefused("unsafe_package", f"{where}: member {show(name)} is refused by tarfile's data "
                                                   f"filter ({type(exc).__name__})") from None
        if len(parts) > MAX_DEPTH:
            raise PackageRefused("too_large", f"{where}: member {show(name)} is deeper than {MAX_DEPTH} levels")
        prefixes = {parts[:i] for i in range(1, len(parts))}
        if parts in files or prefixes & files.keys() or (member.isreg() and parts in directories):
            raise PackageRefused("unsafe_package", f"{where}: member {show(name)} appears twice, or as both a "
                                                   "file and a directory")
        directories |= prefixes | ({parts} if member.isdir() and parts else set())
        if member.isreg():
            if not parts:
                raise PackageRefused("unsafe_package", f"{where}: member {show(name)} is a file without a name")
            budget.admit("/".join(parts), member.size)
            budget.total += member.size
            files[parts] = member
    tops = {parts[0] for parts in files} | {parts[0] for parts in directories}
    strip = 1 if len(tops) == 1 and (next(iter(tops)),) in directories else 0
    return [(parts[strip:], member) for parts, member in files.items()]


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    if member.issparse():
        return "a sparse file"
    return "not a regular file"


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...], writer: _Writer,
             budget: Budget) -> None:
    """Copy one checked member out, counted against ``budget`` again as it is read."""
    where = budget.where
    stream = tar.extractfile(member)
    if stream is None:
        raise PackageRefused("unsafe_package", f"{where}: member {show(member.name)} cannot be read")
    rel = "/".join(parts)
    budget.admit(rel, member.size)
    size = 0

    def chunks() -> Iterator[bytes]:
        nonlocal size
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            yield chunk

    with stream:
        writer.write(parts, budget.read(rel, chunks()), bool(member.mode & stat.S_IXUSR))
    if size != member.size:
        raise PackageRefused("unsafe_package", f"{where}: member {show(member.name)} is shorter than its header "
                                               "says (a truncated archive)")

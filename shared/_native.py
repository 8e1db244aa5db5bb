"""Compiled twins of Python modules: whether to use them, and the build record that decides it.

A package may have some of its modules compiled (by mypyc, ``tools/build_native.py``) into
extension files beside their sources. Python's import system prefers an extension file to a source
file of the same name, whatever their ages, so a compiled module that no longer matches its source
would run silently in its place: a change to a check in the source would not take effect. Worse,
the compiler inlines ``Final`` constants of the modules it reads, so even an unchanged module can
be stale when a module it imports changed.

So every build writes a record (:data:`RECORD`, beside the modules) of the interpreter it was
built for, the modules it compiled, a SHA-256 of every extension file it left in the directory,
and one of every source file the modules import, transitively, within the project. :func:`load`
checks the record against the files as they are now; unless every check holds, it puts a finder
first on ``sys.meta_path`` that imports each of the package's compiled modules from its source
instead, so a stale or swapped build can make a process slower, never different.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final

from ._files import write_atomic

#: ``CURVEMESH_NATIVE=0`` makes every package run its sources even when a valid build is present.
ENV: Final = "CURVEMESH_NATIVE"
#: The build record's file name, in the package's directory.
RECORD: Final = "native.json"
_RECORD_FORMAT: Final = 2
#: The extension suffix of this interpreter (what a build names its files with): a build for
#: another one is not used.
ABI: Final = importlib.machinery.EXTENSION_SUFFIXES[0]


@dataclass(frozen=True, slots=True)
class Native:
    """What :func:`load` decided for one package: ``compiled`` when its compiled modules are the
    ones imported; ``reason`` says why not (empty when compiled)."""

    package: str
    compiled: bool
    reason: str


def _by_suffix(directory: Path) -> Iterator[tuple[str, Path]]:
    """``(module name, file)`` of every extension file in ``directory``, in the order Python's import
    tries the suffixes (a ``.so`` file is found under each suffix it ends with)."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in directory.glob(f"*{suffix}"):
            yield path.name[:-len(suffix)], path


def compiled_files(directory: Path) -> dict[str, Path]:
    """Module name -> the extension file Python would import for it, for every module of
    ``directory`` that has one beside its source (the compiler's support library has no source).
    Every suffix this interpreter imports counts (a stray ``v2.abi3.so`` would run too)."""
    found: dict[str, Path] = {}
    for name, path in _by_suffix(directory):
        if name not in found and "." not in name and (directory / f"{name}.py").is_file():
            found[name] = path
    return found


def extension_files(directory: Path) -> list[Path]:
    """Every file in ``directory`` that Python would import as an extension module, sorted."""
    return sorted({path for _, path in _by_suffix(directory)})


def digest(path: Path) -> str:
    """SHA-256 of one file (a source or a compiled file), hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_record(directory: Path, root: Path, modules: Sequence[str], sources: Mapping[Path, str]) -> None:
    """Record a build of ``modules`` (names in the package at ``directory``) from ``sources``
    (absolute path -> :func:`digest`, taken before compiling) below ``root``, the directory the
    top-level package is imported from."""
    record = {"format": _RECORD_FORMAT, "abi": ABI, "modules": sorted(modules),
              "binaries": {path.name: digest(path) for path in extension_files(directory)},
              "sources": {str(path.relative_to(root)): hexdigest for path, hexdigest in sorted(sources.items())}}
    write_atomic(directory / RECORD, (json.dumps(record, indent=1) + "\n").encode(), mode=0o644)


def stale(package: str, directory: Path) -> str:
    """Why the compiled modules of ``package`` (at ``directory``) must not be used: empty when the
    build record vouches for every one of them (:envvar:`CURVEMESH_NATIVE` aside)."""
    return _mismatch(package, directory, compiled_files(directory))


def _mismatch(package: str, directory: Path, built: Mapping[str, Path]) -> str:
    """Why the build record does not vouch for ``built`` (empty when it does)."""
    if not built:
        return "no module of this package is compiled (make native)"
    root = directory.parents[package.count(".")]
    try:
        record = json.loads((directory / RECORD).read_bytes())
    except FileNotFoundError:
        return f"no build record ({RECORD}) vouches for the compiled modules"
    except (OSError, ValueError):
        return f"the build record ({RECORD}) is unreadable"
    if not (isinstance(record, dict) and record.get("format") == _RECORD_FORMAT
            and isinstance(record.get("modules"), list) and isinstance(record.get("sources"), dict)
            and isinstance(record.get("binaries"), dict)
            and not any(Path(name).is_absolute() or ".." in Path(name).parts for name in record["sources"])):
        return f"the build record ({RECORD}) is not one this code wrote"
    if record.get("abi") != ABI:
        return "the modules were compiled for another interpreter"
    if sorted(built) != record["modules"]:
        return "the compiled modules are not the ones the build record lists"
    # Every extension file, not only the modules': a stray ``v2.abi3.so`` is caught here too.
    binaries = {path.name: path for path in extension_files(directory)}
    if sorted(binaries) != sorted(record["binaries"]):
        return "the compiled files are not the ones the build record lists"
    for name, path in binaries.items():
        if digest(path) != record["binaries"][name]:
            return f"{name} is not the file the build made"
    for relative, expected in record["sources"].items():
        path = root / relative
        try:
            if digest(path) != expected:
                return f"{relative} changed since the modules were compiled"
        except OSError:
            return f"{relative} is gone since the modules were compiled"
    return ""


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the named modules from their source files, ahead of the extension files beside them."""

    def __init__(self, sources: Mapping[str, Path]) -> None:
        self._sources = dict(sources)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self._sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def load(package: str, directory: Path) -> Native:
    """Decide, before any of them is imported, whether the compiled modules of ``package`` (at
    ``directory``) are used: only when the build record vouches for every one of them and
    :data:`ENV` is not ``0``. Otherwise each is imported from its source from now on."""
    built = compiled_files(directory)
    reason = _mismatch(package, directory, built)
    if not built:
        return Native(package, False, reason)
    if not reason and os.environ.get(ENV) == "0":
        reason = f"{ENV}=0"
    if not reason:
        return Native(package, True, "")
    sys.meta_path.insert(0, _FromSource({f"{package}.{name}": directory / f"{name}.py" for name in built}))
    return Native(package, False, reason)

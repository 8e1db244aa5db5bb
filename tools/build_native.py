"""Compile the hot modules of :data:`GROUPS` with mypyc, beside their sources (``make native``).

usage: python -m tools.build_native [--force | --clean]

Without options it compiles each group whose build is missing or stale (shared/_native.py says
when a build is stale) and prints nothing for the others: every ``make up``, ``make test`` and
``make bench`` runs it. ``--force`` compiles every group again; ``--clean`` removes what was built.

Why compile at all: a key-value get is a few microseconds, and a profile put two fifths of it in
the interpreter stepping between the key hash, the lookup and the checks of the entry formats'
modules (issue 18). mypyc turns those modules into C extension modules that do the same things
through the same libraries (hashlib, cryptography, rocksdict); a get then takes about an eighth
less CPU (docs/storage.md, "Compiled formats"), and the known-answer tests hold both builds to
the same bytes.

A build needs a C compiler and the interpreter's headers. Without them, or if the compiler fails,
it says so on stderr and exits 0: the modules then run from their sources, correct and slower,
and the test suite's ``test_the_kv_formats_run_compiled`` says what is missing. A build is
recorded (shared/_native.py) only once every module of its group compiled, after the old files
were removed, so an interrupted build leaves the sources in use, never a mix.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from shared.native import RECORD, compiled_files, digest, extension_files, stale, write_record

__all__ = ["GROUPS", "BuildError", "NoToolchain", "build", "clean", "import_closure", "main"]

REPO: Final = Path(__file__).resolve().parent.parent
#: Package -> the modules of it that are compiled together (one mypyc group each). A format's
#: Material subclasses _material's VersionMaterial, and a compiled class can only have compiled
#: bases, so the three go together.
GROUPS: Final = {"services.storage.kv.sealing": ("_material", "v1", "v2")}
# What mypy is told while mypyc compiles: types are read from every module imported, silently;
# libraries without type information are Any. (The project's own mypy settings check shared/ only.)
_MYPY_CONFIG: Final = """[mypy]
python_version = {major}.{minor}
follow_imports = silent
ignore_missing_imports = True
cache_dir = {cache}
"""
_SETUP: Final = """import sys
from setuptools import setup
from mypyc.build import mypycify
config, group, target, temp, lib, *files = sys.argv[1:]
setup(name="curvemesh-native", packages=[], py_modules=[],
      ext_modules=mypycify(["--config-file", config, *files], group_name=group, target_dir=target),
      script_args=["build_ext", "--inplace", "--build-temp", temp, "--build-lib", lib])
"""
_BUILD_TIMEOUT: Final = 600.0


class BuildError(Exception):
    """The group could not be compiled: mypyc or the C compiler failed (the message has the end of its output)."""


class NoToolchain(BuildError):
    """This machine cannot compile: no C compiler, no Python headers or no mypyc (the message says which)."""


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(root: Path, modules: Iterable[str]) -> set[Path]:
    """The source files below ``root`` of ``modules`` and of every module they import, transitively
    (``import x`` and ``from x import y``, relative or not, wherever they appear). What the compiler
    read, so what a build depends on: it inlines the ``Final`` constants of imported modules."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        path = _module_file(root, module)
        if path is None or path in seen:
            continue
        seen.add(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                # ``from x import y`` imports x, and y when y is a module (a name that is not resolves to nothing).
                todo.append(base)
                todo.extend(f"{base}.{alias.name}" for alias in node.names)
    return seen


def clean(root: Path, package: str) -> None:
    """Remove the build of ``package``: its record first (so nothing vouches for a half-removed
    build), then every extension file in its directory: the compiled modules, mypyc's support
    library, and any left by an earlier build of a module since removed (importable by name even
    without its source). Files are unlinked, never rewritten: a running process keeps the copy it
    loaded."""
    directory = root.joinpath(*package.split("."))
    (directory / RECORD).unlink(missing_ok=True)
    for path in extension_files(directory):
        path.unlink(missing_ok=True)


def _toolchain() -> str:
    """What is missing to compile here (empty when nothing is)."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return f"no Python headers (Python.h) in {sysconfig.get_paths()['include']}"
    try:
        import mypyc  # noqa: F401 - only whether it is installed
    except ImportError:
        return "mypyc is not installed (make install brings it, with mypy)"
    return ""


def build(root: Path, package: str, modules: tuple[str, ...]) -> float:
    """Compile ``modules`` of ``package`` (below ``root``) with mypyc, in place, and record the build;
    seconds taken. :class:`BuildError` when it cannot, with the previous build removed either way."""
    started = time.monotonic()
    clean(root, package)
    missing = _toolchain()
    if missing:
        raise NoToolchain(missing)
    directory = root.joinpath(*package.split("."))
    # Digests are taken before compiling: a source edited meanwhile makes the build stale, not wrong.
    sources = {path: digest(path) for path in import_closure(root, (f"{package}.{name}" for name in modules))}
    files = [str((directory / f"{name}.py").relative_to(root)) for name in modules]
    with tempfile.TemporaryDirectory(prefix="cmnative") as tmp:
        work = Path(tmp)
        config = work / "mypy.ini"
        config.write_text(_MYPY_CONFIG.format(major=sys.version_info.major, minor=sys.version_info.minor,
                                              cache=work / "cache"))
        argv = [sys.executable, "-c", _SETUP, str(config), f"{package}.native", str(work / "c"), str(work / "temp"),
                str(work / "lib"), *files]
        try:
            # This interpreter, a fixed script, and paths this function made: nothing from outside.
            done = subprocess.run(argv, cwd=root, capture_output=True, text=True,  # noqa: S603
                                  timeout=_BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            clean(root, package)
            raise BuildError(f"the compiler took more than {_BUILD_TIMEOUT:.0f} s") from None
    if done.returncode != 0 or sorted(compiled_files(directory)) != sorted(modules):
        clean(root, package)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BuildError(f"mypyc failed (exit {done.returncode}):\n{tail}")
    write_record(directory, root, modules, sources)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--force"], ["--clean"]):
        print("usage: python -m tools.build_native [--force | --clean]", file=sys.stderr)
        return 2
    for package, modules in GROUPS.items():
        if args == ["--clean"]:
            clean(REPO, package)
            continue
        reason = stale(package, REPO.joinpath(*package.split(".")))
        if not reason and args != ["--force"]:
            continue
        try:
            seconds = build(REPO, package, modules)
        except BuildError as exc:
            then = ("install a C compiler and the Python headers (Debian: apt-get install gcc python3-dev)"
                    if isinstance(exc, NoToolchain) else "fix what the compiler reports above")
            print(f"tools.build_native: {package} is not compiled and runs from its sources, slower: {exc}\n"
                  f"  To compile it, {then}, then run: make native", file=sys.stderr)
            continue
        why = reason or "--force"
        print(f"tools.build_native: compiled {package} ({', '.join(modules)}) in {seconds:.1f} s ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

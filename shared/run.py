"""``python -m shared.run ENTRY``: run a service that lives outside the project.

ENTRY is ``package.module:ClassName`` (imported from ``sys.path``) or
``path/to/file.py:ClassName`` (loaded from that file, whose folder is put first on
``sys.path`` as ``python file.py`` would, so it can import its neighbours). The class
must be a :class:`~shared.Service` subclass with a valid ``name``; that name is its
mesh identity, so its keypair is ``$CURVEMESH_HOME/keys/<name>.key_secret``.

``--as NAME`` (what meshctl's generated supervisord program passes: the name the service is declared
as) makes the class's ``name`` a checked claim: a file declared as ``notes`` whose class says
``storage`` would otherwise run with storage's keypair, so it is refused. A file is loaded only when
it and its folder are the user's (or root's) and nobody else can write them: its code runs with the
service's keys.

Once loaded, the service runs exactly as the project's own ``python -m services.<name>``
do, through :func:`~shared.run_service`: same logging, SIGTERM/SIGINT for a graceful
stop (exit 0), exit 2 with one line on stderr when it cannot start. A bad ENTRY also
exits 2 with one line that names what is wrong and the expected form, never a
traceback: supervisord shows that line, and a traceback would bury it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import stat
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Final

from ._certs import check_name
from ._errors import CertificateError
from ._runtime import run_service
from ._service import Service

USAGE: Final = "usage: python -m shared.run package.module:ClassName | path/to/file.py:ClassName [--as NAME]"
_RESERVED: Final = frozenset({"broker", "mesh"})
_FORMS: Final = "expected package.module:ClassName or path/to/file.py:ClassName"


class EntryError(Exception):
    """ENTRY cannot give a runnable service; the message says what is wrong, in one line."""


def _failed_import(what: str, exc: BaseException) -> EntryError:
    # Where the import failed, not the whole traceback: the innermost frame is enough to find it.
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return EntryError(f"importing {what} failed: {type(exc).__name__}: {detail}{where}"[:400])


def _import_module(dotted: str) -> ModuleType:
    if not all(part.isidentifier() for part in dotted.split(".")):
        raise EntryError(f"{dotted!r} is neither a module name nor a path to a .py file; {_FORMS}")
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        # Only the module itself (or a package above it) missing is a bad ENTRY; a module
        # that exists but imports something missing is that module's own failure.
        if exc.name is not None and (dotted == exc.name or dotted.startswith(exc.name + ".")):
            raise EntryError(f"no module named {dotted!r} on the Python path; {_FORMS}") from None
        raise _failed_import(f"module {dotted!r}", exc) from None
    except Exception as exc:  # noqa: BLE001 - the module's own code failed: one line, no traceback.
        raise _failed_import(f"module {dotted!r}", exc) from None


def _check_private(path: Path) -> None:
    """Refuse code that someone other than us (or root) owns or could change."""
    for place in (path, path.parent):
        info = place.stat()
        if info.st_uid not in (os.getuid(), 0):
            raise EntryError(f"{place} belongs to another user (uid {info.st_uid}); the code runs with the "
                             "service's keys, so it must be yours")
        if info.st_mode & 0o022:
            raise EntryError(f"{place} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                             f"the code runs with the service's keys: run `chmod go-w {place}`")


def _load_file(text: str) -> ModuleType:
    path = Path(text).absolute()
    if not path.is_file():
        raise EntryError(f"no file at {path}; {_FORMS}")
    _check_private(path)
    # A name of its own, so the file never shadows an installed module of the same stem.
    module_name = f"curvemesh_entry_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise EntryError(f"{path} cannot be loaded as a Python module; {_FORMS}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    # Registered before running it: dataclasses (and so @message) look their module up there.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the file's own code failed: one line, no traceback.
        del sys.modules[module_name]
        raise _failed_import(str(path), exc) from None
    return module


def load_entry(entry: str, declared_as: str | None = None) -> type[Service]:
    """Resolve ENTRY to a :class:`~shared.Service` subclass with a valid name (``declared_as``, when
    given), or raise :class:`EntryError` naming what is wrong."""
    source, colon, class_name = entry.rpartition(":")
    if not colon or not source or not class_name:
        raise EntryError(f"{entry!r} has no ':ClassName'; {_FORMS}")
    if not class_name.isidentifier():
        raise EntryError(f"{class_name!r} is not a class name; {_FORMS}")
    is_file = source.endswith(".py") or "/" in source
    module = _load_file(source) if is_file else _import_module(source)
    # vars(), not getattr: only what the module itself defines or imports, no module __getattr__.
    found = vars(module).get(class_name)
    if found is None:
        raise EntryError(f"{source} defines no {class_name!r}; {_FORMS}")
    if not isinstance(found, type) or not issubclass(found, Service) or found is Service:
        raise EntryError(f"{source}:{class_name} is not a subclass of shared.Service")
    if not found.name:
        raise EntryError(f"{source}:{class_name} sets no name: give it name = \"...\", its mesh identity")
    try:
        check_name(found.name)
    except CertificateError as exc:
        raise EntryError(f"{source}:{class_name} has name {found.name!r}: {exc.message}") from None
    if found.name in _RESERVED:
        # "broker" would be the broker's own keypair, and "mesh" is the broker's service name.
        raise EntryError(f"{source}:{class_name} has name {found.name!r}, reserved for the broker; choose another")
    if declared_as is not None and found.name != declared_as:
        raise EntryError(f"{source}:{class_name} has name {found.name!r} but is declared as {declared_as!r}: a "
                         "process runs only under the identity it is declared as")
    return found


def main(argv: list[str] | None = None) -> int:
    """Load ENTRY and run it until SIGTERM; return the exit status (2: bad ENTRY or usage)."""
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    declared_as = None
    if len(args) == 3 and args[1] == "--as":
        declared_as = args[2]
        args = args[:1]
    if len(args) != 1:
        print(f"shared.run: give exactly one ENTRY (and optionally --as NAME); {USAGE}", file=sys.stderr)
        return 2
    try:
        service_class = load_entry(args[0], declared_as)
    except EntryError as exc:
        print(f"shared.run: {exc}", file=sys.stderr)
        return 2
    run_service(service_class)  # exits 2 itself when the service cannot start
    return 0


if __name__ == "__main__":
    sys.exit(main())

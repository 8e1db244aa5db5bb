"""``meshctl --version``: the installed curvemesh's version, found without importlib.metadata.

:func:`importlib.metadata.version` would give the same answer, but importing it (email parsing,
zip support) costs more than a whole interpreter start here, and ``--version`` must be instant.
An installed distribution is a ``curvemesh-<version>.dist-info`` folder on ``sys.path`` whose
``METADATA`` has a ``Version:`` header (the installed-distribution format every installer
writes); the first one on the path wins, as it does for importlib.metadata. A checkout without an
install falls back to its pyproject.toml, and says so.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

DISTRIBUTION: Final = "curvemesh"
PYPROJECT: Final = Path(__file__).resolve().parent.parent.parent / "pyproject.toml"


def installed_version() -> str | None:
    """The version of the first installed curvemesh distribution on ``sys.path``, or None."""
    for entry in sys.path:
        folder = Path(entry or ".")
        try:
            found = sorted(folder.glob(f"{DISTRIBUTION}-*.dist-info"))
        except OSError:
            continue  # an unreadable or vanished path entry holds nothing for us
        for info in found:
            try:
                with (info / "METADATA").open(encoding="utf-8") as metadata:
                    for line in metadata:
                        if line.startswith("Version:"):
                            return line.partition(":")[2].strip()
                        if not line.strip():
                            break  # the headers end at the first blank line
            except OSError:
                continue
    return None


def checkout_version() -> str | None:
    """The version pyproject.toml of this checkout declares for curvemesh, or None."""
    import tomllib
    try:
        project = tomllib.loads(PYPROJECT.read_text("utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    version = project.get("version") if project.get("name") == DISTRIBUTION else None
    return version if isinstance(version, str) else None


def version_line() -> str:
    """What ``meshctl --version`` prints."""
    version = installed_version()
    if version is not None:
        return f"meshctl {version}"
    version = checkout_version()
    if version is not None:
        return f"meshctl {version} (curvemesh is not installed: the version in {PYPROJECT})"
    return f"meshctl (version unknown: {DISTRIBUTION} is not installed and {PYPROJECT} does not name it)"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_line` and exit 0. The version is looked up only when the
    flag is given, never while the parser is built."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> NoReturn:
        print(version_line())
        parser.exit(0)

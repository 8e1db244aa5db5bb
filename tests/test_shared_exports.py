"""``shared`` imports its names on first use (issue 13): the public API is unchanged, and importing
the package, or taking only the configuration's names from it, loads neither zmq nor asyncio."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shared

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("zmq", "asyncio", "structlog", "msgpack", "cryptography", "keyring")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


def test_every_exported_name_resolves_to_what_its_module_defines() -> None:
    where = {**{name: (module, name) for module, names in shared._EXPORTS.items() for name in names},
             **shared._RENAMED}
    assert set(where) | set(shared._SUBMODULES) == set(shared.__all__)
    assert len(where) == sum(len(names) for names in shared._EXPORTS.values()) + len(shared._RENAMED)
    for name, (module, attribute) in where.items():
        defined = getattr(sys.modules.get(f"shared{module}") or __import__(f"shared{module}", fromlist=["_"]),
                          attribute)
        assert getattr(shared, name) is defined, name
    assert shared.certs is sys.modules["shared.certs"]
    assert set(shared.__all__) <= set(dir(shared))


def test_the_type_checkers_imports_name_the_same_modules() -> None:
    """The TYPE_CHECKING imports (what mypy sees) and the lazy table (what runs) must agree."""
    tree = ast.parse((ROOT / "shared" / "__init__.py").read_text("utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    seen: dict[str, tuple[str, str]] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            seen[alias.asname or alias.name] = ("." + (node.module or ""), alias.name)
    expected = {**{name: (module, name) for module, names in shared._EXPORTS.items() for name in names},
                **shared._RENAMED, **{name: (".", name) for name in shared._SUBMODULES}}
    assert seen == expected


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = shared.Nope  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from shared import Nope", {})  # the import statement itself is under test


def test_importing_shared_or_its_configuration_names_loads_nothing_heavy() -> None:
    assert loaded_after("import shared") == []
    assert loaded_after("from shared import PURPOSES, MeshHome, ConfigError, mesh_config") == []
    # The names that need them still bring them, as before.
    assert "zmq" in loaded_after("from shared import MeshClient")

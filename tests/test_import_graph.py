"""The shape of the import graph: ``shared/`` names no service or tool, nothing outside
``shared/`` reaches into its private ``shared._x`` modules (DESIGN.md: every service, ours or a
companion's, builds on shared's public API; issue 12), and the broker's modules import each other
in one direction only (:func:`import_cycles`).

Every ``.py`` file under the project's code folders is parsed with :mod:`ast` (nothing is imported,
so a module with side effects cannot hide or fake an import), and each offending import is reported
with its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = "shared"
CODE_DIRS = ("shared", "services", "tools", "bench", "tests", "examples")
#: Top-level packages ``shared/`` must never import: it is what they build on.
ABOVE_SHARED = ("services", "tools")


def python_files() -> Iterator[Path]:
    """Every ``.py`` file under the code folders that exist, in a stable order."""
    for folder in CODE_DIRS:
        if (ROOT / folder).is_dir():
            yield from sorted(p for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def package_of(path: Path) -> list[str]:
    """The dotted package ``path`` belongs to, as parts (``shared/_x.py`` -> ``["shared"]``)."""
    return list(path.relative_to(ROOT).parent.parts)


def imported_modules(tree: ast.AST, package: list[str]) -> Iterator[tuple[int, str]]:
    """Every module name an import in ``tree`` reaches, with its line: ``import a.b`` gives ``a.b``,
    ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule), relative imports are
    resolved against ``package``, and ``importlib.import_module("a.b")`` / ``__import__("a.b")``
    with a string literal give ``a.b``. A string literal that is itself a Python script (the code a
    test runs in a child process) is parsed too, its imports reported at their line in the file."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import " in node.value \
                and "\n" in node.value:
            try:
                script = ast.parse(node.value)
            except SyntaxError:
                continue  # prose, not a script
            for line, module in imported_modules(script, []):
                yield node.lineno + line - 1, module
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else list(package)
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def is_private_shared(module: str) -> bool:
    """True for ``shared._x`` and anything below it."""
    parts = module.split(".")
    return len(parts) > 1 and parts[0] == SHARED and parts[1].startswith("_") and parts[1] != "__init__"


def violations() -> list[str]:
    """``file:line: what`` for every import that breaks the two rules."""
    found: dict[tuple[Path, int], str] = {}  # one report per import statement, its first offence
    for path in python_files():
        if path == Path(__file__).resolve():
            continue  # its examples of what the rules catch are strings, not imports
        relative = path.relative_to(ROOT)
        inside_shared = relative.parts[0] == SHARED
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(relative))
        for line, module in imported_modules(tree, package_of(path)):
            if inside_shared and module.split(".")[0] in ABOVE_SHARED:
                found.setdefault((relative, line), f"shared/ imports {module} (shared/ names no service or tool)")
            elif not inside_shared and is_private_shared(module):
                found.setdefault((relative, line), f"imports the private {module} (use shared's public API)")
    return [f"{path}:{line}: {what}" for (path, line), what in sorted(found.items())]


def test_the_checker_sees_every_form_of_import() -> None:
    """The rules catch each form they promise to, so an empty report below means something."""
    source = (
        "import shared._a\n"
        "from shared._b import x\n"
        "from shared import _c, fine\n"
        "import services.broker\n"
        "from tools import meshctl_cli\n"
        "from .. import services\n"
        "importlib.import_module('services.audit')\n"
        "__import__('tools.x')\n"
        "CHILD = \"\"\"\nimport json\nfrom shared._d import y\n\"\"\"\n"
    )
    modules = {m for _, m in imported_modules(ast.parse(source), ["shared", "sub"])}
    assert {m for m in modules if is_private_shared(m)} == {
        "shared._a", "shared._b", "shared._b.x", "shared._c", "shared._d", "shared._d.y"}
    assert {m for m in modules if m.split(".")[0] in ABOVE_SHARED} == {
        "services.broker", "tools", "tools.meshctl_cli", "services.audit", "tools.x"}
    assert "shared.services" in modules  # relative imports resolve inside the package
    assert (11, "shared._d") in set(imported_modules(ast.parse(source), []))  # a child script's line
    assert not is_private_shared("shared.fine") and not is_private_shared("shared.__init__")


def test_shared_names_no_service_and_nothing_outside_reaches_into_it() -> None:
    problems = violations()
    assert not problems, "imports that break the layering:\n" + "\n".join(problems)


def package_name(package_dir: Path) -> str:
    """The dotted name of the package at ``package_dir``: its path below the project root
    (``services.broker``), or its folder's name for a package elsewhere (a test's temporary one)."""
    try:
        return ".".join(package_dir.resolve().relative_to(ROOT).parts)
    except ValueError:
        return package_dir.name


def import_edges(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, from every import in its source:
    at the top, under ``if TYPE_CHECKING:`` (a cycle a type checker sees is a cycle in the design) and
    inside functions (a deferred import hides a cycle, it does not remove it). The package itself
    (its ``__init__``) is never an edge's target: Python imports a package before any of its modules."""
    top = package_name(package_dir)
    names: dict[str, Path] = {}
    for path in sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts):
        parts = [top, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for _, module in imported_modules(tree, package):
            if module in names and module != top and module != name:
                edges[name].add(module)
    return edges


def import_cycles(package_dir: Path) -> list[list[str]]:
    """Every import cycle among the modules of the package at ``package_dir``: each strongly connected
    component of :func:`import_edges` with more than one module, as a sorted list of dotted names
    (``services.broker.core``), the components in sorted order. Empty when the imports form a DAG."""
    edges = import_edges(package_dir)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the packages here are small enough to recurse
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_finder_counts_type_checking_and_function_level_imports(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n")
    (package / "b.py").write_text("def late():\n    from pkg import c\n")
    (package / "c.py").write_text("from . import a\n")
    (package / "d.py").write_text("from .a import A\n")  # imports into the cycle, is not part of it
    assert import_cycles(package) == [["pkg.a", "pkg.b", "pkg.c"]]
    (package / "c.py").write_text("import json\n")
    assert import_cycles(package) == []


def test_the_broker_package_has_no_import_cycle() -> None:
    cycles = import_cycles(ROOT / "services" / "broker")
    assert not cycles, "import cycles in services/broker:\n" + "\n".join(" <-> ".join(c) for c in cycles)

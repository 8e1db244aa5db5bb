"""The shape of the import graph: ``shared/`` names no service or tool, and nothing outside
``shared/`` reaches into its private ``shared._x`` modules (DESIGN.md: every service, ours or a
companion's, builds on shared's public API; issue 12).

Every ``.py`` file under the project's code folders is parsed with :mod:`ast` (nothing is imported,
so a module with side effects cannot hide or fake an import), and each offending import is reported
with its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

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


# -- cycles among the modules of one package ----------------------------------------------------
#
# A circle between modules (a imports b, b imports a, directly or through others) means neither can
# be understood, tested or moved without the other, and it only works as long as the import order
# happens to suit it. Every import counts: one at the top, one inside a function (a late import that
# dodges the circle at load time is still the circle), and one under ``if TYPE_CHECKING:`` (the
# types still tie the two modules together). :func:`imported_modules` walks the whole tree, so it
# reports all three.


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of ``path`` under ``root`` (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(package: Path, root: Path = ROOT) -> dict[str, dict[str, str]]:
    """The import graph among the modules of the package folder ``package`` (its subpackages too):
    for each module, the modules of the package it imports, each with the ``file:line`` of the
    first import that reaches it. Imports of anything outside the package are left out.

    An imported name resolves to the deepest module of the package it names (``from .chain import
    Record`` reaches ``chain``). Importing a submodule runs its parent package's ``__init__`` first,
    but that is the package, not a circle: when one import statement reaches both a package and a
    module inside it (``from . import chain``), only the module counts."""
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, dict[str, str]] = {}
    for name, path in files.items():
        relative = path.relative_to(root)
        inside = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(relative))
        by_line: dict[int, set[str]] = {}
        for line, imported in imported_modules(tree, inside):
            parts = imported.split(".")
            # Deepest first: "a.b.Name" is module "a.b" when no module "a.b.Name" exists.
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in files),
                          None)
            if target is not None:
                by_line.setdefault(line, set()).add(target)
        edges = graph.setdefault(name, {})
        for line, targets in sorted(by_line.items()):
            for target in sorted(targets):
                if any(other.startswith(target + ".") for other in targets) or target == name:
                    continue  # the parent package of a module this statement imports, or itself
                edges.setdefault(target, f"{relative}:{line}")
    return graph


def import_cycles(package: Path, root: Path = ROOT) -> list[str]:
    """Every import cycle among the modules of the package folder ``package``, one line each: the
    modules of one strongly connected component, walked as one concrete circle with the
    ``file:line`` of each import on it. Empty when every import goes one way."""
    graph = module_imports(package, root)
    # Tarjan's algorithm, iterative so a deep package cannot hit the recursion limit.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return [_describe_cycle(component, graph) for component in sorted(components)]


def _describe_cycle(component: list[str], graph: dict[str, dict[str, str]]) -> str:
    """One circle through the first module of ``component`` (breadth-first, so the shortest one),
    written as ``a -> b (a.py:3) -> a (b.py:7)``, and the size of the whole component."""
    members, start = set(component), component[0]
    came_from: dict[str, str] = {}
    queue = [start]
    while queue and start not in came_from:
        node = queue.pop(0)
        for succ in sorted(graph[node]):
            if succ in members and succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    path = [start]
    while True:  # walk back from start to start; the component guarantees the way exists
        path.append(came_from[path[-1]])
        if path[-1] == start:
            break
    path.reverse()
    hops = " -> ".join(f"{b} ({graph[a][b]})" for a, b in pairwise(path))
    return f"{start} -> {hops}" + (f" [one of {len(component)} modules in a knot]" if len(component) > 2 else "")


def test_the_cycle_finder_counts_late_and_type_checking_imports(tmp_path: Path) -> None:
    """The finder sees a circle closed by a function-level import and one closed by an ``if
    TYPE_CHECKING:`` import, resolves relative imports, and passes a package whose imports go one way."""
    package = tmp_path / "pkg"
    package.mkdir()
    sources = {
        "__init__.py": "from . import top\n",
        "top.py": "from .low import x\nfrom pkg import mid\n",
        "mid.py": "import pkg.low\n",
        "low.py": "x = 1\n",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from .a import g  # late\n    return g\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n",
        "d.py": "from . import c\n",
        "e.py": "from .f import x\n",
        "f.py": "from .g import y\n",
        "g.py": "from .e import z\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text, encoding="utf-8")
    assert import_cycles(package, tmp_path) == [
        "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:2)",
        "pkg.c -> pkg.d (pkg/c.py:3) -> pkg.c (pkg/d.py:1)",
        "pkg.e -> pkg.f (pkg/e.py:1) -> pkg.g (pkg/f.py:1) -> pkg.e (pkg/g.py:1) [one of 3 modules in a knot]",
    ]
    for name in ("a.py", "b.py", "c.py", "d.py", "e.py", "f.py", "g.py"):
        (package / name).unlink()
    assert import_cycles(package, tmp_path) == []  # __init__ -> top -> mid -> low: one way


def storage_layer(module: str) -> str:
    """Which layer of services/storage ``module`` is in: ``service`` (the package itself, the
    service class and ``__main__``), ``core``, or the name of the engine package it belongs to."""
    parts = module.split(".")[2:]  # what follows "services.storage"
    if not parts or parts[0] in ("service", "__main__"):
        return "service"
    return parts[0]


def test_storage_imports_point_service_engines_core() -> None:
    """Storage's imports go one way by layer, service -> engines -> core (issue 12): the core imports
    no engine and not the service, an engine imports the core and its own modules but never another
    engine or the service, and only the service composes the engines."""
    graph = module_imports(ROOT / "services" / "storage")
    wrong = [f"{module} imports {target} ({where})"
             for module, targets in sorted(graph.items()) for target, where in sorted(targets.items())
             if storage_layer(module) != "service"
             and storage_layer(target) not in ("core", storage_layer(module))]
    assert not wrong, "imports against the layering of services/storage:\n" + "\n".join(wrong)
    assert {storage_layer(m) for m in graph} == {"service", "core", "kv", "records", "analytics", "files", "archive"}


#: Every package of the project's code: shared, meshctl's package, and each service.
PACKAGES = ["shared", "tools/meshctl_cli", *sorted(f"services/{p.name}" for p in (ROOT / "services").iterdir()
                                                   if (p / "__init__.py").is_file())]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_imports_one_way(package: str) -> None:
    """No package has an import cycle (issue 12), late and ``TYPE_CHECKING`` imports included. The
    layering this keeps: shared's errors, codecs and declarations under its configuration, the Argon2
    profiles under both configuration and crypto, anchors under keystores under the anchor move; the
    broker's core loop over its parts over the state tables; audit's chain and verifier under its
    store under the scan; storage's core under its engines under the service."""
    cycles = import_cycles(ROOT / package)
    assert not cycles, f"import cycles in {package}:\n" + "\n".join(cycles)

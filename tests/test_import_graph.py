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

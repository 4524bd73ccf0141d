"""The package's modules import one another one way: no cycles, no imports hidden in functions.

Read from the source with :mod:`ast`, so ``TYPE_CHECKING`` imports count too (a cycle through
them is still a cycle a reader has to untangle), and so is importing a module of a subpackage
from outside it: Python runs the subpackage's ``__init__`` first, so whatever that imports is
imported too. Only optional extras (PyJWT's crypto, ``cryptography``, ``redis``) may be
imported inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "flask_apikeys"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imported_modules(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules that an import statement in module ``name`` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:
        base = name.split(".") if is_package(name) else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        if f"{source}.{alias.name}" in MODULES:  # ``from . import module``
            found.append(f"{source}.{alias.name}")
        elif source in MODULES:
            found.append(source)
    return found


def subpackages_entered(importer: str, target: str) -> list[str]:
    """The subpackages whose ``__init__`` runs when ``importer`` imports ``target``.

    Every package above ``target`` that does not also hold ``importer`` (the root package is
    always being imported already, so it adds nothing).
    """
    parts = target.split(".")
    entered = []
    for depth in range(2, len(parts)):
        package = ".".join(parts[:depth])
        if not (importer == package or importer.startswith(package + ".")):
            entered.append(package)
    return entered


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Module → the package's modules it imports; and the imports found inside functions."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    hidden = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(function):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        for target in imported_modules(name, node):
                            hidden.append(f"{name}.{function.name} imports {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in imported_modules(name, node):
                    for entered in [target, *subpackages_entered(name, target)]:
                        if entered != name:
                            graph[name].add(entered)
    return graph, hidden


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                lowest[module] = min(lowest[module], lowest[target])
            elif target in stack:
                lowest[module] = min(lowest[module], index[target])
        if lowest[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_the_package_modules_import_each_other_without_a_cycle() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_module_of_the_package_is_imported_inside_a_function() -> None:
    _, hidden = import_graph()
    assert hidden == []


def test_no_module_imports_the_package_root() -> None:
    """The root ``__init__`` re-exports the public names, so it imports nearly everything."""
    graph, _ = import_graph()
    assert [name for name, targets in graph.items() if PACKAGE in targets] == []


def test_the_checker_sees_a_cycle_through_a_subpackage_init() -> None:
    """``a`` → ``pkg.b`` runs ``pkg/__init__``, which imports ``a`` back: a cycle."""
    graph = {"p.a": {"p.pkg.b", "p.pkg"}, "p.pkg": {"p.a"}, "p.pkg.b": set()}
    assert cycles(graph) == [["p.a", "p.pkg"]]
    assert subpackages_entered("p.a", "p.pkg.b") == ["p.pkg"]
    assert subpackages_entered("p.pkg.c", "p.pkg.b") == []

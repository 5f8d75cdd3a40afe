"""No two modules import each other, even through others: a type two modules share lives in a
module of its own, so no import has to hide inside a function to break a circle. Only the imports
that run when a module is loaded count: those inside functions (kept there to load heavy
dependencies late) and those under `if TYPE_CHECKING:` (never run) do not."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "workers")


def module_files() -> dict[str, Path]:
    """Every module of the packages by its dotted name (a package by its own name)."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def load_time_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements a module runs when it is loaded: at its top level, also inside an
    `if` (other than TYPE_CHECKING), `try` or `with`; not inside functions or classes."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            found += [] if _type_checking(node.test) else load_time_imports(node.body)
            found += load_time_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += load_time_imports(block)
        elif isinstance(node, ast.With):
            found += load_time_imports(node.body)
    return found


def imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The project's modules `name` imports when loaded: `from a.b import c` is a.b.c where c is a
    module, else a.b; relative imports resolved from the module's package."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in load_time_imports(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            target = f"{source}.{alias.name}"
            found.add(target if target in modules else source)
    return (found & modules) - {name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as the modules along it (the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                return path[path.index(imported):] + [imported]
            if imported not in done:
                cycle = visit(imported)
                if cycle:
                    return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_a_circle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_are_read_as_python_runs_them(tmp_path):
    (tmp_path / "pkg").mkdir()
    path = tmp_path / "pkg" / "mod.py"
    path.write_text("from typing import TYPE_CHECKING\n"
                    "from . import sibling\n"
                    "from .other import Thing\n"
                    "import pkg.third\n"
                    "if TYPE_CHECKING:\n    from pkg import typed\n"
                    "def late():\n    from pkg import lazy\n")
    modules = {"pkg", "pkg.mod", "pkg.sibling", "pkg.other", "pkg.third", "pkg.typed", "pkg.lazy"}
    assert imported_modules("pkg.mod", path, modules) == {"pkg.sibling", "pkg.other", "pkg.third"}

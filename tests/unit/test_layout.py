"""The layout is the architecture: packages are layers, and a module imports only from its own
layer or the layers below it (docs/architecture.md), so the data plane knows nothing of the
supervisor, the client or the command line, and no two packages import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. `pipeline/__init__.py` is only the facade of the client (`from pipeline import
# attach`, imported lazily) and sits above everything.
LAYERS = [
    ("pipeline.errors", "pipeline.outputs", "pipeline.cores", "pipeline.strings", "pipeline.samples"),
    ("pipeline.config",),
    ("pipeline.transport",),
    ("pipeline.observe",),
    ("workers",),
    ("pipeline.train",),
    ("pipeline.supervisor",),
    ("pipeline.client",),
    ("pipeline.cli",),
]


def layer_of(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    if module == "pipeline":
        return len(LAYERS)
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    """Every pipeline/workers module a file imports, at the top or inside functions."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found |= {f"{base}.{a.name}" if base in ("pipeline", "workers") else base
                      for a in node.names}
    return {m for m in found if m.split(".")[0] in ("pipeline", "workers")}


def sources() -> list[Path]:
    return sorted(p for top in ("pipeline", "workers") for p in (ROOT / top).rglob("*.py"))


def test_every_import_points_down_the_layers():
    upward = []
    for path in sources():
        mine = module_name(path)
        for imported in our_imports(path):
            if layer_of(imported) > layer_of(mine):
                upward.append(f"{mine} imports {imported}")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_no_two_packages_import_each_other():
    def package(module: str) -> str:  # pipeline.transport, workers.capture, ...
        return ".".join(module.split(".")[:2])

    edges = {(package(module_name(p)), package(m)) for p in sources() for m in our_imports(p)}
    cycles = sorted(f"{a} <-> {b}" for a, b in edges if a < b and (b, a) in edges)
    assert not cycles, cycles


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: a transport module importing the supervisor is caught."""
    bad = ROOT / "pipeline" / "transport" / "_layout_probe.py"
    bad.write_text("from pipeline.supervisor.restarts import RestartBudget\n")
    try:
        mine = module_name(bad)
        assert mine == "pipeline.transport._layout_probe"
        assert any(layer_of(m) > layer_of(mine) for m in our_imports(bad))
    finally:
        bad.unlink()

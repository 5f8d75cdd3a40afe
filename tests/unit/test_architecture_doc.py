"""docs/architecture.md is where a reader finds any module: every module of pipeline/ and workers/
is named there by its path (a package by `pipeline/config/` or its `__init__.py`), so a module
added without a line on its concern fails here, naming it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ("pipeline", "workers")


def module_paths() -> list[str]:
    return [path.relative_to(ROOT).as_posix()
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]


def named(path: str, text: str) -> bool:
    """Whether the doc names the path whole (not as the start of a longer one); a package's
    `__init__.py` may be named by its folder."""
    forms = [path]
    if path.endswith("/__init__.py"):
        forms.append(path.removesuffix("__init__.py"))
    return any(re.search(rf"(?<![\w/.]){re.escape(form)}(?![\w/])", text) for form in forms)


def test_every_module_is_in_the_architecture_doc():
    text = DOC.read_text()
    missing = [path for path in module_paths() if not named(path, text)]
    assert not missing, f"{DOC.relative_to(ROOT)} does not name: {', '.join(missing)}"


def test_a_path_counts_only_whole():
    text = "`pipeline/config/schema.py` and the client (`pipeline/client/`)"
    assert named("pipeline/config/schema.py", text)
    assert named("pipeline/client/__init__.py", text)
    assert not named("pipeline/config/__init__.py", text)  # only the start of a longer path

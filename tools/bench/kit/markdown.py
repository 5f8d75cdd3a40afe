"""Markdown tables for docs/performance.md, printed by the benchmarks' `--markdown`.

Every row ends with what it was measured with (runtime and version), when (UTC date) and on what
(CPU model and cores), so a figure pasted into the documentation carries its own provenance and a
stale one shows its age.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Sequence

PROVENANCE = ("runtime", "date", "machine")


def cpu_model() -> str:
    """The CPU's marketing name, as the kernel reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model and the cores this process may use (what the benchmark had)."""
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores"


# Runtimes known by another name than the one the config gives them: (name in a table, the
# package whose version is theirs).
NAMES = {"litert": ("LiteRT", "ai-edge-litert")}


def runtime_name(name: str) -> str:
    """A runtime as a table names it: "LiteRT" for "litert", the others as the config spells them."""
    return NAMES.get(name, (name, name))[0]


def runtime(name: str) -> str:
    """A runtime with its installed version, e.g. "onnxruntime 1.23.2", "LiteRT 2.3.0" (read from
    the package's metadata: no runtime is imported for it); its name alone if not installed."""
    label, package = NAMES.get(name, (name, name))
    try:
        return f"{label} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return label


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def provenance(*runtimes: str, date: str | None = None, where: str | None = None) -> list[str]:
    """The three cells every row ends with (a row comparing two runtimes names both)."""
    return [" vs ".join(runtime(r) for r in runtimes), date or today(), where or machine()]


def cell(value: object) -> str:
    """A value as one table cell: a pipe would split it, a newline end the row."""
    return str(value).replace("|", "\\|").replace("\n", " ").strip() or "–"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; every row must have a cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} headers: {row!r}")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)

"""The drop reasons the code counts, read from the code itself, for the tests that hold the docs
to them."""

from __future__ import annotations

import re

from pipeline.transport import drops

from .assets import ROOT


def reasons_in_code() -> set[str]:
    """The table of reasons (pipeline/transport/drops.py), and the keys of any `drops` counter
    (and the capture stage's `lost` counts) still written out in the code."""
    reasons: set[str] = set(drops.REASONS)
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        text = path.read_text()
        reasons |= set(re.findall(r"\bdrops\[\"(\w+)\"\]", text))
        for literal in re.findall(r"(?:self\.drops|self\.lost) = \{([^}]*)\}", text):
            reasons |= set(re.findall(r"\"(\w+)\":", literal))
    return reasons

"""Where the files made from a model once are kept (exports, conversions, the runtimes' timings):
the user's cache directory, so every start, worker and restart finds them."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-pipeline"

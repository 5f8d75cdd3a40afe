"""The model a running pipeline runs now: its name, short id and class names, for a consumer that
needs more than a result's top-k (every class name: Home Assistant discovery, watched classes).
The supervisor keeps it in the run directory's `model.json` and replaces it before the first
result of a newly deployed model (docs/protocol.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.transport.rundir import NotRunning, find_pipeline


def running_model(pipeline: str | None = None) -> dict[str, Any]:
    """`{name, id, runtime, file, labels, ...}` of the model pipeline `pipeline` runs now; {} when
    it is not running here or runs no model here."""
    try:
        info = find_pipeline(pipeline)
        return json.loads((Path(info["dir"]) / "model.json").read_text())
    except (NotRunning, OSError, ValueError, KeyError):
        return {}

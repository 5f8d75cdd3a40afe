"""What the commands that join a running pipeline share."""

from __future__ import annotations

import os
import sys
from typing import Any

from pipeline.cores import CORES_ENV, keep_off
from pipeline.transport.rundir import NotRunning, RuntimeDirError, find_pipeline

CONSUMER_NICE = 19  # scheduling priority below the stages' (niceness 0)


def join(prog: str, name: str | None, off_model_cores: bool = True
         ) -> tuple[dict[str, Any], list[str]] | None:
    """The running pipeline `name` (or the only one) and the files it reads (no output may be
    one), with this process moved off its model's cores first: before pydantic, numpy, OpenCV
    and ZeroMQ are imported and start threads. None once the reason there is none is printed."""
    try:
        info = find_pipeline(name)
    except (NotRunning, RuntimeDirError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    if off_model_cores:
        # Attaching to a running pipeline (not started by its supervisor, before any frame
        # flows): the cores left are capture's and preprocessing's, and they go first.
        late = CORES_ENV not in os.environ
        keep_off(info["model_cores"])
        if late:
            os.nice(CONSUMER_NICE)
    from pipeline.config import Config, input_files

    return info, input_files(Config.model_validate(info["config"]))

"""What the commands that join a running pipeline share."""

from __future__ import annotations

import sys
from typing import Any

from pipeline.cores import keep_off
from pipeline.transport.rundir import NotRunning, RuntimeDirError, find_pipeline


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
        keep_off(info["model_cores"])
    from pipeline.config import Config, input_files

    return info, input_files(Config.model_validate(info["config"]))

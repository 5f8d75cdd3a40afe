"""What the commands that join a running pipeline share."""

from __future__ import annotations

import sys
from typing import Any

from pipeline.config import Config, input_files, keep_off_inference_cores
from pipeline.transport.rundir import NotRunning, find_pipeline


def join(prog: str, name: str | None, off_model_cores: bool = True
         ) -> tuple[dict[str, Any], list[str]] | None:
    """The running pipeline `name` (or the only one) and the files it reads (no output may be
    one), with this process moved off its model's cores before numpy, OpenCV and ZeroMQ start
    threads; None once the reason there is none has been printed."""
    try:
        info = find_pipeline(name)
    except NotRunning as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    config = Config.model_validate(info["config"])  # before pinning: its cores check needs them
    if off_model_cores:
        keep_off_inference_cores(config)
    return info, input_files(config)

"""What the commands that join a running pipeline share."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.cores import CORES_ENV, keep_off
from pipeline.transport.rundir import NotRunning, RuntimeDirError, find_pipeline

CONSUMER_NICE = 19  # scheduling priority below the stages' (niceness 0)


def _keep_off(info: dict[str, Any]) -> None:
    # Attaching to a running pipeline (not started by its supervisor, before any frame flows):
    # the cores left are capture's and preprocessing's, and they go first.
    late = CORES_ENV not in os.environ
    keep_off(info["model_cores"])
    if late:
        os.nice(CONSUMER_NICE)


def leave_model_cores(argv: list[str] | None) -> None:
    """Move this process off the model's cores of the pipeline `--name` in `argv` names (or the
    only one), before the rest of the command line is read; nothing if there is none: `join`
    then says why, after the options are checked."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--name")
    pre.add_argument("--list", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.list:
        return
    try:
        _keep_off(find_pipeline(known.name))
    except (NotRunning, RuntimeDirError):
        pass


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
        _keep_off(info)
    from pipeline.config import Config, input_files

    return info, input_files(Config.model_validate(info["config"]))

"""The harness every stage process runs in: `python -m workers.stage --stage NAME --run-dir DIR
--parent PID`, exec'd by the supervisor.

It does what all stages share, once: before anything heavy is imported it pins the process to its
cores (so torch's and OpenCV's thread pools inherit the mask), asks the kernel for SIGTERM if the
supervisor dies, and ignores SIGINT (Ctrl-C reaches the whole process group; the supervisor decides
how to stop). Then it opens the stage, reports ready, waits for the start, loops the stage's step
while sending stats once a second, and tears everything down whichever way the stage ends.

A stage supplies only what is its own (see `Stage`): opening its inputs and outputs, one step per
frame, and its stats.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import sys
import traceback
from typing import Callable

from pipeline.errors import UserError
from workers.context import Stage, StageContext

_PR_SET_PDEATHSIG = 1


def stage_class(kind: str) -> type:
    """The stage to run, imported only now: after pinning, and only the one this process runs."""
    if kind == "capture":
        from workers.capture.stage import Capture

        return Capture
    if kind == "preprocess":
        from workers.preprocess.stage import Preprocess

        return Preprocess
    from workers.inference.stage import Inference

    return Inference


def serve(ctx: StageContext, make: Callable[[StageContext], Stage]) -> None:
    """Open the stage, report ready, and step it until told to stop."""
    stage = make(ctx)
    # Open: from now on SIGTERM lets the loop finish its frame and close in order.
    signal.signal(signal.SIGTERM, lambda *_: setattr(ctx, "stopping", True))
    ctx.stats_source = stage.stats
    if ctx.ready(**stage.ready_info):
        while ctx.alive():
            stage.step()


def _stop_while_loading(*_: object) -> None:
    """SIGTERM before the stage is open (a model still loading): nothing to finish, so stop
    now rather than after the load; unwinding still removes half-made segments."""
    raise SystemExit(128 + signal.SIGTERM)


def _one_line(e: Exception) -> str:
    """What the supervisor tells the user. The user's own doing (a bad file, a full /dev/shm or
    disk) is one line; anything else is a bug, so its traceback goes to stderr too."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.ENOMEM):
        return f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror)
    traceback.print_exc()
    return f"{type(e).__name__}: {e}"


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="workers.stage")
    ap.add_argument("--stage", required=True, help="stage instance, e.g. capture or inference.2")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--parent", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent(args.parent)
    from pipeline.config import Config
    from pipeline.observe.journal import log_format
    from pipeline.transport.messages import ERROR
    from pipeline.transport.rundir import RunPaths

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the supervisor decides
    handler = logging.StreamHandler()
    handler.setFormatter(log_format(args.stage))  # priorities when stderr is the journal
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    run = RunPaths.load(args.run_dir)
    config = Config.model_validate_json(run.config_file.read_text())
    instance = {i.name: i for i in config.instances()}[args.stage]
    os.sched_setaffinity(0, config.cores_for(instance))  # before torch/OpenCV start threads
    if instance.kind == "inference" and config.inference.nice:
        os.nice(config.inference.nice)  # the stages that feed the model come first

    ctx = StageContext(instance, run, config)
    signal.signal(signal.SIGTERM, _stop_while_loading)
    try:
        serve(ctx, stage_class(instance.kind))
    except Exception as e:  # report one line to the supervisor, full detail to stderr
        ctx.owned.close()
        ctx.send(ERROR, message=_one_line(e))
        ctx.close()
        return 1
    except SystemExit:  # stopped while loading
        ctx.owned.close()
        ctx.zmq.destroy(linger=0)
        raise
    ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What is settled before any process starts: whether this pipeline may start here at all, and
which runtime and model file its workers load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import Config, Instance, check_classes
from pipeline.errors import UserError
from pipeline.supervisor.shm import frame_bytes, preflight, remove_orphans
from pipeline.transport.rundir import running_pipelines


def refusal(config: Config, host: str | None, say: Callable[[str], None]) -> str | None:
    """Why the pipeline must not start (a name in use, too little shared memory), else None.
    Also clears orphaned segments."""
    for other in running_pipelines():  # the halves of a split pipeline may share a machine
        if other["name"] != config.name:
            continue
        if host is None or other.get("host") in (None, host):
            return (f"a pipeline named '{config.name}' is already running "
                    f"(pid {other['pid']}); choose another with --name")
    removed = remove_orphans()
    if removed:
        say(f"removed {len(removed)} shared-memory segment(s) left by a killed pipeline: "
            + ", ".join(removed))
    return preflight(config, frame_bytes(config, host), host=host)


def plan_model(config: Config, first_worker: Instance, say: Callable[[str], None]) -> Any:
    """Which runtime and model file the workers load, or a one-line refusal. May export the
    model or measure the runtimes, once per machine."""
    from workers.inference.model_plan import plan_model

    cores = config.cores_for(first_worker)
    threads = config.inference.threads or len(cores)
    try:
        plan = plan_model(config.model, config.preprocess.crop_size, cores, threads, say)
    except UserError as e:
        return str(e)
    return misfit(config, plan) or plan


def misfit(config: Config, plan: Any) -> str | None:
    """Why a planned model cannot serve this config (a watched class it lacks, another
    preprocessing than it was trained with), or None."""
    try:
        check_classes(config, plan.labels, plan.name)
    except UserError as e:
        return str(e)
    if plan.resize and plan.resize != config.preprocess.resize:
        return (f"model.weights: {plan.name} was trained with preprocess.resize = \"{plan.resize}\", "
                f"the config has \"{config.preprocess.resize}\": set preprocess.resize = \"{plan.resize}\"")
    return None

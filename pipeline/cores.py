"""Which cores this process may use, importable before anything heavy: consumers and tools pin
themselves off the model's cores first and import numpy, ZeroMQ and pydantic after, so their
start-up never lands on a core the model is timed on."""

from __future__ import annotations

import os
from collections.abc import Iterable

CORES_ENV = "EDGE_PIPELINE_CORES"  # set by the supervisor for the processes it starts


def allowed_cores() -> list[int]:
    """Cores this pipeline may use: the supervisor's own set, handed down to its stages and
    consumers (it pins itself off the inference cores), else this process's affinity."""
    given = os.environ.get(CORES_ENV)
    if given:
        return sorted(int(c) for c in given.split(","))
    return sorted(os.sched_getaffinity(0))


def keep_off(cores: Iterable[int]) -> None:
    """Move this process off `cores` (the model's), where its work would show up as latency
    spikes; it stays where it is if they are all it has. Config checks made afterwards still see
    every core (CORES_ENV)."""
    mine = allowed_cores()
    os.environ.setdefault(CORES_ENV, ",".join(map(str, mine)))
    others = set(os.sched_getaffinity(0)) - set(cores)
    if others:
        os.sched_setaffinity(0, others)

"""Counters and latency distributions kept by stages and the supervisor.

`Histogram` uses fixed log-spaced buckets (1% wide) so a run of any length costs the same memory,
percentiles are exact to within 1%, and histograms from different processes merge by addition.
`Window` keeps the last second's samples in a preallocated array for the live status lines.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_LO_MS = 0.01  # smallest bucket edge (10 us)
_GROWTH = 1.01
_BUCKETS = int(math.log(1e6 / _LO_MS) / math.log(_GROWTH)) + 2  # up to ~1000 s


class Histogram:
    """Latency distribution in milliseconds."""

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        i = 0 if ms <= _LO_MS else min(_BUCKETS - 1, int(math.log(ms / _LO_MS) / math.log(_GROWTH)) + 1)
        self.counts[i] += 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def percentile(self, q: float) -> float:
        """Upper edge of the bucket holding the q-th percentile (q in 0..100)."""
        if not self.count:
            return float("nan")
        rank = max(1, math.ceil(self.count * q / 100.0))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(self.max, _LO_MS * _GROWTH ** i)

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 3),
            "p50": round(self.percentile(50), 3),
            "p90": round(self.percentile(90), 3),
            "p99": round(self.percentile(99), 3),
            "max": round(self.max, 3),
        }


class Window:
    """Samples of the current reporting interval (bounded; older samples are overwritten)."""

    def __init__(self, capacity: int = 8192) -> None:
        self._buf = np.empty(capacity, dtype=np.float64)
        self._n = 0

    def add(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1

    def take(self) -> dict[str, float]:
        """p50/p99/max of the interval, then start a new one."""
        n = min(self._n, len(self._buf))
        self._n = 0
        if not n:
            return {}
        p50, p90, p99 = np.percentile(self._buf[:n], (50, 90, 99))
        return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3),
                "max": round(float(self._buf[:n].max()), 3), "count": n}


class StageMeter:
    """What a processing stage reports once a second: frames in and out, service time (last
    second and whole run), and the depth of its input queue when it took each frame."""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.service = Window()
        self.service_run = Histogram()
        self.queue = Window()
        self.queue_hwm = 0

    def took(self, depth: int) -> None:
        self.frames_in += 1
        self.queue.add(depth)
        if depth > self.queue_hwm:
            self.queue_hwm = depth

    def done(self, ms: float) -> None:
        self.frames_out += 1
        self.service.add(ms)
        self.service_run.add(ms)

    def snapshot(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out,
                "service_ms": self.service.take(), "service_run_ms": self.service_run.summary(),
                "queue": self.queue.take(), "queue_hwm": self.queue_hwm}


WRITES = {"capture": "frames", "preprocess": "tensors"}  # the edge each stage kind writes


def written_slots(stage: str, status: dict[str, Any]) -> dict[str, int]:
    """A stage's slots in use on the edges it writes (`frames...` for capture, `tensors...` for
    preprocess), from its status: frames written and not yet finished by the reader."""
    writes = WRITES.get(stage.split(".")[0])
    return {e: n for e, n in status["in_use"].items() if writes and e.startswith(writes)}

"""What every benchmark run shares: percentiles, the emulated live camera, process figures."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from tools.assets import ROOT

PACED_FPS = 30.0  # the live-camera rate of the paced runs
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), the rule the pipeline's own figures use."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q / 100) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    """p50 / p99 / max / count of a list of milliseconds."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "count": 0}
    return {"p50": round(percentile(values, 50), 2), "p99": round(percentile(values, 99), 2),
            "max": round(max(values), 2), "count": len(values)}


def child_env() -> dict[str, str]:
    """The environment for every subprocess: the project root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class LiveVideo:
    """A video file behaving like the tutorial's camera, for the baselines.

    Fast (`fps` 0): every read decodes the next frame, stamped when the read starts.
    Paced: frame k arrives at start + k/fps whether anyone reads it or not; like a V4L2 driver
    with `buffers` buffers, a late reader gets the oldest frame still queued (stale), and frames
    beyond the queue are lost. `stall_ms` every `stall_every_s` stops arrivals for a while, like
    a camera hiccup. The file loops. `read()` returns (frame, arrival time in monotonic ns).
    """

    def __init__(self, path: str, fps: float = 0.0, buffers: int = 4,
                 stall_ms: float = 0.0, stall_every_s: float = 0.0):
        import cv2

        self._cv2 = cv2
        self.path = path
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise SystemExit(f"cannot open video {path}")
        self.period_ns = int(1e9 / fps) if fps > 0 else 0
        self.buffers = buffers
        self.stall_ns = int(stall_ms * 1e6)
        self.stall_every_ns = int(stall_every_s * 1e9)
        self.start = time.monotonic_ns()
        self.k = 0  # index of the next frame to hand out
        self.lost = 0

    def arrival(self, k: int) -> int:
        """When frame k reaches the driver, stalls included."""
        t = self.start + k * self.period_ns
        if self.stall_ns and self.stall_every_ns:
            t += (t - self.start) // self.stall_every_ns * self.stall_ns
        return t

    def _decode(self) -> Any:
        ok, frame = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = self._cv2.VideoCapture(self.path)
            ok, frame = self.cap.read()
            if not ok:
                raise SystemExit(f"no frames decoded from {self.path}")
        return frame

    def _skip(self) -> None:
        if not self.cap.grab():
            self.cap.release()
            self.cap = self._cv2.VideoCapture(self.path)
            self.cap.grab()

    def read(self) -> tuple[Any, int]:
        if not self.period_ns:
            t = time.monotonic_ns()
            return self._decode(), t
        now = time.monotonic_ns()
        newest = self.k
        while self.arrival(newest + 1) <= now:
            newest += 1
        oldest_queued = newest - self.buffers + 1
        while self.k < oldest_queued:  # overwritten in the driver's queue: lost
            self._skip()
            self.k += 1
            self.lost += 1
        due = self.arrival(self.k)
        if due > now:
            time.sleep((due - now) / 1e9)
        frame = self._decode()
        self.k += 1
        return frame, due

    def release(self) -> None:
        self.cap.release()


def rss_mb(pids: list[int]) -> float:
    """Total resident memory of some processes, in MB (shared pages counted in each)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of some processes."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total

"""Adaptive input resolution: trade a little accuracy for frame rate when the model falls behind.

Why: on a board that throttles or is shared, the model's time per frame grows and a fixed 224x224
input means dropped frames. MobileNets accept smaller inputs; 192 and 160 cost about 27% and 49%
less compute. The supervisor runs this controller on the inference stage's once-a-second stats
and tells the preprocess stage the size to produce; the inference stage takes whatever arrives.

Hysteresis: step down when the model's capacity (1000 / service time p50) has been below
`low` x target for `hold_s`; step up when the capacity predicted at the next larger size
(scaled by the pixel ratio) has been at least `high` x target for `hold_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipeline.supervisor.control import ControlChannel


class SizeController:
    def __init__(self, sizes: list[int], target_fps: float, low: float = 0.95,
                 high: float = 1.15, hold_s: float = 2.0):
        if not sizes or sorted(sizes, reverse=True) != list(sizes):
            raise ValueError("sizes must be given largest first")
        self.sizes = list(sizes)
        self.target = target_fps
        self.low, self.high, self.hold_s = low, high, hold_s
        self.index = 0
        self._want = 0
        self._since = 0.0

    @property
    def size(self) -> int:
        return self.sizes[self.index]

    def update(self, now: float, service_ms: float) -> int | None:
        """Feed one second's inference service time p50; returns a new size when it changes."""
        if service_ms <= 0:
            return None
        capacity = 1000.0 / service_ms
        want = 0
        if self.index + 1 < len(self.sizes) and capacity < self.low * self.target:
            want = 1
        elif self.index > 0:
            bigger = self.sizes[self.index - 1]
            if capacity * (self.size / bigger) ** 2 >= self.high * self.target:
                want = -1
        if want != self._want:
            self._want, self._since = want, now
        if want and now - self._since >= self.hold_s:
            self.index += want
            self._want, self._since = 0, now
            return self.size
        return None


class AdaptiveInput:
    """The controller at work: fed the model's time per frame, it tells the preprocess stages
    the input size to produce."""

    def __init__(self, sizer: SizeController, control: ControlChannel, preprocessors: list[str],
                 say: Callable[[str], None]):
        self.sizer = sizer
        self.control = control
        self.preprocessors = preprocessors
        self.say = say

    def on_stats(self, stats: dict[str, Any]) -> None:
        """Adaptive resolution: feed the controller, tell preprocess when the size changes."""
        service = (stats.get("service_ms") or {}).get("p50", 0.0)
        old = self.sizer.size
        size = self.sizer.update(time.monotonic(), service)
        if size is None:
            return
        self.say(f"adaptive: input {old} -> {size} (model {service:.1f} ms per frame, "
                 f"target {self.sizer.target:g} fps)")
        for stage in self.preprocessors:
            # not sent while preprocess is restarting: it gets the size with its start message
            self.control.set_settings(stage, {"input_size": size})

    def settings(self) -> dict[str, Any]:
        """The run-time settings a restarted stage starts with."""
        return {"input_size": self.sizer.size}

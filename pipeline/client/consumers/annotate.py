"""Drawing a result onto its frame, shared by the `video` and `preview` consumers."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.client.result import Result

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def annotate(r: Result, fps: float, out: np.ndarray) -> np.ndarray:
    """Copy the result's frame into `out` (same shape) with label, probability, fps and latency."""
    assert r.frame is not None
    np.copyto(out, r.frame)
    h, w = out.shape[:2]
    scale = max(0.4, w / 900)
    band = int(34 * scale) + 8
    out[:band] //= 3  # darken a band for legible text
    text = f"{r.label}  {r.prob:.2f}"
    cv2.putText(out, text, (8, band - 10), _FONT, scale, (255, 255, 255), 2, cv2.LINE_AA)
    info = f"{fps:4.1f} fps  {r.latency_ms:4.0f} ms  #{r.seq}"
    (tw, _), _ = cv2.getTextSize(info, _FONT, scale * 0.8, 1)
    cv2.putText(out, info, (w - tw - 8, band - 10), _FONT, scale * 0.8, (180, 255, 180), 1,
                cv2.LINE_AA)
    return out


class RateMeter:
    """Results per second over the last ~second."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def tick(self, t: float) -> float:
        self.times.append(t)
        while self.times and t - self.times[0] > 1.0:
            self.times.pop(0)
        return len(self.times) / max(1e-6, t - self.times[0]) if len(self.times) > 1 else 0.0

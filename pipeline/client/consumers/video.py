"""`video` consumer: an annotated mp4 of the frames that were classified."""

from __future__ import annotations

import sys
import time

import cv2
import numpy as np

from pipeline.client.consumers.annotate import RateMeter, annotate
from pipeline.client.subscription import Result
from pipeline.outputs import replacing


class VideoConsumer:
    frames = True
    max_age = 2.0  # a live view: after falling behind, skip to fresh results
    OPTIONS = ("out", "fps")

    def __init__(self, out: str | None = None, fps: float | None = None):
        if not out:
            raise ValueError("the video consumer needs --out FILE.mp4")
        self.path = out
        self.fps = fps or 30.0
        self.writer: cv2.VideoWriter | None = None
        self.canvas: np.ndarray | None = None
        self.meter = RateMeter()
        self.written = 0
        self.without_frame = 0

    def on_result(self, r: Result) -> None:
        rate = self.meter.tick(time.monotonic())
        if r.frame is None:
            self.without_frame += 1
            return
        if self.canvas is None or self.canvas.shape != r.frame.shape:
            if self.writer is not None:  # a new frame size: the file keeps the first one
                self.without_frame += 1
                return
            h, w = r.frame.shape[:2]
            self.canvas = np.empty_like(r.frame)
            self._file = replacing(self.path)  # the file appears whole, when the video ends
            self.writer = cv2.VideoWriter(self._file.__enter__(), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        annotate(r, rate, self.canvas)
        if not r.frame_still_valid():  # overwritten while we copied it
            self.without_frame += 1
            return
        self.writer.write(self.canvas)
        self.written += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self._file.__exit__(None, None, None)
        print(f"video: wrote {self.written} frames to {self.path} "
              f"({self.without_frame} results without a usable frame)", file=sys.stderr)

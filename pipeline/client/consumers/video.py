"""`video` consumer: an annotated mp4 of the frames that were classified. The file appears whole
when the video ends; one that cannot be written whole (a full disk) is removed, and the consumer
ends with one line (exit code 1 from pipeline-attach) instead of leaving an mp4 that does not play."""

from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np

from pipeline.client.consumers.annotate import RateMeter, annotate
from pipeline.client.result import Result
from pipeline.errors import UserError
from pipeline.outputs import Replacement

ROOM_CHECK_S = 1.0  # how often the free space of the file's disk is looked at


class VideoConsumer:
    frames = True
    max_age = 2.0  # a live view: after falling behind, skip to fresh results

    def __init__(self, out: str | None = None, fps: float | None = None):
        if not out:
            raise ValueError("the video consumer needs --out FILE.mp4")
        self.path = out
        self.fps = fps or 30.0
        self.writer: cv2.VideoWriter | None = None
        self.file: Replacement | None = None
        self.canvas: np.ndarray | None = None
        self.meter = RateMeter()
        self.written = 0
        self.without_frame = 0
        self.closed = False
        self._room_checked = 0.0
        self._log_level: int | None = None  # OpenCV's own, while it is turned down

    def on_result(self, r: Result) -> None:
        now = time.monotonic()
        rate = self.meter.tick(now)
        if r.frame is None or self.closed:
            self.without_frame += 1
            return
        if self.canvas is None or self.canvas.shape != r.frame.shape:
            if self.writer is not None:  # a new frame size: the file keeps the first one
                self.without_frame += 1
                return
            self._open(r.frame)
        if now - self._room_checked >= ROOM_CHECK_S:
            self._room_checked = now
            if self._disk_full():
                raise UserError(self._fail("the disk is full"))
        annotate(r, rate, self.canvas)
        if not r.frame_still_valid():  # overwritten while we copied it
            self.without_frame += 1
            return
        self.writer.write(self.canvas)  # type: ignore[union-attr]
        self.written += 1

    def _open(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        self.canvas = np.empty_like(frame)
        self.file = Replacement(self.path)  # the file appears whole, when the video ends
        # OpenCV warns for every frame it cannot write, FFmpeg when the check of a broken file
        # reads it: a failure is told here, once. (FFmpeg reads the variable when first used.)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
        self._log_level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        self.writer = cv2.VideoWriter(self.file.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        if not self.writer.isOpened():
            raise UserError(self._fail("OpenCV cannot write an mp4 there"))

    def _disk_full(self) -> bool:
        try:
            return os.statvfs(os.path.dirname(os.path.abspath(self.path))).f_bavail == 0
        except OSError:
            return False

    def _plays(self) -> bool:
        """The finished file holds every frame written (a full disk loses the index at the end of
        the file, and with it every frame)."""
        assert self.file is not None
        video = cv2.VideoCapture(self.file.path)
        try:
            return video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == self.written \
                and video.read()[0]
        finally:
            video.release()

    def _release(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.release()
        if self._log_level is not None:
            cv2.utils.logging.setLogLevel(self._log_level)
            self._log_level = None

    def _fail(self, why: str) -> str:
        """Stop writing and remove the partial file; the line to report."""
        self.closed = True
        self._release()
        if self.file is not None:
            self.file.discard()
        return (f"video: cannot write {self.path}: {why}; stopped after {self.written} frames "
                "and removed the partial file")

    def close(self) -> None:
        """Finish the file and say so; a second call does nothing."""
        if self.closed:
            return
        self.closed = True
        if self.file is not None:
            self._release()
            if self.file.temporary and not self._plays():
                raise UserError(self._fail("the disk is full" if self._disk_full()
                                           else "the file written does not play back"))
            self.file.commit()
        print(f"video: wrote {self.written} frames to {self.path} "
              f"({self.without_frame} results without a usable frame)", file=sys.stderr)

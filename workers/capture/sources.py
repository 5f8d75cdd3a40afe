"""Frame sources for the capture stage: synthetic pattern, video file, image folder, V4L2 camera.

A source decodes straight into the buffer the capture stage hands it (a shared-memory slot) where
the frame size is fixed, so a frame is written once and never copied between processes.
`read(buffer_for)` calls `buffer_for(shape)` to get that destination and returns the frame's
metadata, or None at the end of the stream.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

import cv2
import numpy as np

from pipeline.config import CameraSource, ImagesSource, SyntheticSource, VideoSource, image_files
from pipeline.errors import UserError

log = logging.getLogger("capture")
BufferFor = Callable[[tuple[int, int, int]], np.ndarray]


class SourceError(UserError):
    """A source that cannot be opened or read."""


class Source:
    max_frame_bytes: int = 0
    fps: float = 0.0  # pacing for the capture loop; 0: no pacing (as fast as possible / device-paced)
    corrupt = 0  # items skipped because they could not be decoded
    live = False  # a failed read means "reconnect", not "end of stream"

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Synthetic(Source):
    """A scrolling colour-bar pattern with a moving box: needs nothing, runs anywhere."""

    def __init__(self, cfg: SyntheticSource):
        self.shape = (cfg.height, cfg.width, 3)
        self.max_frame_bytes = cfg.height * cfg.width * 3
        self.fps = cfg.fps
        self.limit = cfg.frames
        self.n = 0
        bars = np.array([[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0],
                         [255, 0, 255], [0, 0, 255], [255, 0, 0], [16, 16, 16]], np.uint8)
        bar_w = max(1, cfg.width // len(bars))
        period = bar_w * len(bars)
        cols = bars[(np.arange(cfg.width + period) // bar_w) % len(bars)]
        ramp = np.linspace(0.35, 1.0, cfg.height, dtype=np.float32)[:, None, None]
        self._period = period
        self._pattern = (cols[None, :, :] * ramp).astype(np.uint8)

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        if self.limit and self.n >= self.limit:
            return None
        h, w, _ = self.shape
        dst = buffer_for(self.shape)
        off = (self.n * 4) % self._period
        np.copyto(dst, self._pattern[:, off:off + w])
        side = max(8, h // 5)
        x = (self.n * 7) % max(1, w - side)
        y = (h - side) // 2
        dst[y:y + side, x:x + side] = 0
        self.n += 1
        return {"frame": self.n - 1}


class Video(Source):
    """A video file through OpenCV (FFmpeg backend), optionally looping."""

    def __init__(self, cfg: VideoSource):
        self.path = cfg.path
        self.loop = cfg.loop
        self.live = cfg.loop  # a looping file never ends: a failure is a fault to recover from
        self.cap = cv2.VideoCapture(cfg.path)
        if not self.cap.isOpened():
            raise SourceError(f"source.path: OpenCV cannot open video {cfg.path}")
        w = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w <= 0 or h <= 0:
            raise SourceError(f"source.path: {cfg.path} has no video stream OpenCV can decode")
        self.shape = (h, w, 3)
        self.max_frame_bytes = h * w * 3
        self.file_fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = (cfg.fps or self.file_fps or 30.0) if cfg.realtime else 0.0
        self.n = 0  # frames delivered
        self.index = 0  # position in the file

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        dst = buffer_for(self.shape)
        ok, _ = self.cap.read(dst)
        if not ok and self.loop and self.index > 0:
            self.cap.release()
            self.cap = cv2.VideoCapture(self.path)
            self.index = 0
            ok, _ = self.cap.read(dst)
        if not ok:
            return None
        self.index += 1
        self.n += 1
        return {"frame": self.index - 1}

    def close(self) -> None:
        self.cap.release()


class Images(Source):
    """Still images from a folder or glob, EXIF orientation applied, grayscale made BGR.

    Files that cannot be decoded, or were deleted or made unreadable since the folder was
    listed, are skipped, counted and logged once each.
    """

    def __init__(self, cfg: ImagesSource):
        self.files = image_files(cfg.path)
        self.loop = cfg.loop
        self.fps = cfg.fps
        self.i = 0
        self._bad: set[str] = set()
        biggest = largest_image_pixels(self.files)
        if not biggest:
            raise SourceError(f"source.path: none of the {len(self.files)} image files at {cfg.path} "
                              "can be read")
        self.max_frame_bytes = biggest * 3

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        while True:
            if self.i >= len(self.files):
                if not self.loop or len(self._bad) == len(self.files):
                    return None
                self.i = 0
            path = self.files[self.i]
            self.i += 1
            img = None
            if path not in self._bad:
                try:
                    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
                except (cv2.error, OSError):  # undecodable, or gone or unreadable since listed
                    img = None
            if img is None or img.size == 0 or img.nbytes > self.max_frame_bytes:
                if path not in self._bad:
                    self._bad.add(path)
                    self.corrupt += 1
                    log.warning("skipping image that cannot be decoded: %s", path)
                continue
            np.copyto(buffer_for(img.shape), img)
            return {"frame": self.i - 1, "item": os.path.basename(path)}


class Camera(Source):
    """A V4L2 camera through OpenCV, as in the Raspberry Pi tutorial."""

    def __init__(self, cfg: CameraSource):
        api = cv2.CAP_V4L2 if cfg.backend == "v4l2" else cv2.CAP_ANY
        self.name = f"/dev/video{cfg.device}" if isinstance(cfg.device, int) else cfg.device
        self.cap = cv2.VideoCapture(cfg.device, api)
        if not self.cap.isOpened():
            raise SourceError(f"source.device: cannot open camera {self.name} "
                              f"(backend {cfg.backend}); is it in use or not a capture device?")
        if cfg.fourcc:
            self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self.cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps the newest frame, not a backlog
        probe = self.cap.read()[1]  # the size the driver granted, which may differ from the request
        if probe is None:
            raise SourceError(f"source.device: camera {self.name} opened but delivers no frames")
        self.shape = probe.shape if probe.ndim == 3 else (*probe.shape, 3)
        self.max_frame_bytes = int(np.prod(self.shape))
        self.n = 0
        self.live = True

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        dst = buffer_for(self.shape)
        ok, out = self.cap.read(dst)
        if not ok:
            return None
        if out is not dst:  # the driver changed size or format mid-stream
            raise SourceError(f"camera {self.name}: frame format changed to {out.shape}")
        self.n += 1
        return {"frame": self.n - 1}

    def close(self) -> None:
        self.cap.release()


def largest_image_pixels(files: list[str]) -> int:
    """Pixels of the largest image, from the file headers only (sizes the ring slot)."""
    from PIL import Image

    biggest = 0
    for f in files:
        try:
            with Image.open(f) as im:
                biggest = max(biggest, im.size[0] * im.size[1])
        except Exception:
            continue
    return biggest


def frame_bytes_estimate(cfg: SyntheticSource | VideoSource | ImagesSource | CameraSource) -> int:
    """Bytes of the largest frame the source will deliver, known before it is opened for real
    (for the /dev/shm preflight); 0 where that cannot be told (the source will say why)."""
    if isinstance(cfg, (SyntheticSource, CameraSource)):
        return cfg.width * cfg.height * 3
    if isinstance(cfg, ImagesSource):
        return largest_image_pixels(image_files(cfg.path)) * 3
    cap = cv2.VideoCapture(cfg.path)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) * int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) * 3
    finally:
        cap.release()


def open_source(cfg: SyntheticSource | VideoSource | ImagesSource | CameraSource) -> Source:
    kinds = {"synthetic": Synthetic, "video": Video, "images": Images, "camera": Camera}
    return kinds[cfg.kind](cfg)

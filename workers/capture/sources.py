"""Frame sources for the capture stage: synthetic pattern, video file, image folder, V4L2 camera
(and, in picamera2_source.py, a Raspberry Pi camera module through Picamera2).

A source decodes straight into the buffer the capture stage hands it (a shared-memory slot) where
the frame size is fixed, so a frame is written once and never copied between processes.
`read(buffer_for)` calls `buffer_for(shape)` to get that destination and returns the frame's
metadata, or None at the end of the stream.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any, Callable

import cv2
import numpy as np
from PIL import Image

from pipeline.config import CameraSource, ImagesSource, SyntheticSource, VideoSource, image_files
from pipeline.config.credentials import mask_url, read_credentials, with_credentials
from pipeline.config.schema import Picamera2Source
from pipeline.errors import UserError

from .stream_probe import jpeg_size, why_not_open

log = logging.getLogger("capture")
BufferFor = Callable[[tuple[int, int, int]], np.ndarray]
# Undecodable video frames in a row read past before the file counts as ended there: every failed
# read moves on by one packet, and the decoder resumes at the next frame it can decode.
SKIP_LIMIT = 250
# PIL only reads image headers here (sizes); source.max_frame_pixels is the limit that applies.
Image.MAX_IMAGE_PIXELS = None


class SourceError(UserError):
    """A source that cannot be opened or read."""


class Source:
    max_frame_bytes: int = 0
    fps: float = 0.0  # pacing for the capture loop; 0: no pacing (as fast as possible / device-paced)
    corrupt = 0  # items skipped because they could not be decoded
    decode = 0  # video frames skipped mid-file or missing at its end because they cannot be decoded
    damage = ""  # the first frames the file could not deliver, for the user ("": none)
    gap = 0  # undecodable frames skipped just before the last one read (they keep their time)
    strict = False  # every frame matters (block edges): damage ends the stream, even looping
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
    """A video file through OpenCV (FFmpeg backend), optionally looping.

    A frame that cannot be decoded is skipped and counted (`decode`), and reading goes on; a file
    that ends short of the frame count its container declares (a truncated or damaged file) says
    so once and counts the missing frames too.
    """

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
            self.cap.release()
            raise SourceError(f"source.path: {cfg.path} has no video stream OpenCV can decode")
        if w * h > cfg.max_frame_pixels:
            self.cap.release()
            raise SourceError(f"source.max_frame_pixels: video {cfg.path} has {w}x{h} frames "
                              f"({w * h} pixels), more than the limit {cfg.max_frame_pixels}")
        self.shape = (h, w, 3)
        self.max_frame_bytes = h * w * 3
        self.file_fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = (cfg.fps or self.file_fps or 30.0) if cfg.realtime else 0.0
        self.declared = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)))  # 0: not known
        self.n = 0  # frames delivered
        self.index = 0  # position in the file: frames decoded or skipped
        self._told: set[str] = set()  # kinds of damage logged (once each)

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        dst = buffer_for(self.shape)
        if not self._decode(dst):
            if not self.loop or self.index == 0 or (self.damage and self.strict):
                return None
            self.cap.release()
            self.cap = cv2.VideoCapture(self.path)
            self.index = 0
            if not self.cap.isOpened() or not self._decode(dst):
                return None
        self.index += 1
        self.n += 1
        return {"frame": self.index - 1}

    def _decode(self, dst: np.ndarray) -> bool:
        """The next frame that decodes, into `dst`, reading past undecodable ones; False at the
        end of the file (noting it if that comes well before the frame count it declares)."""
        skipped = 0
        while True:
            ok, _ = self.cap.read(dst)
            if ok:
                self.gap = skipped
                if skipped:
                    first = f"frame {self.index}" if skipped == 1 else \
                        f"frames {self.index}-{self.index + skipped - 1}"
                    self._lost(skipped, "skip", f"{first} cannot be decoded: skipped")
                    self.index += skipped
                return True
            skipped += 1
            if skipped > SKIP_LIMIT or (self.declared and self.index + skipped >= self.declared):
                break
        missing = self.declared - self.index
        if self.declared and missing > max(3, self.declared // 100):  # counts are estimates
            self._lost(missing, "short", f"stopped at frame {self.index} of the {self.declared} "
                       f"it declares: {missing} missing (truncated or damaged)")
        return False

    def _lost(self, n: int, kind: str, what: str) -> None:
        """Counts undecodable frames as decode drops; says what happened once of each kind."""
        self.decode += n
        self.damage = self.damage or f"video {self.path}: {what}"
        if kind not in self._told:
            self._told.add(kind)
            log.warning("video %s: %s; counted as decode drops (the next such are only counted)",
                        self.path, what)

    def close(self) -> None:
        self.cap.release()


class Images(Source):
    """Still images from a folder or glob, EXIF orientation applied, grayscale made BGR.

    Files that cannot be decoded, were deleted or made unreadable since the folder was listed, or
    are larger than source.max_frame_pixels (told from the header, before any decoding) are
    skipped, counted and logged once each.
    """

    def __init__(self, cfg: ImagesSource):
        self.files = image_files(cfg.path)
        self.loop = cfg.loop
        self.fps = cfg.fps
        self.limit = cfg.max_frame_pixels
        self.i = 0
        self._bad: set[str] = set()
        biggest, oversized = largest_image(self.files, self.limit)
        if not biggest and oversized:
            raise SourceError(f"source.max_frame_pixels: every image at {cfg.path} is larger than "
                              f"{self.limit} pixels (e.g. {oversized})")
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
            if path in self._bad:
                continue
            img, why = self._load(path)
            if img is None:
                self._bad.add(path)
                self.corrupt += 1
                log.warning("skipping image %s: %s", why, path)
                continue
            np.copyto(buffer_for(img.shape), img)
            return {"frame": self.i - 1, "item": os.path.basename(path)}

    def _load(self, path: str) -> tuple[np.ndarray | None, str]:
        """The decoded image, or None and why not. The size is read from the header first, so
        an image too large for the ring is never decoded."""
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError:  # gone or unreadable since listed
            return None, "that cannot be read"
        size = image_size(io.BytesIO(data))
        if size is None:
            return None, "that cannot be decoded"
        w, h = size
        if w * h > self.limit:
            return None, f"of {w}x{h}, more pixels than source.max_frame_pixels ({self.limit}) allows"
        if w * h * 3 > self.max_frame_bytes:
            return None, f"of {w}x{h}, larger than every image at start (the ring is sized for those)"
        try:
            img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
        if img is None or img.size == 0 or img.nbytes > self.max_frame_bytes:
            return None, "that cannot be decoded"
        return img, ""


class Camera(Source):
    """A V4L2 camera through OpenCV (a USB webcam; a Pi camera module: picamera2_source.py), or an
    IP camera's RTSP/HTTP stream through OpenCV's FFmpeg backend (`open_stream`)."""

    def __init__(self, cfg: CameraSource):
        from .picamera2_source import not_for_v4l2, pi_hint  # (it imports this module)

        self.name = f"/dev/video{cfg.device}" if isinstance(cfg.device, int) else cfg.device
        if cfg.stream:
            self.name = mask_url(cfg.device)  # never a password in a log
            self.cap = open_stream(cfg, self.name)
        else:
            api = cv2.CAP_V4L2 if cfg.backend == "v4l2" else cv2.CAP_ANY
            why = not_for_v4l2(cfg.device, self.name) if cfg.backend == "v4l2" else ""
            if why:
                raise SourceError(why)
            self.cap = cv2.VideoCapture(cfg.device, api)
            if not self.cap.isOpened():
                raise SourceError(f"source.device: cannot open camera {self.name} "
                                  f"(backend {cfg.backend}); is it in use or not a capture device?"
                                  f"{pi_hint()}")
        self._configure(cfg)
        probe = self.cap.read()[1]  # the size the driver granted, which may differ from the request
        if probe is None:
            self.cap.release()
            raise SourceError(f"source.device: camera {self.name} opened but delivers no frames"
                              f"{'' if cfg.stream else pi_hint()}")
        self.shape = probe.shape if probe.ndim == 3 else (*probe.shape, 3)
        h, w = self.shape[:2]
        if w * h > cfg.max_frame_pixels:
            self.cap.release()
            raise SourceError(f"source.max_frame_pixels: camera {self.name} delivers {w}x{h} frames "
                              f"({w * h} pixels), more than the limit {cfg.max_frame_pixels}")
        self.max_frame_bytes = int(np.prod(self.shape))
        self.n = 0
        self.live = True

    def _configure(self, cfg: CameraSource) -> None:
        """A local camera's format, size and rate (a stream's are the sender's)."""
        if cfg.stream:
            return
        if cfg.fourcc:
            self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self.cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps the newest frame, not a backlog

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


# FFmpeg's options for a live stream: low-delay decoding, at most 0.5 s of reordering delay, RTSP
# over TCP unless asked otherwise. OpenCV reads them from the environment when it opens a stream.
STREAM_OPTIONS = "rtsp_transport;{transport}|flags;low_delay|max_delay;500000"


# OpenCV's FFmpeg reader tries a read that timed out twice more before it fails (measured: a
# hung stream fails a read after 3x CAP_PROP_READ_TIMEOUT_MSEC), so each attempt gets a third.
READ_ATTEMPTS = 3


def open_stream(cfg: CameraSource, name: str) -> cv2.VideoCapture:
    """An IP camera's stream in OpenCV's FFmpeg backend, with open and read timeouts: by default
    FFmpeg waits 30 s for a dead stream, and after some reconnects forever (opencv#4506,
    #22677); a read that times out here fails within source.read_timeout_s, and the capture
    stage reconnects. Frames larger than source.max_frame_pixels are refused before the first
    read (an HTTP camera's JPEG header is read before FFmpeg decodes one); a stream that does
    not open says why, as far as the camera tells (`name`: the URL as shown)."""
    auth = read_credentials(cfg.credentials) if cfg.credentials else None
    size = jpeg_size(cfg.device, auth, cfg.open_timeout_s)
    if size:
        _refuse_oversize(cfg, name, *size)
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = os.environ.get(
        "EDGE_PIPELINE_FFMPEG_OPTIONS", STREAM_OPTIONS.format(transport=cfg.rtsp_transport))
    url = with_credentials(cfg.device, *auth) if auth else cfg.device  # for FFmpeg only, never shown
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(cfg.read_timeout_s * 1000 / READ_ATTEMPTS))])
    if not cap.isOpened():
        why = why_not_open(cfg.device, auth, cfg.open_timeout_s) or \
            f"it did not open within {cfg.open_timeout_s:g} s (source.open_timeout_s)"
        raise SourceError(f"source.device: cannot open stream {name}: {why}")
    try:
        _refuse_oversize(cfg, name, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    except FrameTooLarge:
        cap.release()
        raise
    return cap


class FrameTooLarge(SourceError):
    """A source whose frames exceed source.max_frame_pixels: waiting for it changes nothing."""


def _refuse_oversize(cfg: CameraSource, name: str, width: int, height: int) -> None:
    if width * height > cfg.max_frame_pixels:
        raise FrameTooLarge(f"source.max_frame_pixels: camera {name} sends {width}x{height} frames "
                            f"({width * height} pixels), more than the limit {cfg.max_frame_pixels}")


def image_size(file: str | io.BytesIO) -> tuple[int, int] | None:
    """(width, height) from the image's header alone, without decoding it; None if unreadable."""
    try:
        with Image.open(file) as im:
            return im.size
    except Exception:  # not an image, or gone or unreadable
        return None


def largest_image(files: list[str], limit: int) -> tuple[int, str]:
    """Pixels of the largest image within `limit` (sizes the ring slot) and the first one beyond
    it ("" if none), from the file headers only."""
    biggest, oversized = 0, ""
    for f in files:
        size = image_size(f)
        if size is None:
            continue
        if size[0] * size[1] > limit:
            oversized = oversized or f"{f}: {size[0]}x{size[1]}"
        else:
            biggest = max(biggest, size[0] * size[1])
    return biggest, oversized


AnySource = SyntheticSource | VideoSource | ImagesSource | CameraSource | Picamera2Source


def frame_bytes_estimate(cfg: AnySource) -> int:
    """Bytes of the largest frame the source will deliver, known before it is opened for real
    (for the /dev/shm preflight); 0 where that cannot be told or exceeds source.max_frame_pixels
    (the source will say why)."""
    if isinstance(cfg, (SyntheticSource, CameraSource)):
        return cfg.width * cfg.height * 3
    if isinstance(cfg, Picamera2Source):
        return cfg.frame_size[0] * cfg.frame_size[1] * 3
    if isinstance(cfg, ImagesSource):
        return largest_image(image_files(cfg.path), cfg.max_frame_pixels)[0] * 3
    cap = cv2.VideoCapture(cfg.path)
    try:
        pixels = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) * int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return pixels * 3 if pixels <= cfg.max_frame_pixels else 0
    finally:
        cap.release()


def open_source(cfg: AnySource) -> Source:
    if isinstance(cfg, Picamera2Source):
        from .picamera2_source import Picamera2Camera  # (it imports this module)

        return Picamera2Camera(cfg)
    kinds = {"synthetic": Synthetic, "video": Video, "images": Images, "camera": Camera}
    return kinds[cfg.kind](cfg)

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
import stat
from typing import Any, BinaryIO, NamedTuple

import cv2
import numpy as np
from PIL import Image

from pipeline.config import CameraSource, ImagesSource, SyntheticSource, VideoSource, image_files
from pipeline.config.credentials import mask_url, read_credentials, with_credentials
from pipeline.config.schema import Picamera2Source

from .picamera2_source import Picamera2Camera, not_for_v4l2, pi_hint
from .source_base import BufferFor, Source, SourceError
from .stream_probe import jpeg_size, why_not_open

log = logging.getLogger("capture")
# Undecodable video frames in a row read past before the file counts as ended there: every failed
# read moves on by one packet, and the decoder resumes at the next frame it can decode.
SKIP_LIMIT = 250
# PIL only reads image headers here (sizes); source.max_frame_pixels is the limit that applies.
Image.MAX_IMAGE_PIXELS = None


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
        self.undecodable += n
        self.damage = self.damage or f"video {self.path}: {what}"
        if kind not in self._told:
            self._told.add(kind)
            log.warning("video %s: %s; counted as decode drops (the next such are only counted)",
                        self.path, what)

    def close(self) -> None:
        self.cap.release()


class Images(Source):
    """Still images from a folder or glob, EXIF orientation applied, grayscale made BGR.

    A file is read only once its size on disk and its header say it is an image the source can
    deliver (within source.max_frame_pixels, the ring's slot and source.roi), so a huge file or
    image is never read whole. Files that cannot be, or were deleted or made unreadable since
    the folder was listed, are skipped, counted and logged once each; a skipped file is tried
    again once it has changed (a photo caught while being written).
    """

    def __init__(self, cfg: ImagesSource):
        self.cfg = cfg
        self.files = image_files(cfg.path)
        self.loop = cfg.loop
        self.fps = cfg.fps
        self.i = 0
        self._skipped: dict[str, tuple[int, ...] | None] = {}  # path -> its stat when skipped
        self._told: set[str] = set()  # paths whose skip was logged
        self.survey = Survey(self.files, cfg)
        self.survey.refuse_none_usable(cfg, len(self.files))
        self.max_frame_bytes = self.survey.biggest * 3

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        for _ in range(len(self.files)):  # a whole pass without a frame: nothing left to read
            if self.i >= len(self.files):
                if not self.loop:
                    return None
                self.i = 0
            path = self.files[self.i]
            self.i += 1
            stamp = _stamp(path)
            if path in self._skipped and self._skipped[path] == stamp:
                continue  # skipped before and unchanged since
            img, skip = self._load(path)
            if img is None:
                self._skipped[path] = stamp
                if skip.kind == ROI:
                    self.roi += 1
                else:
                    self.corrupt += 1
                if path not in self._told:
                    self._told.add(path)
                    log.warning("skipping image %s: %s", skip.why, path)
                continue
            self._skipped.pop(path, None)
            np.copyto(buffer_for(img.shape), img)
            return {"frame": self.i - 1, "item": os.path.basename(path)}
        return None

    def _load(self, path: str) -> tuple[np.ndarray | None, Skip]:
        """The decoded image, or None and why not. The file's size and header are checked first,
        then it is read once (so what is decoded is what was checked) and decoded."""
        try:
            with open_regular(path) as f:
                size = check_image(f, self.cfg, self.max_frame_bytes // 3)
                if isinstance(size, Skip):
                    return None, size
                f.seek(0)
                nbytes = os.fstat(f.fileno()).st_size
                data = f.read(nbytes + 1)
        except OSError:  # gone, unreadable, or no longer a regular file since listed
            return None, Skip(UNREADABLE, "that cannot be read")
        if len(data) > nbytes or image_size(io.BytesIO(data)) != size:  # (shares data: no copy)
            return None, Skip(UNREADABLE, "that changed while it was read")
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
        if img is None or img.size == 0 or img.nbytes > self.max_frame_bytes:
            return None, Skip(UNREADABLE, "that cannot be decoded")
        h, w = img.shape[:2]
        try:
            self.cfg.roi_box(w, h)  # (where OpenCV turned it otherwise than its header said)
        except ValueError as e:
            return None, Skip(ROI, f"of {w}x{h}: source.{e}", f"{w}x{h}")
        return img, NOT_SKIPPED


class Camera(Source):
    """A V4L2 camera through OpenCV (a USB webcam; a Pi camera module: picamera2_source.py), or an
    IP camera's RTSP/HTTP stream through OpenCV's FFmpeg backend (`open_stream`)."""

    def __init__(self, cfg: CameraSource):
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
    level = cv2.utils.logging.getLogLevel()  # a failed open is said below, once, in words
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(100, int(cfg.read_timeout_s * 1000 / READ_ATTEMPTS))])
    finally:
        cv2.utils.logging.setLogLevel(level)
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


MIB = 2 ** 20
# An image file holds at most 8 bytes a pixel (16-bit RGBA stored uncompressed) and its metadata
# (EXIF, ICC profile, XMP, thumbnails: 16 MiB is plenty). A larger file is not an image that size.
IMAGE_BYTES_PER_PIXEL = 8
IMAGE_METADATA_BYTES = 16 * MIB
# Why an image file is skipped; all but ROI count as the `source` edge's drop reason `corrupt`.
OVERSIZED, UNREADABLE, ROI = "oversized", "unreadable", "roi"


def image_file_limit(pixels: int) -> int:
    """The most bytes an image file of `pixels` pixels takes."""
    return IMAGE_BYTES_PER_PIXEL * pixels + IMAGE_METADATA_BYTES


class Skip(NamedTuple):
    """Why an image file is skipped: the kind of reason, and words for the log."""

    kind: str
    why: str
    size: str = ""  # "WxH" where the header told it


NOT_SKIPPED = Skip("", "")


def open_regular(path: str) -> BinaryIO:
    """`path` opened for reading, if it is a regular file (a FIFO put in its place would block
    a plain open, a device would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def _stamp(path: str) -> tuple[int, ...] | None:
    """What changes when a file is written or replaced (None: it cannot be looked at)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def image_size(file: str | BinaryIO) -> tuple[int, int] | None:
    """(width, height) as decoded, from the image's header alone, without decoding it; None if
    unreadable. OpenCV turns an image by its EXIF orientation: 5-8 swap width and height."""
    try:
        with Image.open(file) as im:
            w, h = im.size
            exif = im.info.get("exif")  # read with the header (Image.getexif() may decode a PNG)
    except Exception:  # not an image, or gone or unreadable
        return None
    return (h, w) if exif and exif_orientation(exif) in (5, 6, 7, 8) else (w, h)


def exif_orientation(exif: bytes) -> int:
    """The EXIF orientation tag (1: upright; 0 where absent or unreadable)."""
    tags = Image.Exif()
    try:
        tags.load(exif)
        return int(tags.get(0x0112, 0))
    except Exception:  # a damaged EXIF block: taken as upright
        return 0


def check_image(f: BinaryIO, cfg: ImagesSource, ring_pixels: int = 0) -> tuple[int, int] | Skip:
    """(width, height) of an open image file the source can deliver, or why not, from the file's
    size on disk and its header alone (only the header is read): larger than
    source.max_frame_pixels or than the ring's slot (`ring_pixels`, 0: not sized yet), larger on
    disk than such an image can be, no image header, or too small for source.roi."""
    limit = min(cfg.max_frame_pixels, ring_pixels or cfg.max_frame_pixels)
    nbytes = os.fstat(f.fileno()).st_size
    if nbytes > image_file_limit(limit):
        return Skip(UNREADABLE, f"of {nbytes / MIB:.0f} MiB, more than an image of at most {limit} "
                                f"pixels takes ({image_file_limit(limit) / MIB:.0f} MiB)")
    size = image_size(f)
    if size is None:
        return Skip(UNREADABLE, "that cannot be decoded")
    w, h = size
    if w * h > cfg.max_frame_pixels:
        return Skip(OVERSIZED, f"of {w}x{h}, more pixels than source.max_frame_pixels "
                               f"({cfg.max_frame_pixels}) allows", f"{w}x{h}")
    if ring_pixels and w * h > ring_pixels:
        return Skip(OVERSIZED, f"of {w}x{h}, larger than every image at start (the ring is "
                               "sized for those)", f"{w}x{h}")
    if nbytes > image_file_limit(w * h):
        return Skip(UNREADABLE, f"of {w}x{h} in {nbytes / MIB:.0f} MiB, more than an image that "
                                "size takes", f"{w}x{h}")
    try:
        cfg.roi_box(w, h)
    except ValueError as e:
        return Skip(ROI, f"of {w}x{h}: source.{e}", f"{w}x{h}")
    return size


class Survey:
    """What the sizes and headers of a folder's images tell before any is decoded: the largest
    the source can deliver (its ring slot is sized for that one) and those it will skip."""

    def __init__(self, files: list[str], cfg: ImagesSource):
        self.biggest = 0  # pixels
        self.skips: dict[str, list] = {}  # kind -> [count, first "path: WxH"]
        for path in files:
            try:
                with open_regular(path) as f:
                    size = check_image(f, cfg)
            except OSError:
                size = Skip(UNREADABLE, "that cannot be read")
            if isinstance(size, Skip):
                example = f"{path}: {size.size}" if size.size else path
                self.skips.setdefault(size.kind, [0, example])[0] += 1
            else:
                self.biggest = max(self.biggest, size[0] * size[1])

    def refuse_none_usable(self, cfg: ImagesSource, files: int) -> None:
        """SourceError, saying why, when no image can be delivered."""
        if self.biggest:
            return
        if ROI in self.skips:
            raise SourceError(f"source.roi: {cfg.roi} fits none of the images at {cfg.path} that "
                              f"could be read (e.g. {self.skips[ROI][1]})")
        if OVERSIZED in self.skips:
            raise SourceError(f"source.max_frame_pixels: every image at {cfg.path} is larger than "
                              f"{cfg.max_frame_pixels} pixels (e.g. {self.skips[OVERSIZED][1]})")
        raise SourceError(f"source.path: none of the {files} image files at {cfg.path} can be read")

    def note(self) -> str:
        """The files that will be skipped, for --check ("": none)."""
        what = {ROI: "source.roi does not fit them", OVERSIZED: "larger than source.max_frame_pixels",
                UNREADABLE: "they cannot be read or decoded"}
        return "; ".join(f"{n} image(s) will be skipped: {what[kind]} (e.g. {example})"
                         for kind, (n, example) in self.skips.items())


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
        return Survey(image_files(cfg.path), cfg).biggest * 3
    cap = cv2.VideoCapture(cfg.path)
    try:
        pixels = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) * int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return pixels * 3 if pixels <= cfg.max_frame_pixels else 0
    finally:
        cap.release()


def open_source(cfg: AnySource) -> Source:
    if isinstance(cfg, Picamera2Source):
        return Picamera2Camera(cfg)
    kinds = {"synthetic": Synthetic, "video": Video, "images": Images, "camera": Camera}
    return kinds[cfg.kind](cfg)

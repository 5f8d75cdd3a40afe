"""A Raspberry Pi camera module through Picamera2 (libcamera), the way the tutorial reads it.

On Raspberry Pi OS Bookworm the camera modules (v2, v3, HQ) are driven by libcamera, and OpenCV's
V4L2 backend cannot read them (on a Pi 5 their V4L2 nodes deliver raw Bayer). Picamera2 is the
system package python3-picamera2, built against the system's numpy; it is imported only when such
a source is opened, so nothing else needs it installed.

Each frame is copied once, from the request's mapped buffer straight into the ring slot (converted
on the way when the format asks for it), and the request goes back to libcamera at once. The
configuration keeps no completed request waiting (`queue=False`): a read waits for the next frame
the sensor finishes, never returns an old one.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import numpy as np

from pipeline.config.schema import Picamera2Source

from .pixel_formats import converter
from .source_base import BufferFor, Source, SourceError

log = logging.getLogger("capture")

INSTALL = ("install it with `sudo apt install python3-picamera2` and make the venv with "
           "`python3 -m venv --system-site-packages` so that it sees the system's packages")
OPEN_TIMEOUT_S = 5.0  # the first frame after start (the sensor and its control loops starting)
STALL_FRAMES = 10  # frame periods without a frame before the camera counts as stopped (2 s at least)

# The Pi's own camera stack, as video nodes name themselves (/sys/class/video4linux/videoN/name):
# the CSI-2 receivers (Pi 4 unicam, Pi 5 rp1-cfe) and the ISPs. Only libcamera can drive them.
LIBCAMERA_NODES = ("unicam", "rp1-cfe", "bcm2835-isp", "pispbe")
SYSFS_V4L = "/sys/class/video4linux"
DT_MODEL = "/proc/device-tree/model"
USE_PICAMERA2 = 'a camera module is read with source.kind = "picamera2", source.camera = 0 for the first'


class Api(NamedTuple):
    """The part of Picamera2 this source uses, and the colour space its YUV420 conversion assumes
    (libcamera.ColorSpace.Smpte170m: BT.601, limited range, as OpenCV converts it)."""

    Picamera2: Any
    MappedArray: Any
    smpte170m: Callable[[], Any]


def import_picamera2() -> Api:
    """Picamera2 from the system's packages, or a one-line SourceError saying how to get it."""
    try:  # picamera2 first: when it is missing too, that is the module to name
        from picamera2 import MappedArray, Picamera2  # noqa: I001

        import libcamera
    except (ImportError, ValueError) as e:
        raise SourceError(import_problem(e, np.__version__)) from e
    return Api(Picamera2, MappedArray, libcamera.ColorSpace.Smpte170m)


def import_problem(e: BaseException, numpy_version: str) -> str:
    """What to tell the user when picamera2 cannot be imported. The common trap: numpy 2 pip-
    installed into a venv that sees the system's picamera2, whose simplejpeg (and the like) were
    built for numpy 1 ("numpy.dtype size changed", or "compiled using NumPy 1.x")."""
    text = str(e)
    missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
    if missing == "picamera2":
        return f'source.kind = "picamera2": the picamera2 module is not installed here; {INSTALL}'
    if missing == "libcamera":
        return ('source.kind = "picamera2": picamera2 is here but libcamera\'s Python bindings are '
                f"not (pip cannot install them); {INSTALL}")
    numpy_abi = ("size changed" in text or "NumPy 1.x" in text or "numpy.core.multiarray" in text
                 or "_ARRAY_API" in text)
    if numpy_abi or (int(numpy_version.split(".")[0]) >= 2 and "numpy" in text.lower()):
        return (f'source.kind = "picamera2": the system\'s picamera2 was built for numpy 1.x and '
                f"this environment has numpy {numpy_version} ({text.strip().splitlines()[0]}); run "
                "`pip install 'numpy<2' 'opencv-python-headless<4.12'` in the venv (OpenCV 4.12 "
                "and later need numpy 2)")
    return f'source.kind = "picamera2": picamera2 cannot be imported ({type(e).__name__}: {text})'


def to_monotonic_ns(sensor_ns: int, boot_ns: int, mono_ns: int) -> int:
    """A sensor timestamp on the pipeline's clock (CLOCK_MONOTONIC), given both clocks read now.

    libcamera documents SensorTimestamp as CLOCK_BOOTTIME, while the Pi's kernel drivers stamp
    V4L2 buffers with CLOCK_MONOTONIC (Picamera2 compares them with time.monotonic_ns()). The two
    differ by the time the system spent suspended: a frame just captured that reads later than
    the monotonic `mono_ns` can only be on the boot clock, and is moved back by that difference."""
    if sensor_ns > mono_ns:
        return sensor_ns - (boot_ns - mono_ns)
    return sensor_ns


class Picamera2Camera(Source):
    """A camera module through Picamera2: one copy a frame into the ring, the newest frame."""

    def __init__(self, cfg: Picamera2Source, api: Api | None = None):
        self.api = api or import_picamera2()
        self.name = f"camera {cfg.camera}"
        self.live = True
        self.n = 0
        self.timeout_s = max(2.0, STALL_FRAMES / cfg.fps)
        cameras = self.api.Picamera2.global_camera_info()
        if cfg.camera >= len(cameras):
            seen = ", ".join(f"{i}: {c.get('Model', '?')}" for i, c in enumerate(cameras)) or "none"
            raise SourceError(f"source.camera: no camera {cfg.camera} (libcamera sees {seen}); is "
                              "the ribbon cable seated both ends? `rpicam-hello --list-cameras` "
                              "lists what libcamera finds")
        self.name = f"camera {cfg.camera} ({cameras[cfg.camera].get('Model', '?')})"
        try:
            self.cam = self.api.Picamera2(cfg.camera)
        except Exception as e:  # libcamera's own reasons: in use, gone
            raise SourceError(f"source.camera: cannot open {self.name}: {e} (is another program "
                              "using it?)") from e
        try:
            self._start(cfg)
        except BaseException:
            self.close()
            raise

    def _start(self, cfg: Picamera2Source) -> None:
        self.stream = "lores" if cfg.lores else "main"
        main = {"size": (cfg.width, cfg.height), "format": cfg.format}
        lores = {"size": (cfg.lores.width, cfg.lores.height), "format": cfg.lores.format} \
            if cfg.lores else None
        frame_us = round(1e6 / cfg.fps)
        extra = {"colour_space": self.api.smpte170m()} \
            if "YUV420" in (cfg.format, lores and lores["format"]) else {}
        try:
            config = self.cam.create_video_configuration(
                main=main, lores=lores, buffer_count=cfg.buffer_count, queue=False,
                controls={"FrameDurationLimits": (frame_us, frame_us)}, display=None, encode=None,
                **extra)
            self.cam.configure(config)
        except Exception as e:  # Picamera2 and libcamera refuse with RuntimeError or ValueError
            hint = "; a Pi 4 gives the lores stream as YUV420 only" \
                if lores and lores["format"] != "YUV420" else ""
            raise SourceError(f"source: {self.name} cannot be configured as asked ({e}){hint}") from e
        granted = self.cam.camera_config[self.stream]
        w, h = granted["size"]
        if w * h > cfg.max_frame_pixels:
            raise SourceError(f"source.max_frame_pixels: {self.name} delivers {w}x{h} frames "
                              f"({w * h} pixels), more than the limit {cfg.max_frame_pixels}")
        if (w, h) != cfg.frame_size:
            log.warning("%s delivers %dx%d frames for the %dx%d asked", self.name, w, h,
                        *cfg.frame_size)
        self.shape = (h, w, 3)
        self.max_frame_bytes = h * w * 3
        self.convert = converter(granted["format"], w, h, granted["stride"])
        self.map = self.api.MappedArray
        if "write" in inspect.signature(self.map).parameters:  # Picamera2 0.3.17 on
            self.map = partial(self.map, write=False)  # read-only: no cache write-back on unmap
        try:
            self.cam.start()
            self.cam.capture_request(wait=OPEN_TIMEOUT_S).release()  # frames do flow
        except Exception as e:
            raise SourceError(f"source.camera: {self.name} started but delivers no frames "
                              f"({type(e).__name__}: {e})") from e

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        try:
            request = self.cam.capture_request(wait=self.timeout_s)
        except TimeoutError as e:  # Picamera2 0.3.20 on; before, the stage watchdog sees it
            raise SourceError(f"{self.name}: no frame for {self.timeout_s:.1f} s") from e
        except Exception as e:  # libcamera failed
            raise SourceError(f"{self.name}: {type(e).__name__}: {e}") from e
        try:
            with self.map(request, self.stream) as m:
                self.convert(m.array, buffer_for(self.shape))
            sensor_ns = request.get_metadata().get("SensorTimestamp")
        finally:
            request.release()
        self.n += 1
        meta: dict[str, Any] = {"frame": self.n - 1}
        if sensor_ns:
            boot, mono = time.clock_gettime_ns(time.CLOCK_BOOTTIME), time.monotonic_ns()
            meta["sensor_ns"] = to_monotonic_ns(sensor_ns, boot, mono)
        return meta

    def close(self) -> None:
        cam, self.cam = getattr(self, "cam", None), None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as e:  # a camera that failed may not stop cleanly
                log.debug("%s: %s: %s", self.name, step.__name__, e)


def libcamera_node(device: int | str) -> str:
    """The name of `device`'s video node if it belongs to the Pi's libcamera stack (which a V4L2
    application cannot read), else ""."""
    path = f"/dev/video{device}" if isinstance(device, int) else os.path.realpath(device)
    node = os.path.basename(path)
    if not node.startswith("video"):
        return ""
    try:
        with open(os.path.join(SYSFS_V4L, node, "name")) as f:
            name = f.read().strip()
    except OSError:
        return ""
    return name if name.startswith(LIBCAMERA_NODES) else ""


def not_for_v4l2(device: int | str, name: str) -> str:
    """Why the V4L2 camera source cannot read `device` (named `name`), or "": it is a node of the
    Pi's libcamera stack, and this process does not run under libcamera's V4L2 compatibility
    layer (`libcamerify`, which would make it readable)."""
    node = libcamera_node(device)
    if not node or "v4l2-compat" in os.environ.get("LD_PRELOAD", ""):
        return ""
    return (f"source.device: {name} is the Raspberry Pi's {node} node, which only libcamera can "
            f"drive (OpenCV's V4L2 backend cannot); {USE_PICAMERA2}")


def pi_hint() -> str:
    """The hint a failing V4L2 camera adds on a Raspberry Pi ("" elsewhere)."""
    try:
        with open(DT_MODEL, "rb") as f:
            model = f.read()
    except OSError:
        return ""
    return f" (on a Raspberry Pi, {USE_PICAMERA2})" if b"Raspberry Pi" in model else ""

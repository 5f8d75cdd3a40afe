"""A stand-in for the part of Picamera2 the picamera2 source uses, for machines without a camera
or libcamera: `Picamera2` (global_camera_info, create_video_configuration, configure, start,
capture_request, stop, close, camera_config), `MappedArray` and the requests' `get_metadata` and
`release`, with Picamera2's documented behaviour where the source depends on it.

Frames are real: a colour test card encoded in the stream's declared pixel format, rows padded to
64 bytes as the Pi's ISP pads them (the padding filled with 0xEE, so a frame that keeps it shows),
stamped with a CLOCK_BOOTTIME SensorTimestamp as libcamera documents, and delivered at the frame
rate asked for. With `queue=False` a capture waits for the next frame, as Picamera2 does.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from workers.capture.picamera2_source import Api

PAD = 0xEE
ALIGN = 64  # bytes a row is padded to
BYTES = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}
# Picamera2 (picamera2/request.py, _get_pil_mode): the byte order each name stands for in memory.
ORDER = {"RGB888": "BGR", "BGR888": "RGB", "XRGB8888": "BGRX", "XBGR8888": "RGBX"}

# The cameras "attached": what global_camera_info() reports; tests add and remove them.
attached: list[dict[str, Any]] = [{"Model": "imx708", "Location": 2, "Rotation": 180,
                                   "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a", "Num": 0}]
faults: dict[int, str] = {}  # camera number -> "error" (capture fails) or "stall" (no frames)
# For a pipeline run, where the cameras live in other processes: a file holding the fault of
# every camera ("" for none), read at each capture.
FAULT_FILE = os.environ.get("PICAMERA2_STANDIN_FAULT", "")
_in_use: set[int] = set()


def fault_of(num: int) -> str | None:
    if not FAULT_FILE:
        return faults.get(num)
    try:
        with open(FAULT_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None


# BGR: white, yellow, cyan, green, magenta, red, blue, near black
BARS = np.array([[255, 255, 255], [0, 255, 255], [255, 255, 0], [0, 255, 0], [255, 0, 255],
                 [0, 0, 255], [255, 0, 0], [16, 16, 16]], np.uint8)


def bar_centre(i: int, w: int) -> int:
    """A column in the middle of bar `i` of a card `w` wide."""
    return (2 * i + 1) * w // (2 * len(BARS))


def test_card(w: int, h: int) -> np.ndarray:
    """BGR test card: the eight colour bars over a grey ramp, in 2x2 blocks (so YUV420's shared
    chroma samples each cover one colour)."""
    x = (np.arange(w) // 2 * 2 * len(BARS)) // w
    card = np.repeat(BARS[x][None], h, axis=0)
    card[h // 2 // 2 * 2:] = (np.arange(w) // 2 * 2 * 255 // max(1, w - 1)).astype(np.uint8)[:, None]
    return card


def stride_for(fmt: str, w: int) -> int:
    row = w if fmt == "YUV420" else w * BYTES[fmt]
    return -(-row // ALIGN) * ALIGN


def encode(bgr: np.ndarray, fmt: str, stride: int) -> np.ndarray:
    """The flat buffer a camera would fill with `bgr` in `fmt`, rows `stride` bytes apart."""
    h, w = bgr.shape[:2]
    if fmt == "YUV420":
        buf = np.full(h * stride * 3 // 2, PAD, np.uint8)
        y, u, v = smpte170m_yuv(bgr)
        buf[:h * stride].reshape(h, stride)[:, :w] = y
        c = (h // 2) * (stride // 2)
        for i, plane in enumerate((u, v)):
            start = h * stride + i * c
            buf[start:start + c].reshape(h // 2, stride // 2)[:, :w // 2] = plane
        return buf
    buf = np.full(h * stride, PAD, np.uint8)
    rows = buf.reshape(h, stride)[:, :w * BYTES[fmt]].reshape(h, w, BYTES[fmt])
    for i, c in enumerate(ORDER[fmt]):
        rows[..., i] = 0 if c == "X" else bgr[..., "BGR".index(c)]
    return buf


def smpte170m_yuv(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V planes (4:2:0, 2x2 averages) of BT.601 limited range, the colour space the source
    asks libcamera for: the inverse of Picamera2's YUV2RGB_SMPTE170M (picamera2/converters.py)."""
    f = bgr.astype(np.float64) / 255
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b

    def sub(p: np.ndarray) -> np.ndarray:
        return (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4

    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, sub(u), sub(v)))


def image_view(buf: np.ndarray, fmt: str, w: int, h: int, stride: int) -> np.ndarray:
    """A flat camera buffer as MappedArray shows it, without a copy (_make_array_shared)."""
    if fmt == "YUV420":
        return buf.reshape(h * 3 // 2, stride)
    return buf.reshape(h, stride)[:, :w * BYTES[fmt]].reshape(h, w, BYTES[fmt])


class CompletedRequest:
    def __init__(self, picam2: "Picamera2", buffers: dict[str, np.ndarray], metadata: dict):
        self.picam2 = picam2
        self.config = picam2.camera_config
        self.buffers: dict[str, np.ndarray] | None = buffers
        self._metadata = metadata
        self.released = False

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def release(self) -> None:
        if self.released:
            raise RuntimeError("CompletedRequest: lock now has negative ref_count")
        self.released = True
        self.buffers = None  # the buffer goes back to the camera: no view of it may outlive this
        self.picam2.held -= 1


class MappedArray:
    """The request's buffer as an image, without copying: packed formats (h, w, bytes) with the
    row padding sliced off, YUV420 (h * 3 / 2, stride) with it kept (picamera2/request.py)."""

    def __init__(self, request: CompletedRequest, stream: str, reshape: bool = True,
                 write: bool = True):
        self.request, self.stream, self.reshape, self.write = request, stream, reshape, write
        self.array: np.ndarray | None = None

    def __enter__(self) -> "MappedArray":
        if self.request.buffers is None:
            raise RuntimeError("MappedArray: the request was released")
        buf = self.request.buffers[self.stream]
        buf.flags.writeable = self.write
        cfg = self.request.config[self.stream]
        self.array = image_view(buf, cfg["format"], *cfg["size"], cfg["stride"]) \
            if self.reshape else buf
        return self

    def __exit__(self, *exc: object) -> None:
        self.array = None


class Picamera2:
    def __init__(self, camera_num: int = 0):
        if camera_num >= len(attached):
            raise IndexError("list index out of range")
        if camera_num in _in_use:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        _in_use.add(camera_num)
        self.num = camera_num
        self.camera_config: dict[str, Any] | None = None
        self.started = False
        self.held = 0  # requests handed out and not released
        self.frames = 0
        self._t0 = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in attached]

    def create_video_configuration(self, main={}, lores=None, raw={}, transform=None,
                                   colour_space=None, buffer_count=6, controls={},
                                   display="main", encode="main", queue=True, sensor={},
                                   use_case="video") -> dict[str, Any]:
        main = {"format": "XBGR8888", "size": (1280, 720), **main}
        lores = None if lores is None else {"format": "YUV420", "size": main["size"], **lores}
        for stream in (main, lores):
            if stream is not None:  # Picamera2.align_stream(optimal=False): even sizes
                w, h = stream["size"]
                stream["size"] = (w - w % 2, h - h % 2)
        return {"use_case": use_case, "colour_space": colour_space, "buffer_count": buffer_count,
                "queue": queue, "main": main, "lores": lores, "raw": raw,
                "controls": {"FrameDurationLimits": (33333, 33333), **controls},
                "display": display, "encode": encode}

    def configure(self, config: dict[str, Any]) -> None:
        main, lores = config["main"], config["lores"]
        if lores is not None:
            if lores["size"][0] > main["size"][0] or lores["size"][1] > main["size"][1]:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
        for stream in (main, lores):
            if stream is not None:
                fmt, (w, h) = stream["format"], stream["size"]
                if fmt not in BYTES and fmt != "YUV420":
                    raise RuntimeError(f"Format {fmt} not supported")
                stream["stride"] = stride_for(fmt, w)
                stream["framesize"] = stream["stride"] * (h * 3 // 2 if fmt == "YUV420" else h)
        self.camera_config = config
        us = config["controls"]["FrameDurationLimits"][0]
        self.period = us / 1e6
        self._cards = {name: encode(test_card(*s["size"]), s["format"], s["stride"])
                       for name, s in (("main", main), ("lores", lores)) if s is not None}

    def start(self) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self._t0 = time.monotonic()

    def capture_request(self, wait: Any = None, flush: Any = None) -> CompletedRequest:
        """The next frame the sensor finishes (queue=False keeps none waiting); `wait` in seconds
        raises TimeoutError when none comes (Picamera2 0.3.20)."""
        if not self.started:
            raise RuntimeError("Camera is not running")
        timeout = None if wait in (None, True) else float(wait)
        fault = fault_of(self.num)
        if fault == "error":
            raise RuntimeError("Camera frontend has timed out!")
        if fault == "stall":
            time.sleep(timeout if timeout is not None else 3600)
            raise TimeoutError()
        with self._lock:
            self.frames += 1
            due = self._t0 + self.frames * self.period
            if not self.camera_config["queue"]:  # a frame finished while nobody asked is gone
                late = int((time.monotonic() - due) // self.period) + 1
                if late > 0:
                    self.frames += late
                    due += late * self.period
            time.sleep(max(0.0, due - time.monotonic()))
            exposed = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - int(self.period * 1e9)
            self.held += 1
            buffers = {name: card.copy() for name, card in self._cards.items()}
            return CompletedRequest(self, buffers, {"SensorTimestamp": exposed,
                                                    "ExposureTime": int(self.period * 1e6)})

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.stop()
        _in_use.discard(self.num)


class ColorSpace:
    """libcamera.ColorSpace, as far as the source names it."""

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def Smpte170m(cls) -> "ColorSpace":  # noqa: N802 (libcamera's name)
        return cls("SMPTE170M")


API = Api(Picamera2, MappedArray, ColorSpace.Smpte170m)

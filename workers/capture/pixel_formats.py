"""Camera pixel layouts turned into what the frames ring holds (B,G,R bytes), written once into the
ring slot.

The names are libcamera's (DRM fourccs, named for a little-endian word), so they read backwards:
RGB888 is B,G,R in memory, BGR888 is R,G,B, XRGB8888 is B,G,R,X and XBGR8888 is R,G,B,X. YUV420
is planar I420: a Y plane of `stride` bytes a row, then U and V planes of `stride / 2`, seen as
one (h * 3 / 2, stride) array; Picamera2 pads a row to the ISP's alignment (a lores width that is
not a multiple of 64 comes back padded), and the padding is sliced off here, never converted.

Each conversion takes the camera buffer as Picamera2's MappedArray shows it (packed formats:
(h, w, channels) with the padding already sliced off by a strided view; YUV420: the plane array
above) and `dst`, a C-contiguous (h, w, 3) uint8 slot. Nothing is allocated per frame but views.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import cv2
import numpy as np

Convert = Callable[[np.ndarray, np.ndarray], None]
FORMATS = ("RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420")
CHANNELS = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}  # bytes a pixel (packed)


def from_rgb888(src: np.ndarray, dst: np.ndarray) -> None:
    """RGB888 is already B,G,R in memory: the one copy into the slot."""
    np.copyto(dst, src)


def from_bgr888(src: np.ndarray, dst: np.ndarray) -> None:
    """BGR888 is R,G,B in memory (what the tutorial hands to the model): swapped on the way."""
    cv2.cvtColor(src, cv2.COLOR_RGB2BGR, dst=dst)


def from_xrgb8888(src: np.ndarray, dst: np.ndarray) -> None:
    """XRGB8888 is B,G,R,X: the fourth byte dropped."""
    cv2.cvtColor(src, cv2.COLOR_BGRA2BGR, dst=dst)


def from_xbgr8888(src: np.ndarray, dst: np.ndarray) -> None:
    """XBGR8888 is R,G,B,X: swapped and the fourth byte dropped."""
    cv2.cvtColor(src, cv2.COLOR_RGBA2BGR, dst=dst)


def from_yuv420(planes: np.ndarray, dst: np.ndarray, packed: np.ndarray | None = None) -> None:
    """I420 to BGR with OpenCV's BT.601 limited-range matrix (libcamera's Smpte170m colour space,
    which the source asks for). OpenCV reads the planes without row padding, so a padded buffer
    is first packed into `packed` ((h * 3 / 2, w), allocated once by the caller): half the bytes
    of the BGR frame, and the padding never reaches the colour conversion."""
    h, w = dst.shape[:2]
    stride = planes.shape[1]
    if stride == w:
        cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420, dst=dst)
        return
    if packed is None:
        raise ValueError(f"a YUV420 buffer of stride {stride} for width {w} needs a packing buffer")
    src, out = planes.reshape(-1), packed.reshape(-1)
    chroma_in, chroma_out = (h // 2) * (stride // 2), (h // 2) * (w // 2)
    np.copyto(out[:h * w].reshape(h, w), src[:h * stride].reshape(h, stride)[:, :w])
    for plane in range(2):  # U, then V
        a, b = h * stride + plane * chroma_in, h * w + plane * chroma_out
        np.copyto(out[b:b + chroma_out].reshape(h // 2, w // 2),
                  src[a:a + chroma_in].reshape(h // 2, stride // 2)[:, :w // 2])
    cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420, dst=dst)


def converter(fmt: str, width: int, height: int, stride: int) -> Convert:
    """The conversion for a stream, with whatever buffer it needs allocated now, not per frame."""
    if fmt == "YUV420":
        packed = None if stride == width else np.empty((height * 3 // 2, width), np.uint8)
        return partial(from_yuv420, packed=packed)
    table: dict[str, Convert] = {"RGB888": from_rgb888, "BGR888": from_bgr888,
                                 "XRGB8888": from_xrgb8888, "XBGR8888": from_xbgr8888}
    if fmt not in table:
        raise ValueError(f"pixel format {fmt!r} is not one of {', '.join(FORMATS)}")
    return table[fmt]

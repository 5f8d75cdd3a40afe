"""What does each camera pixel format cost per frame? The picamera2 source's conversion of one
mapped camera buffer into a frames-ring slot, for every format it accepts, against a plain
`np.copyto` of the same-sized BGR frame into a slot (the least any source does), measured in the
same run.

    .venv/bin/python -m tools.bench.pixel_formats [--sizes 640x480 224x224] [--repeats 9]

Camera buffers have rows padded to 64 bytes, as the Pi's ISP gives them (a 224-pixel row of
RGB888 is 704 bytes, of YUV420 256): the conversion reads them the way Picamera2's MappedArray
shows them, a strided view. It runs on one core with one OpenCV thread, as the capture stage
does. The measurements alternate, `--repeats` times each, so slow drift of a shared machine hits
them all; medians are printed, with each format's ratio to the copy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import cv2
import numpy as np

from pipeline.transport.ring import Ring
from workers.capture.pixel_formats import FORMATS, converter

ALIGN = 64
BYTES = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4}


def camera_buffer(fmt: str, w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random frame in `fmt` with padded rows, as MappedArray shows it, and its stride."""
    row = w if fmt == "YUV420" else w * BYTES[fmt]
    stride = -(-row // ALIGN) * ALIGN
    rows = h * 3 // 2 if fmt == "YUV420" else h
    buf = rng.integers(0, 256, (rows, stride), dtype=np.uint8)
    if fmt == "YUV420":
        return buf, stride
    return buf[:, :row].reshape(h, w, BYTES[fmt]), stride


def per_frame_us(fn, src: np.ndarray, dst: np.ndarray, frames: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(frames):
        fn(src, dst)
    return (time.perf_counter_ns() - t0) / frames / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["640x480", "224x224"])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--frames", type=int, default=200, help="frames converted per repeat")
    ap.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)),
                    help="the one core to run on, as the capture stage does (default: the first)")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    cv2.setNumThreads(1)  # what OpenCV makes of a process pinned to one core
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes]
    rng = np.random.default_rng(0)
    name = f"edge-pipeline-bench-formats-{os.getpid()}"
    ring = Ring.create(name, 2, max(w * h * 3 for w, h in sizes))
    print(f"{platform.machine()}, core {args.core}, numpy {np.__version__}, OpenCV "
          f"{cv2.__version__}; medians of {args.repeats} x {args.frames} frames")
    try:
        for w, h in sizes:
            dst = ring.view(0, (h, w, 3))
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            cases = {"copyto (baseline)": (np.copyto, frame, w * 3)}
            for fmt in FORMATS:
                src, stride = camera_buffer(fmt, w, h, rng)
                cases[fmt] = (converter(fmt, w, h, stride), src, stride)
            times: dict[str, list[float]] = {k: [] for k in cases}
            for fn, src, _ in cases.values():
                per_frame_us(fn, src, dst, 5)  # warm: pages mapped, OpenCV's code loaded
            for _ in range(args.repeats):
                for k, (fn, src, _) in cases.items():
                    times[k].append(per_frame_us(fn, src, dst, args.frames))
            base = statistics.median(times["copyto (baseline)"])
            print(f"\n{w}x{h}                 us/frame   x copyto   stride (bytes)")
            for k, (_, _, stride) in cases.items():
                us = statistics.median(times[k])
                padded = " padded" if k in FORMATS and stride > (w if k == "YUV420" else w * BYTES[k]) else ""
                print(f"  {k:<20} {us:9.1f}   {us / base:8.2f}   {stride}{padded}")
    finally:
        ring.close()
        Ring.unlink(name)


if __name__ == "__main__":
    main()

"""What does ordering the rings' sequence lock cost? The time of one `full_fence()` call, and of
the three a frame takes (two by its writer, one by each reader), against copying one 640x480x3
frame into a ring slot, measured in the same run.

    .venv/bin/python -m tools.bench.fence [--repeats 9] [--calls 200000] [--frames 300]

The two measurements alternate, `--repeats` times each, so slow drift of a shared machine hits
both; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from pipeline.transport.fence import FENCE, full_fence
from pipeline.transport.ring import Ring

FRAME = (480, 640, 3)
FENCES_PER_FRAME = 3


def fence_ns(calls: int) -> float:
    fence = full_fence
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fence()
    return (time.perf_counter_ns() - t0) / calls


def frame_write_ns(ring: Ring, frame: np.ndarray, frames: int) -> float:
    """The plain part of a ring write, copying the pixels into a slot (the sequence words are
    left out, so the baseline stays the same whether or not `Ring` fences them)."""
    t0 = time.perf_counter_ns()
    for seq in range(1, frames + 1):
        np.copyto(ring.view(seq % ring.slots, FRAME), frame)
    return (time.perf_counter_ns() - t0) / frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200_000, help="fence calls per repeat")
    ap.add_argument("--frames", type=int, default=300, help="frames written per repeat")
    args = ap.parse_args()

    name = f"edge-pipeline-bench-fence-{os.getpid()}"
    ring = Ring.create(name, 3, int(np.prod(FRAME)))
    try:
        frame = np.random.default_rng(0).integers(0, 256, FRAME, dtype=np.uint8)
        frame_write_ns(ring, frame, 10)  # map the slots' pages before timing
        fences, writes = [], []
        for _ in range(args.repeats):
            fences.append(fence_ns(args.calls))
            writes.append(frame_write_ns(ring, frame, args.frames))
    finally:
        ring.close()
        Ring.unlink(name)

    fence, write = statistics.median(fences), statistics.median(writes)
    per_frame = FENCES_PER_FRAME * fence
    print(f"machine            {platform.machine()}, python {platform.python_version()}")
    print(f"fence              {FENCE}")
    print(f"one fence          {fence:8.1f} ns   (repeats {min(fences):.1f} .. {max(fences):.1f})")
    print(f"baseline: write    {write / 1000:8.1f} us   one {FRAME[1]}x{FRAME[0]}x3 frame copied into a slot "
          f"(repeats {min(writes) / 1000:.1f} .. {max(writes) / 1000:.1f})")
    print(f"fences per frame   {per_frame:8.1f} ns   ({FENCES_PER_FRAME} fences)")
    print(f"ratio              {per_frame / write:8.4f}   fences per frame / baseline write "
          f"({100 * per_frame / write:.2f} %)")


if __name__ == "__main__":
    main()

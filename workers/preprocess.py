"""Preprocess stage: raw BGR frame -> normalised RGB CHW float32 model input, in the tensors ring.

`Preprocessor` matches torchvision's eval transform: Resize(256) on the shorter side, CenterCrop(224)
(or a direct "squash" resize), ToTensor() and Normalize(ImageNet mean/std). The normalisation is
fused into one multiply-add per channel written straight into the shared-memory slot.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import cv2
import numpy as np

from pipeline.messages import FRAME_FIELDS
from pipeline.ring import Ring
from pipeline.stage import StageContext
from pipeline.stats import StageMeter
from pipeline.tcp_edge import Curve, TcpEdgeReader
from pipeline.transport import EdgeReader, EdgeWriter

from .normalize import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from .sources import frame_bytes_estimate

log = logging.getLogger("preprocess")


class Preprocessor(Normalizer):
    """Resizes and normalises frames into preallocated buffers (one per input frame size)."""

    def __init__(self, resize: str = "crop", resize_size: int = 256, crop_size: int = 224,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__(mean, std)
        self.resize = resize
        self.resize_size = resize_size
        self.crop_size = crop_size
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (3, self.crop_size, self.crop_size)

    def geometry(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(resized_h, resized_w, crop_top, crop_left), computed as torchvision computes them."""
        s = self.crop_size
        if self.resize == "squash":
            return s, s, 0, 0
        r = self.resize_size
        if w <= h:
            rh, rw = int(r * h / w), r
        else:
            rh, rw = r, int(r * w / h)
        return rh, rw, int(round((rh - s) / 2.0)), int(round((rw - s) / 2.0))

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """Resized, center-cropped BGR uint8 (a view into a private buffer: the frame is fully
        read when this returns, so the caller can check the source slot was not overwritten).

        When shrinking, only the part of the frame the crop needs is resized, cut where the
        area resize's output and source pixel edges meet: the pixels are then exactly those of
        resizing the whole frame (a 16:9 frame shrunk to 455 columns repeats every 91 output
        columns, so 273 of 455 are computed: 0.9 instead of 1.4 ms for 640x360)."""
        h, w = frame.shape[:2]
        entry = self._buffers.get((h, w))
        if entry is None:
            rh, rw, top, left = self.geometry(h, w)
            s = self.crop_size
            interp = cv2.INTER_AREA if rh < h else cv2.INTER_LINEAR
            # (bilinear upscaling reads neighbours across a window's edge: whole frame then)
            windowed = interp == cv2.INTER_AREA
            y0, y1, sy0, sy1 = _window(h, rh, top, s) if windowed else (0, rh, 0, h)
            x0, x1, sx0, sx1 = _window(w, rw, left, s) if windowed else (0, rw, 0, w)
            resized = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            cropped = resized[top - y0:top - y0 + s, left - x0:left - x0 + s]
            entry = (resized, cropped, interp, (slice(sy0, sy1), slice(sx0, sx1)))
            if len(self._buffers) > 32:
                self._buffers.clear()
            self._buffers[(h, w)] = entry
        resized, cropped, interp, window = entry
        cv2.resize(frame[window], (resized.shape[1], resized.shape[0]), dst=resized,
                   interpolation=interp)
        return cropped

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        self.normalize(self.crop(frame), out)


def _window(src: int, dst: int, start: int, size: int) -> tuple[int, int, int, int]:
    """Along one axis, resizing src -> dst pixels, of which [start, start + size) are wanted:
    the output range [o0, o1) and source range [i0, i1) to resize instead of the whole, chosen on
    the points where output and source pixel edges meet (every dst/g outputs, g = gcd), so the
    result is the same. The whole axis where those points are too sparse to help."""
    g = math.gcd(src, dst)
    period_out, period_in = dst // g, src // g
    o0 = start // period_out * period_out
    o1 = min(dst, -(-(start + size) // period_out) * period_out)
    if o1 - o0 >= dst:
        return 0, dst, 0, src
    return o0, o1, o0 // period_out * period_in, o1 // period_out * period_in


def open_frames_reader(ctx: StageContext) -> tuple[EdgeReader, Curve | None]:
    """The frames edge from this source's capture: shared memory, or inline over tcp (into a
    ring of this host's own, `<edge>.rx`)."""
    config, edge = ctx.config, ctx.config.edges.frames
    endpoint, ring_name = ctx.edge("frames")
    if not edge.tcp:
        policy = config.policy("frames", ctx.instance.source)
        return EdgeReader(ctx.zmq, endpoint, ring_name, policy, required=FRAME_FIELDS), None
    host = ctx.source.host
    curve = Curve(config.curve.keys, config.inference.host) if config.curve.keys else None
    _, connect = config.frames_endpoints(ctx.instance.source)
    # A source captured elsewhere cannot be asked here: the ring then fits the first frame.
    estimate = frame_bytes_estimate(ctx.source) if host == config.inference.host else 0
    reader = TcpEdgeReader(ctx.zmq, connect, ring_name + ".rx", edge.policy, edge.slots, estimate,
                           required=FRAME_FIELDS, curve=curve, server_host=host)
    return reader, curve


def run(ctx: StageContext) -> None:
    cfg = ctx.config.preprocess
    cv2.setNumThreads(cfg.threads)
    prep = Preprocessor(cfg.resize, cfg.resize_size, cfg.crop_size)
    by_size = {cfg.crop_size: prep}  # adaptive resolution: one preprocessor per input size
    shape = list(prep.output_shape)
    edges = ctx.config.edges
    inp, curve = open_frames_reader(ctx)
    dtype = np.dtype(cfg.dtype)
    write = prep.normalize if cfg.dtype == "float32" else prep.to_rgb_chw
    endpoint, ring_name = ctx.edge("tensors")
    ring = Ring.open_for_writing(ring_name, edges.tensors.slots, int(np.prod(shape)) * dtype.itemsize)
    out = EdgeWriter(ctx.zmq, endpoint, ring, ctx.config.policy("tensors", ctx.instance.source),
                     fanout=True)
    meter = StageMeter()
    delay_s = cfg.delay_ms / 1000
    sizes = set(ctx.config.adaptive.sizes) if ctx.config.adaptive.enabled else {cfg.crop_size}

    frames, tensors = ctx.config.edge_name("frames", ctx.instance.source), ctx.config.edge_name(
        "tensors", ctx.instance.source)

    def stats() -> dict[str, Any]:
        extra = {"rx_bytes": inp.bytes_received} if isinstance(inp, TcpEdgeReader) else {}
        return {**meter.snapshot(), "threads": cv2.getNumThreads(), "input_size": prep.crop_size,
                "source": ctx.source_id, **extra,
                "drops": {frames: dict(inp.drops), tensors: dict(out.drops)},
                "in_use": {frames: inp.in_use, tensors: out.in_use}}

    ctx.stats_source = stats
    if not out.wait_for_readers(ctx.config.inference.workers, lambda: not ctx.stopping):
        log.warning("not every inference worker has subscribed to the tensors edge yet")
    if not ctx.ready():
        inp.close()
        out.close()
        if curve is not None:
            curve.close()
        return
    try:
        while ctx.alive():
            desc = inp.take(timeout_ms=100)
            if desc is None:
                continue
            if desc.get("eos"):
                out.send_eos(ctx.alive)
                continue
            t0 = time.monotonic_ns()
            meter.took(inp.depth)
            size = ctx.settings.get("input_size", cfg.crop_size)
            if size != prep.crop_size and size in sizes:
                prep = by_size.get(size) or by_size.setdefault(size, Preprocessor(
                    cfg.resize, round(cfg.resize_size * size / cfg.crop_size), size))
                shape = list(prep.output_shape)
            if delay_s and meter.frames_in % cfg.delay_every == 0:
                time.sleep(delay_s)  # preprocess.delay_ms: a deliberately slow stage
            cropped = prep.crop(inp.frame(desc))
            if not inp.intact(desc):
                inp.release()
                continue
            inp.release()
            slot = out.acquire(ctx.alive)
            if slot is None:
                if ctx.stopping:
                    break
                out.dropped_new()
                continue
            seq = desc["seq"]
            out.begin(slot, seq)
            write(cropped, out.view(slot, prep.output_shape, dtype))
            t1 = time.monotonic_ns()
            desc["fslot"] = desc["slot"]  # the raw frame stays readable for consumers
            desc["fshape"] = desc["shape"]
            desc["shape"] = shape
            desc["dtype"] = cfg.dtype
            desc["t_pre0"] = t0
            desc["t_pre1"] = t1
            desc["q_pre"] = inp.depth
            out.publish(slot, seq, desc, ctx.alive)
            meter.done((t1 - t0) / 1e6)
    finally:
        inp.close()
        out.close()
        if curve is not None:
            curve.close()

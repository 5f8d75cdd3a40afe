"""Preprocess stage: takes a source's raw BGR frame from the frames ring, cuts out its region of
interest (`source.roi`) if it has one, resizes, crops and normalises it
(workers/preprocess/transform.py) straight into a slot of the tensors ring, and announces it to
the inference workers, with the frame's slot so consumers can still read it.

Adaptive resolution (pipeline/supervisor/adaptive.py) changes the crop size at run time; the
tensors ring is sized for the largest. The region of interest can change at run time too (the
`roi` setting, pipeline/supervisor/roi.py): one that does not fit the frames is refused in the
stats and the old one stays.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import cv2
import numpy as np

from pipeline.errors import UserError
from pipeline.observe.stats import StageMeter
from pipeline.transport.edge import EdgeReader, EdgeWriter
from pipeline.transport.messages import FRAME_FIELDS, TensorDescriptor
from pipeline.transport.ring import Ring
from pipeline.transport.tcp_edge import Curve, TcpEdgeReader
from workers.capture.sources import frame_bytes_estimate
from workers.context import StageContext

from .transform import Preprocessor

log = logging.getLogger("preprocess")


class Preprocess:
    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        cfg, config, index = ctx.config.preprocess, ctx.config, ctx.instance.source
        cv2.setNumThreads(cfg.threads)
        self.prep = Preprocessor(cfg.resize, cfg.resize_size, cfg.crop_size)
        self.by_size = {cfg.crop_size: self.prep}  # adaptive resolution: one per input size
        self.sizes = set(config.adaptive.sizes) if config.adaptive.enabled else {cfg.crop_size}
        self.dtype = np.dtype(cfg.dtype)
        self.inp = ctx.own(self._reader())
        endpoint, ring_name = ctx.edge("tensors")
        ring = Ring.open_for_writing(ring_name, config.edges.tensors.slots,
                                     3 * cfg.crop_size ** 2 * self.dtype.itemsize, ctx.run.token)
        self.out = ctx.own(EdgeWriter(ctx.zmq, endpoint, ring, config.policy("tensors", index),
                                      fanout=True, name=config.edge_name("tensors", index),
                                      readers=config.edge_peers("tensors", index)))
        self.meter = StageMeter()
        self.delay_s = cfg.delay_ms / 1000
        self.frames_edge = config.edge_name("frames", index)
        self.tensors_edge = config.edge_name("tensors", index)
        self.inp.drops = ctx.tally.counts(self.frames_edge, self.inp.drops)
        self.out.drops = ctx.tally.counts(self.tensors_edge, self.out.drops)
        if not self.out.wait_for_readers(config.inference.workers, lambda: not ctx.stopping):
            log.warning("not every inference worker has subscribed to the tensors edge yet")
        self.ready_info: dict[str, Any] = {}
        self.roi_boxes: dict[tuple[int, int], tuple[int, int, int, int] | None] = {}  # per frame size
        self.roi_source = ctx.source  # whose `roi` is in force: the config's, or a run-time one
        self.roi_asked: Any = None  # the run-time `roi` setting last acted on
        self.roi_refused: dict[str, Any] | None = None
        self.source_key = f"sources[{index}]" if config.sources else "source"

    def _reader(self) -> EdgeReader:
        """The frames edge from this source's capture: shared memory, or inline over tcp (into
        a ring of this host's own, `<edge>.rx`)."""
        ctx, config, edge, index = self.ctx, self.ctx.config, self.ctx.config.edges.frames, \
            self.ctx.instance.source
        endpoint, ring_name = ctx.edge("frames")
        if not edge.tcp:
            return EdgeReader(ctx.zmq, endpoint, ring_name, config.policy("frames", index),
                              required=FRAME_FIELDS)
        host = ctx.source.host
        curve = ctx.own(Curve(config.curve.keys, config.inference.host)) if config.curve.keys else None
        _, connect = config.frames_endpoints(index)
        # A source captured elsewhere cannot be asked here: the ring then fits the first frame.
        estimate = frame_bytes_estimate(ctx.source) if host == config.inference.host else 0
        return TcpEdgeReader(ctx.zmq, connect, ctx.run.shm_name(config.frames_ring(index)),
                             edge.policy, edge.slots, estimate, required=FRAME_FIELDS, curve=curve,
                             server_host=host, token=ctx.run.token)

    def step(self) -> None:
        """Take the next frame by the edge's policy, and write its model input."""
        ctx, inp, out, cfg = self.ctx, self.inp, self.out, self.ctx.config.preprocess
        desc: TensorDescriptor | None = inp.take(timeout_ms=100)  # still a frame's, filled below
        if desc is None:
            return
        if desc.get("eos"):
            out.send_eos(ctx.alive)
            return
        t0 = time.monotonic_ns()
        self.meter.took(inp.depth)
        prep = self._for_size(ctx.settings.get("input_size", cfg.crop_size))
        if self.delay_s and self.meter.frames_in % cfg.delay_every == 0:
            time.sleep(self.delay_s)  # preprocess.delay_ms: a deliberately slow stage
        frame = inp.frame(desc)
        cropped = prep.crop(frame, self._region(frame))  # a copy: the frame is read
        if not inp.intact(desc):
            inp.release()
            return
        # The frame is released only once its tensor is out (or counted as dropped): one lost
        # with this process meanwhile is still held, and its successor counts it (`restart`).
        slot = out.acquire(ctx.alive)
        if slot is None:
            if not ctx.stopping:
                out.dropped_new()
            inp.release()
            return
        seq = desc["seq"]
        out.begin(slot, seq)
        if self.dtype == np.float32:
            prep.normalize(cropped, out.view(slot, prep.output_shape, self.dtype))
        else:
            prep.to_rgb_chw(cropped, out.view(slot, prep.output_shape, self.dtype))
        t1 = time.monotonic_ns()
        desc["frame_slot"] = desc["slot"]  # the raw frame stays readable for consumers
        desc["frame_shape"] = desc["shape"]
        desc["shape"] = prep.output_shape
        desc["dtype"] = cfg.dtype
        desc["t"].update(preprocess_start=t0, preprocess_end=t1)
        desc["queue"] = {"preprocess": inp.depth}
        out.publish(slot, seq, desc, ctx.alive)
        inp.release()
        self.meter.done((t1 - t0) / 1e6)

    def _region(self, frame: np.ndarray) -> tuple[int, int, int, int] | None:
        """The source's region of interest (`source.roi`) as (x0, y0, x1, y1), or None."""
        h, w = frame.shape[:2]
        asked = self.ctx.settings.get("roi")
        if asked is not self.roi_asked:
            self.roi_asked = asked
            self._change_region(asked, w, h)
        if (h, w) not in self.roi_boxes:
            try:
                self.roi_boxes[(h, w)] = self.roi_source.roi_box(w, h)
            except ValueError as e:
                raise UserError(f"{self.source_key}.{e}") from None
        return self.roi_boxes[(h, w)]

    def _change_region(self, roi: list[int | float] | None, width: int, height: int) -> None:
        """A region from the supervisor (already checked as the config checks it): in force from
        this frame on if it fits the frame, else refused and the old one kept."""
        source = self.ctx.source.model_copy(update={"roi": roi})
        try:
            source.roi_box(width, height)
        except ValueError as e:
            self.roi_refused = {"roi": roi, "message": str(e)}
            log.warning("%s.%s; the old region stays", self.source_key, e)
            return
        self.roi_source, self.roi_refused = source, None
        self.roi_boxes.clear()

    def _for_size(self, size: int) -> Preprocessor:
        """The preprocessor for the input size the supervisor asked for (adaptive resolution)."""
        cfg = self.ctx.config.preprocess
        if size != self.prep.crop_size and size in self.sizes:
            self.prep = self.by_size.get(size) or self.by_size.setdefault(size, Preprocessor(
                cfg.resize, round(cfg.resize_size * size / cfg.crop_size), size))
        return self.prep

    def stats(self) -> dict[str, Any]:
        inp, out = self.inp, self.out
        watched = out.watch()  # first: a stall it handles is in this message's drops
        extra = {"rx_bytes": inp.bytes_received} if isinstance(inp, TcpEdgeReader) else {}
        return {**self.meter.snapshot(), "threads": cv2.getNumThreads(),
                "input_size": self.prep.crop_size, "source": self.ctx.source_id, **extra,
                "roi": self.roi_source.roi, **({"roi_refused": self.roi_refused} if self.roi_refused else {}),
                "drops": {self.frames_edge: dict(inp.drops), self.tensors_edge: dict(out.drops)},
                "in_use": {self.frames_edge: inp.in_use, self.tensors_edge: out.in_use}, **watched}

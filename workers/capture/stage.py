"""Capture stage: reads the source into the frames ring and never waits for the model.

Only a `block` frames edge can make this stage wait; with `latest` it writes every frame and lets
the reader take the newest, with `drop_new` it decodes into a scratch buffer when the ring is full
(a camera must still be read, or its driver queue fills with stale frames). A source without a
clock is read on demand instead (pipeline/transport/credits.py): a frame is decoded only when a
worker will want it. A live source that fails is reopened with back-off while the rest of the
pipeline stays up; an IP camera that does not answer at start is waited for the same way, unless
capture.restart is "never".
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import cv2
import numpy as np

from pipeline.observe.stats import Histogram, Window
from pipeline.transport.credits import CreditGate
from pipeline.transport.drops import CORRUPT, DECODE, ROI
from pipeline.transport.edge import EdgeWriter
from pipeline.transport.messages import EOS, FrameDescriptor
from pipeline.transport.ring import Ring
from pipeline.transport.tcp_edge import Curve, TcpEdgeWriter
from workers.context import StageContext

from .pacing import Pacer, Stall
from .source_base import Source, SourceError
from .sources import FrameTooLarge, open_source

RECONNECT_FIRST_S = 0.5  # back-off doubles up to RECONNECT_MAX_S between attempts
RECONNECT_MAX_S = 8.0
# FFmpeg prints a line per damaged packet; the source counts them and reports once instead.
# (Read when the first file is opened; set the variable to 16 to see FFmpeg's errors again.)
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

log = logging.getLogger("capture")


class Capture:
    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        config, index = ctx.config, ctx.instance.source
        # A block frames edge means every frame matters: a file with frames that cannot be
        # decoded (skipped, or missing at its end) fails the run.
        self.strict = config.edges.frames.policy == "block"
        self.source = self._open_at_start()
        ctx.owned.callback(lambda: self.source is not None and self.source.close())
        self.lost = {CORRUPT: 0, ROI: 0, DECODE: 0}  # counted by earlier sources (before a reconnect)
        endpoint, ring_name = ctx.edge("frames")
        self.ring = Ring.open_for_writing(ring_name, config.edges.frames.slots,
                                          self.source.max_frame_bytes, ctx.run.token)
        self.out = ctx.own(self._writer(endpoint))
        self.gate = None
        if config.pulled(index):  # no clock: decode a frame only when a worker will want it
            self.gate = ctx.own(CreditGate(ctx.zmq, ctx.edge("credits")[0], self.ring,
                                           ctx.edge("tensors")[1], config.credits(),
                                           readers=config.edge_peers("credits", index)))
        self.scratch = np.empty(self.source.max_frame_bytes, np.uint8)
        self.edge_name = config.edge_name("frames", index)
        self.out.drops = ctx.tally.counts(self.edge_name, self.out.drops)
        self.interval = Window()
        self.interval_run = Histogram()  # the whole run, for the summary's capture jitter
        self.captured = self.published = 0
        self.last_capture = 0
        self.shape: tuple[int, int, int] | None = None
        self.slot: int | None = None
        self.source_state, self.reconnects = "ok", 0
        self.ended = False
        self.pacer: Pacer | None = None  # both start with the first frame, not at set-up
        self.stall: Stall | None = None
        self.seq = self.ring.last_seq  # after a restart, sequence numbers carry on
        if not config.edges.frames.tcp and not self.out.wait_for_readers(1, lambda: not ctx.stopping):
            log.warning("preprocess has not connected to the frames edge yet")
        self.ready_info = {"source": ctx.source.kind, "frame_bytes": self.source.max_frame_bytes,
                           "on_demand": self.gate is not None}

    def _open(self) -> Source:
        source = open_source(self.ctx.source)
        source.strict = self.strict
        return source

    def _open_at_start(self) -> Source:
        """The source; an IP camera that does not answer yet (still booting, the network not up,
        a password being fixed) is retried with back-off unless capture.restart is "never",
        rather than failing the start (and, under systemd, using up its start limit)."""
        cfg, policy = self.ctx.source, self.ctx.config.capture.restart
        if policy == "never" or not getattr(cfg, "stream", False):
            return self._open()
        started, delay, told = time.monotonic(), RECONNECT_FIRST_S, set()
        while True:
            try:
                source = self._open()
            except FrameTooLarge:
                raise
            except (SourceError, cv2.error) as e:
                if str(e) not in told:  # each reason once
                    told.add(str(e))
                    log.warning("%s; retrying with back-off up to %g s (capture.restart = \"%s\")",
                                e, RECONNECT_MAX_S, policy)
                time.sleep(delay)  # SIGTERM still stops the stage meanwhile
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            if told:
                log.warning("source opened after %.1f s", time.monotonic() - started)
            return source

    def _writer(self, endpoint: str) -> EdgeWriter:
        """The frames edge: shared memory, or inline over tcp when preprocess is elsewhere."""
        ctx, edge = self.ctx, self.ctx.config.edges.frames
        policy = ctx.config.policy("frames", ctx.instance.source)
        if not edge.tcp:
            config, index = ctx.config, ctx.instance.source
            blocks = config.policy("tensors", index) == "block"  # preprocess may wait on its output
            return EdgeWriter(ctx.zmq, endpoint, self.ring, policy,
                              name=config.edge_name("frames", index),
                              readers=config.edge_peers("frames", index),
                              downstream=ctx.edge("tensors")[1] if blocks else None)
        keys = ctx.config.curve.keys
        curve = ctx.own(Curve(keys, ctx.source.host)) if keys else None
        bind, _ = ctx.config.frames_endpoints(ctx.instance.source)
        return TcpEdgeWriter(ctx.zmq, bind, self.ring, policy, edge.encoding, edge.quality, curve)

    def step(self) -> None:
        """Read one frame into the next slot (or the scratch buffer) and announce it."""
        ctx, out = self.ctx, self.out
        if self.ended:  # stay until the supervisor has drained the pipeline
            time.sleep(0.05)
            return
        if self.pacer is None:
            self.pacer = Pacer(self.source.fps)
            self.stall = Stall(ctx.source.stall_ms, ctx.source.stall_every_s)
        if self.gate is not None and not self.gate.wait(ctx.alive):
            return
        self.seq += 1
        self.slot = out.acquire(ctx.alive)
        if self.slot is None and not ctx.alive():
            return
        if self.slot is not None:
            out.begin(self.slot, self.seq)
        if self.stall.sleep_if_due():
            self.pacer.restart()
        t_start = time.monotonic_ns()
        try:
            meta = self.source.read(self._buffer_for)
        except (SourceError, cv2.error) as e:
            meta, failure = None, str(e)
        else:
            failure = "no frame (end of stream or read error)"
        t_done = time.monotonic_ns()
        if meta is None:
            self._lost_source(failure)
            return
        self._count(t_done)
        if self.slot is None:
            out.dropped_new()
        else:
            self.published += 1
            sensor = meta.pop("sensor_ns", None)  # exposure, on the pipeline's clock
            desc: FrameDescriptor = meta  # type: ignore[assignment]  # completed here
            desc.update(source=ctx.source_id, shape=self.shape, dtype="uint8",
                        captured_at=time.time(), t={"capture_start": t_start, "capture": t_done,
                                                    **({"sensor": sensor} if sensor else {})})
            out.publish(self.slot, self.seq, desc, ctx.alive)
        self.pacer.wait(1 + self.source.gap)

    def _buffer_for(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Where the source decodes the frame: the slot, or scratch when there is none."""
        self.shape = shape
        if self.slot is None:
            return self.scratch[: shape[0] * shape[1] * shape[2]].reshape(shape)
        return self.out.view(self.slot, shape)

    def _count(self, t_done: int) -> None:
        self.captured += 1
        if self.last_capture:
            gap_ms = (t_done - self.last_capture) / 1e6
            self.interval.add(gap_ms)
            self.interval_run.add(gap_ms)
        self.last_capture = t_done

    def _lost_source(self, failure: str) -> None:
        """A live source is reopened; a finite one has ended: end of stream downstream. A file
        with undecodable frames, where every frame is wanted (block), ends the run with a
        failure once the frames it did deliver are through."""
        damage = self.source.damage if self.strict else ""
        if self.source.live and not damage:
            old = self.source
            self.source = self._reconnect(failure)
            for kind, n in old.drop_counts().items():  # the counts carry on across the reopened source
                self.lost[kind] += n
            if self.source is not None:
                self.pacer = Pacer(self.source.fps)
            return
        self.ended = True
        log.info("source ended after %d frames", self.published)
        # The supervisor hears of a failure before the workers can report the end downstream:
        # it stops once they have, and the failure must be known by then.
        if damage:
            self.ctx.send(EOS, failure=f"source.path: {damage}; edges.frames.policy = \"block\" "
                                       f"wants every frame ({self.source.undecodable} decode drops)")
        else:
            self.ctx.send(EOS)
        self.out.send_eos(self.ctx.alive)

    def _reconnect(self, failure: str) -> Source | None:
        """Reopen a live source (camera, looping file) with exponential back-off while the rest
        of the pipeline stays up; None if the stage is told to stop meanwhile."""
        ctx = self.ctx
        self.source.close()
        self.source_state = "reconnecting"
        log.warning("source failed: %s; reconnecting", failure)
        started = time.monotonic()
        delay, told = RECONNECT_FIRST_S, set()
        while True:
            until = time.monotonic() + delay
            while time.monotonic() < until:
                if not ctx.alive():
                    return None
                time.sleep(0.05)
            try:
                fresh = self._open()
            except (SourceError, cv2.error) as e:
                delay = min(delay * 2, RECONNECT_MAX_S)
                if str(e) not in told:  # why it stays down (a changed password, say), once each
                    told.add(str(e))
                    log.warning("reopening failed: %s; retrying with back-off", e)
                continue
            if fresh.max_frame_bytes > self.ring.slot_bytes:
                fresh.close()
                raise SourceError(f"source came back with larger frames ({fresh.max_frame_bytes} "
                                  f"bytes) than the ring holds ({self.ring.slot_bytes}); restart "
                                  "the pipeline")
            self.source_state = "ok"
            self.reconnects += 1
            log.warning("source back after %.1f s", time.monotonic() - started)
            return fresh

    def stats(self) -> dict[str, Any]:
        out, gate = self.out, self.gate
        watched = out.watch()  # first: a stall it handles is in this message's drops
        sent = {"tx_bytes": out.bytes_sent, "tx_frames": out.frames_sent,
                "encode_ms": round(out.encode_ms, 1)} if isinstance(out, TcpEdgeWriter) else {}
        src = self.source
        now = src.drop_counts() if src is not None else {}
        lost = {kind: n + now.get(kind, 0) for kind, n in self.lost.items()}
        return {"frames_in": self.captured, "frames_out": self.published,
                "source": self.ctx.source_id, "interval_ms": self.interval.take(),
                "interval_run_ms": self.interval_run.summary(), **sent,
                "drops": {self.edge_name: dict(out.drops), "source": lost},
                "in_use": {self.edge_name: out.in_use}, "threads": 1,
                "source_state": self.source_state, "reconnects": self.reconnects,
                **({"demand_wait_ms": round(gate.waited_ns / 1e6)} if gate else {}), **watched}

"""Capture stage: reads the source into the frames ring and never waits for the model.

Only a `block` frames edge can make this stage wait; with `latest` it writes every frame and lets
the reader take the newest, with `drop_new` it decodes into a scratch buffer when the ring is full
(a camera must still be read, or its driver queue fills with stale frames). A source without a
clock is read on demand instead (pipeline/credits.py): a frame is decoded only when a worker
will want it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import cv2
import numpy as np

from pipeline.credits import CreditGate
from pipeline.ring import Ring
from pipeline.stage import StageContext
from pipeline.stats import Histogram, Window
from pipeline.tcp_edge import Curve, TcpEdgeWriter
from pipeline.transport import EdgeWriter

from .sources import Source, SourceError, open_source

RECONNECT_FIRST_S = 0.5  # back-off doubles up to RECONNECT_MAX_S between attempts
RECONNECT_MAX_S = 8.0

log = logging.getLogger("capture")


class Pacer:
    """Holds a loop to `fps` on a fixed schedule; falls back in step instead of bursting."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.due = time.monotonic()

    def restart(self) -> None:
        """Start the schedule afresh (after a stall, frames resume at once, no catch-up burst)."""
        self.due = time.monotonic()

    def wait(self) -> None:
        if not self.period:
            return
        self.due += self.period
        delay = self.due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period:
            self.due = time.monotonic()


class Stall:
    """source.stall_ms every source.stall_every_s: the source delivers nothing for a while, as a
    camera does when it hiccups (for measuring how the pipeline rides it out)."""

    def __init__(self, ms: float, every_s: float):
        self.seconds = ms / 1000 if every_s > 0 else 0.0
        self.every = every_s
        self.next = time.monotonic() + every_s

    def due(self) -> bool:
        """Sleeps through the stall if one is due; True if it did."""
        if not self.seconds or time.monotonic() < self.next:
            return False
        time.sleep(self.seconds)
        self.next += self.every
        return True


def run(ctx: StageContext) -> None:
    edge, index = ctx.config.edges.frames, ctx.instance.source
    policy = ctx.config.policy("frames", index)
    source = open_source(ctx.source)
    endpoint, ring_name = ctx.edge("frames")
    ring = Ring.open_for_writing(ring_name, edge.slots, source.max_frame_bytes)
    curve = None
    if edge.tcp:  # preprocess is on another host (or listens on tcp anyway): send frames inline
        keys = ctx.config.curve.keys
        curve = Curve(keys, ctx.source.host) if keys else None
        bind, _ = ctx.config.frames_endpoints(ctx.instance.source)
        out: EdgeWriter = TcpEdgeWriter(ctx.zmq, bind, ring, policy, edge.encoding,
                                        edge.quality, curve)
    else:
        out = EdgeWriter(ctx.zmq, endpoint, ring, policy)
    gate = None
    if ctx.config.pulled(index):  # no clock: decode a frame only when a worker will want it
        credits, _ = ctx.edge("credits")
        gate = CreditGate(ctx.zmq, credits, ring, ctx.edge("tensors")[1], ctx.config.credits())
    scratch = np.empty(source.max_frame_bytes, np.uint8)
    src_id = ctx.source_id
    frames_edge = ctx.config.edge_name("frames", ctx.instance.source)
    interval = Window()
    interval_run = Histogram()  # the whole run, for the summary's capture jitter
    state: dict[str, Any] = {"slot": None, "captured": 0, "frames": 0, "last": 0, "shape": None,
                             "source_state": "ok", "reconnects": 0}

    def buffer_for(shape: tuple[int, int, int]) -> np.ndarray:
        state["shape"] = shape
        slot = state["slot"]
        if slot is None:
            return scratch[: shape[0] * shape[1] * shape[2]].reshape(shape)
        return out.view(slot, shape)

    def stats() -> dict[str, Any]:
        sent = {"tx_bytes": out.bytes_sent, "tx_frames": out.frames_sent,
                "encode_ms": round(out.encode_ms, 1)} if isinstance(out, TcpEdgeWriter) else {}
        return {"frames_in": state["captured"], "frames_out": state["frames"], "source": src_id,
                "interval_ms": interval.take(), "interval_run_ms": interval_run.summary(), **sent,
                "drops": {frames_edge: dict(out.drops), "source": {"corrupt": source.corrupt}},
                "in_use": {frames_edge: out.in_use}, "threads": 1,
                "source_state": state["source_state"], "reconnects": state["reconnects"],
                **({"demand_wait_ms": round(gate.waited_ns / 1e6)} if gate else {})}

    def close() -> None:
        if gate is not None:
            gate.close()
        out.close()
        if source is not None:
            source.close()
        if curve is not None:
            curve.close()

    ctx.stats_source = stats
    if not edge.tcp and not out.wait_for_readers(1, lambda: not ctx.stopping):
        log.warning("preprocess has not connected to the frames edge yet")
    if not ctx.ready(source=ctx.source.kind, frame_bytes=source.max_frame_bytes,
                     on_demand=gate is not None):
        close()
        return
    pacer = Pacer(source.fps)
    stall = Stall(ctx.source.stall_ms, ctx.source.stall_every_s)
    seq = ring.last_seq  # after a restart, sequence numbers carry on
    ended = False
    try:
        while ctx.alive():
            if gate is not None and not gate.wait(ctx.alive):
                break
            seq += 1
            slot = out.acquire(ctx.alive)
            if slot is None and not ctx.alive():
                break
            state["slot"] = slot
            if slot is not None:
                out.begin(slot, seq)
            if stall.due():
                pacer.restart()
            t_read = time.monotonic_ns()
            try:
                meta = source.read(buffer_for)
            except (SourceError, cv2.error) as e:
                meta, failure = None, str(e)
            else:
                failure = "no frame (end of stream or read error)"
            t_cap = time.monotonic_ns()
            if meta is None and source.live:
                source = reconnect(ctx, source, failure, state, ring.slot_bytes)
                if source is None:
                    break
                pacer = Pacer(source.fps)
                continue
            if meta is None:
                ended = True
                break
            state["captured"] += 1
            if state["last"]:
                gap_ms = (t_cap - state["last"]) / 1e6
                interval.add(gap_ms)
                interval_run.add(gap_ms)
            state["last"] = t_cap
            if slot is None:
                out.dropped_new()
            else:
                state["frames"] += 1
                meta.update(src=src_id, shape=state["shape"], dtype="uint8",
                            t_read=t_read, t_cap=t_cap, t_wall=time.time())
                out.publish(slot, seq, meta, ctx.alive)
            pacer.wait()
        if ended:
            log.info("source ended after %d frames", state["frames"])
            out.send_eos(ctx.alive)
            ctx.send("eos")
            while ctx.alive():  # stay until the supervisor has drained the pipeline
                time.sleep(0.05)
    finally:
        close()


def reconnect(ctx: StageContext, source: Source, failure: str, state: dict[str, Any],
              slot_bytes: int) -> Source | None:
    """Reopen a live source (camera, looping file) with exponential back-off while the rest of
    the pipeline stays up; None if the stage is told to stop meanwhile."""
    source.close()
    state["source_state"] = "reconnecting"
    log.warning("source failed: %s; reconnecting", failure)
    started = time.monotonic()
    delay = RECONNECT_FIRST_S
    while True:
        until = time.monotonic() + delay
        while time.monotonic() < until:
            if not ctx.alive():
                return None
            time.sleep(0.05)
        try:
            fresh = open_source(ctx.source)
        except (SourceError, cv2.error) as e:
            delay = min(delay * 2, RECONNECT_MAX_S)
            log.debug("reopen failed: %s", e)
            continue
        if fresh.max_frame_bytes > slot_bytes:
            fresh.close()
            raise SourceError(f"source came back with larger frames ({fresh.max_frame_bytes} bytes) "
                              f"than the ring holds ({slot_bytes}); restart the pipeline")
        state["source_state"] = "ok"
        state["reconnects"] += 1
        log.warning("source back after %.1f s", time.monotonic() - started)
        return fresh

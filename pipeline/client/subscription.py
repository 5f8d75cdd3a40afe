"""Subscribe to a running pipeline from any process: `for result in attach("lab"): ...`.

A subscriber never slows the pipeline: results reach it through a PUB socket whose high-water
mark drops results for a subscriber that falls too far behind (over ipc the kernel's socket buffer
holds a couple of hundred more). `max_age` makes a live consumer skip results that are already
too old when it reads them. `Result.missed_before` / `Subscription.missed` count both, from gaps
in `result_seq`. With `frames=True` each result carries the frame that produced it,
read-only and zero-copy from the pipeline's shared-memory ring, checked with the ring's sequence
lock; a frame already overwritten is left out and counted in `frames_missed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zmq

from pipeline.transport.messages import EOS, SCHEMA, unpack
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import NotRunning, find_pipeline, supervisor_alive

POLL_S = 0.5  # how often an idle subscriber checks that the pipeline still exists


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int  # ImageNet-1k class index
    label: str
    prob: float


@dataclass(slots=True)
class Result:
    """One classification, as published (see docs/protocol.md)."""

    pipeline: str
    seq: int  # frame sequence number from capture
    result_seq: int  # consecutive per pipeline: gaps are results this subscriber lost
    source: str
    frame_index: int | None
    item: str | None
    captured_at: float  # UNIX time
    latency_ms: float  # capture to result
    model: str
    top: list[Prediction]
    timestamps: dict[str, int]  # CLOCK_MONOTONIC ns per stage
    missed_before: int = 0
    frame: np.ndarray | None = None  # HxWx3 BGR, read-only view into shared memory
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    _ring: Ring | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def prob(self) -> float:
        return self.top[0].prob

    def frame_still_valid(self) -> bool:
        """False once the pipeline has overwritten the frame's slot: check after using `frame`."""
        return self._ring is not None and self._ring.intact(self.raw["frame_slot"], self.seq)


class Subscription:
    """An open subscription; iterate it, or call `receive`. Ends at the pipeline's end."""

    def __init__(self, name: str | None = None, *, frames: bool = False, status: bool = False,
                 max_age: float | None = None, hwm: int = 100):
        self.info = find_pipeline(name)
        if "results" not in self.info["endpoints"]:
            raise NotRunning(f"pipeline '{self.info['name']}' runs no inference on this machine "
                             f"(host {self.info.get('host')}): attach where its results are")
        self.name = self.info["name"]
        self.frames = frames
        self.received = 0
        self.missed = 0  # results lost to the high-water mark or skipped as too old
        self.max_age_ns = int(max_age * 1e9) if max_age else None
        self.frames_missed = 0  # results delivered without their (overwritten) frame
        self.ended: str | None = None  # why the stream ended
        self.last_status: dict[str, Any] | None = None  # latest per-second pipeline status
        self._last_rseq: int | None = None
        self._rings: dict[str, Ring] = {}  # frames ring per source
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._results = self._subscribe(self.info["endpoints"]["results"], hwm)
        self._status = self._subscribe(self.info["endpoints"]["status"], 4) if status else None

    def _subscribe(self, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def receive(self, timeout: float | None = None) -> Result | None:
        """Next result; None on timeout or when the stream has ended (see `ended`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.ended is None:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait < 0:
                return None
            events = dict(self._poller.poll(wait * 1000))
            if self._status is not None and self._status in events:
                self._take_status()
            if self._results in events:
                try:
                    msg = unpack(self._results.recv(zmq.NOBLOCK))
                except (zmq.Again, ValueError):
                    continue
                if msg.get("schema") != SCHEMA:
                    continue
                if msg.get("type") == EOS:
                    self.ended = msg.get("reason", "end of stream")
                elif msg.get("type") == "result":
                    if self._stale(msg):
                        continue
                    return self._result(msg)
            elif not events and not supervisor_alive(self.info["pid"]):
                self.ended = "pipeline gone"
        return None

    def _stale(self, msg: dict[str, Any]) -> bool:
        """A result older than max_age (a consumer that fell behind) is skipped and counted."""
        if self.max_age_ns is None or time.monotonic_ns() - msg["t"]["inference_end"] <= self.max_age_ns:
            return False
        if self._last_rseq is None:  # skipped results show up as the next result's gap
            self._last_rseq = int(msg["result_seq"]) - 1
        return True

    def _take_status(self) -> None:
        while True:
            try:
                self.last_status = unpack(self._status.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except ValueError:
                continue

    def _result(self, msg: dict[str, Any]) -> Result:
        rseq = int(msg["result_seq"])
        gap = rseq - self._last_rseq - 1 if self._last_rseq is not None else 0
        if gap < 0:  # several workers: a result overtaken by the next one, counted missed before
            self.missed = max(0, self.missed - 1)
        else:
            self._last_rseq = rseq
        self.missed += max(0, gap)
        self.received += 1
        r = Result(
            pipeline=msg["pipeline"], seq=msg["seq"], result_seq=rseq, source=msg["source"],
            frame_index=msg.get("frame"), item=msg.get("item"), captured_at=msg["captured_at"],
            latency_ms=msg["latency_ms"], model=msg["model"],
            top=[Prediction(t["index"], t["label"], t["prob"]) for t in msg["top"]],
            timestamps=msg["t"], missed_before=max(0, gap), raw=msg)
        if self.frames:
            self._attach_frame(r)
        return r

    def _attach_frame(self, r: Result) -> None:
        try:
            rings = self.info["rings"]
            name = rings.get("frames") or rings[f"frames.{r.source}"]
            ring = self._rings.get(name)
            if ring is None:
                ring = self._rings[name] = Ring.attach(name, readonly=True)
            slot, shape = r.raw["frame_slot"], tuple(r.raw["frame_shape"])
            view = ring.view(slot, shape)
        except (OSError, ValueError, KeyError):
            self.frames_missed += 1
            return
        if ring.intact(slot, r.seq):
            r.frame, r._ring = view, ring
        else:
            self.frames_missed += 1

    def __iter__(self) -> Iterator[Result]:
        while True:
            r = self.receive()
            if r is None:
                return
            yield r

    def close(self) -> None:
        self._ctx.destroy(0)
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def attach(name: str | None = None, *, frames: bool = False, status: bool = False,
           max_age: float | None = None, hwm: int = 100) -> Subscription:
    """Subscribe to the running pipeline `name` (or the only one running). `max_age` (seconds)
    skips results that waited longer than that to be read, for consumers that want only
    fresh results after falling behind; skipped results count as missed."""
    return Subscription(name, frames=frames, status=status, max_age=max_age, hwm=hwm)

"""Subscribe to a running pipeline from any process: `for result in attach("lab"): ...`.

A subscriber never slows the pipeline: results reach it through a PUB socket whose high-water
mark (about 1000 results) drops results for a subscriber that falls too far behind. `max_age`
makes a live consumer skip results that are already too old when it reads them. From gaps in
`result_seq` and the hub's running count of the results the pipeline lost (`dropped` on each
result), a subscriber tells its own losses (`missed`: it fell behind) from the pipeline's
(`dropped`: never published, or published already older than `max_age`), per result and in total.
Any message that is not a well-formed result is dropped and counted (`malformed`). With
`frames=True` each result carries the frame that produced it, read-only and zero-copy from the
pipeline's shared-memory ring, checked with the ring's sequence lock; a frame already overwritten
is left out and counted in `frames_missed`.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import zmq

from pipeline.client.result import Result
from pipeline.client.states import Tracker
from pipeline.transport.messages import EOS, SCHEMA, result_problem, unpack
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import NotRunning, find_pipeline, supervisor_alive

POLL_S = 0.5  # how often an idle subscriber checks that the pipeline still exists
MAX_MESSAGE = 1 << 20  # bytes; a results or status message is far smaller


class Subscription:
    """An open subscription; iterate it, or call `receive`. Ends at the pipeline's end."""

    def __init__(self, name: str | None = None, *, frames: bool = False, status: bool = False,
                 max_age: float | None = None, hwm: int = 100, states: bool = False):
        self.info = find_pipeline(name)
        if "results" not in self.info["endpoints"]:
            raise NotRunning(f"pipeline '{self.info['name']}' runs no inference on this machine "
                             f"(host {self.info.get('host')}): attach where its results are")
        self.name = self.info["name"]
        self.frames = frames
        self.received = 0
        self.malformed = 0  # messages that were not well-formed results, dropped
        self.max_age_ns = int(max_age * 1e9) if max_age else None
        self.frames_missed = 0  # results delivered without their (overwritten) frame
        self.ended: str | None = None  # why the stream ended
        self.last_status: dict[str, Any] | None = None  # latest per-second pipeline status
        # Result accounting: result_seq from the first one seen to the newest, how many of those
        # were seen (delivered or skipped), and the hub's running count of dropped results.
        self._first: int | None = None
        self._newest = 0
        self._seen = 0
        self._hub_dropped = self._hub_dropped_base = 0
        self._skipped_slow = self._skipped_late = 0  # skipped as older than max_age
        self._told = (0, 0)  # (missed, dropped) when the previous result was delivered
        self._rings: dict[str, Ring] = {}  # frames ring per source
        self.states = None  # a states.Tracker: each result carries the state events it caused
        if states:
            self.states = Tracker(self.info["config"])
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()
        self._results = self._subscribe(self.info["endpoints"]["results"], hwm)
        self._status = self._subscribe(self.info["endpoints"]["status"], 4) if status else None

    def _subscribe(self, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        self._poller.register(sock, zmq.POLLIN)
        return sock

    @property
    def missed(self) -> int:
        """Results this subscriber lost: it fell behind (the socket's high-water mark), or it read
        them later than `max_age` although they were published in time."""
        unseen = self._newest - self._first + 1 - self._seen if self._first is not None else 0
        return max(0, unseen - self._pipeline_dropped()) + self._skipped_slow

    @property
    def dropped(self) -> int:
        """Results the pipeline lost before publishing them while this subscriber was attached,
        or published already older than `max_age` (the supervisor was stopped, say)."""
        return self._pipeline_dropped() + self._skipped_late

    def _pipeline_dropped(self) -> int:
        return max(0, self._hub_dropped - self._hub_dropped_base)

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
                    raw = self._results.recv(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                result = self._take(raw)
                if result is not None:
                    return result
            elif not events and not supervisor_alive(self.info["pid"], self.info.get("start")):
                self.ended = "pipeline gone"
        return None

    def _take(self, raw: bytes) -> Result | None:
        """The result in `raw`, if it is one to deliver; notes the end of the stream. Never
        raises: whatever is not a well-formed result or end marker is counted in `malformed`."""
        try:
            msg = unpack(raw)
        except ValueError:
            msg = {}
        if msg.get("type") == EOS and msg.get("schema") == SCHEMA:
            self._end(msg)
            return None
        if result_problem(msg):
            self.malformed += 1
            return None
        self._see(msg["result_seq"], msg.get("dropped"))
        if self._stale(msg):
            return None
        return self._result(msg)

    def _see(self, rseq: int, hub_dropped: Any) -> None:
        if type(hub_dropped) is not int:  # a hub that does not count: every gap is ours
            hub_dropped = self._hub_dropped
        if self._first is None:
            self._first, self._newest, self._hub_dropped_base = rseq, rseq, hub_dropped
        self._first = min(self._first, rseq)  # several workers: an earlier one may come late
        self._newest = max(self._newest, rseq)
        self._seen += 1
        self._hub_dropped = hub_dropped

    def _end(self, msg: dict[str, Any]) -> None:
        """The end marker, with the last result_seq drawn and the final count of dropped ones:
        results lost after the last one seen are accounted for too."""
        reason = msg.get("reason")
        self.ended = reason if type(reason) is str else "end of stream"
        last, dropped = msg.get("result_seq"), msg.get("dropped")
        if self._first is not None and type(last) is int and type(dropped) is int:
            self._newest = max(self._newest, last)
            self._hub_dropped = dropped

    def _stale(self, msg: dict[str, Any]) -> bool:
        """A result older than max_age is skipped and counted: as this subscriber's loss if it
        was published in time, else as the pipeline's."""
        t = msg["t"]
        if self.max_age_ns is None or time.monotonic_ns() - t["inference_end"] <= self.max_age_ns:
            return False
        published = t.get("published", t["inference_end"])
        if published - t["inference_end"] > self.max_age_ns:
            self._skipped_late += 1
        else:
            self._skipped_slow += 1
        return True

    def _take_status(self) -> None:
        while True:
            try:
                status = unpack(self._status.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except ValueError:
                continue
            if status.get("type") == "status":
                self.last_status = status

    def _result(self, msg: dict[str, Any]) -> Result:
        """A checked message as a Result, with what was lost since the previous one."""
        missed, dropped = self.missed, self.dropped
        told_missed, told_dropped = self._told
        self._told = (missed, dropped)
        self.received += 1
        r = Result.from_message(msg, max(0, missed - told_missed), max(0, dropped - told_dropped))
        if self.states is not None:
            r.events = self.states.update(r)
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
        except (OSError, ValueError, KeyError, IndexError):
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
           max_age: float | None = None, hwm: int = 100, states: bool = False) -> Subscription:
    """Subscribe to the running pipeline `name` (or the only one running). `max_age` (seconds)
    skips results that waited longer than that to be read, for consumers that want only
    fresh results after falling behind; skipped results count as missed (or as dropped when the
    pipeline published them already that old). `states=True` runs each source's state machine
    (pipeline/client/states.py, options from the pipeline's `source.state`): a result's
    `events` holds the state changes it caused, `sub.states.state(source)` the current state."""
    return Subscription(name, frames=frames, status=status, max_age=max_age, hwm=hwm,
                        states=states)

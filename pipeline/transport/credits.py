"""Reading a source on demand: credit-based flow control for sources without a clock.

A file decoded as fast as possible, or an image folder, has no pace of its own: read greedily, it
burns the capture core on frames that are then dropped, and with a fast model that core is the
bottleneck. So such a source is read on demand. A pulled source has `credits` frames in flight
(decoded and not yet taken by an inference worker). Each time a worker takes one of its frames it
sends the capture process a credit (`ipc://.../credits[.ID].sock`, PUSH -> PULL) carrying the
time it expects to be free again, minus the time a frame takes from decode to the tensors ring.
Capture decodes the next frame at that time, so the frame is ready just as the worker wants it:
no worker waits, and no frame waits long (it is fresh when the model sees it).

A lost credit (a worker or preprocess restarted while holding frames) cannot stall the source:
when no credit comes for `RECOUNT_S`, capture recounts the frames in flight from the rings'
counters and grants what is missing. Only the workers may send credits: the socket admits no
other process (`admission.Admission`), so a stranger cannot make capture decode frames in vain.
"""

from __future__ import annotations

import time
from typing import Callable, Collection

import zmq

from pipeline.transport.admission import Admission
from pipeline.transport.messages import pack, unpack
from pipeline.transport.ring import Ring

RECOUNT_S = 0.1
MAX_CREDIT_WAIT_S = 0.05  # a credit's "decode at" is never honoured further ahead than this


class CreditGate:
    """Capture side: `wait()` returns when the next frame should be decoded."""

    def __init__(self, zctx: zmq.Context, endpoint: str, frames: Ring, tensors_ring: str,
                 credits: int, readers: Collection[str] | None = None):
        """`readers`: the workers the socket admits (None: anyone; for tests and tools)."""
        self.credits = credits
        self.available = credits
        self.frames = frames
        self.tensors_ring = tensors_ring
        self._tensors: Ring | None = None
        self._due: list[int] = []  # "decode at" times of credits received, monotonic ns
        self.waited_ns = 0  # time spent waiting for demand (the capture core is free then)
        self.sock = zctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1024)
        self._admission = Admission.acquire(zctx) if readers is not None else None
        try:
            if self._admission is not None:  # a stranger's credits would decode frames in vain
                self._admission.guard(self.sock, endpoint.rpartition("/")[2].removesuffix(".sock"),
                                      readers)
            self.sock.bind(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._poller = zmq.Poller()  # one for its life: Socket.poll makes one per call
        self._poller.register(self.sock, zmq.POLLIN)

    def in_flight(self) -> int:
        """Frames decoded and not yet taken by a worker, from the rings' own counters."""
        if self._tensors is None:
            try:
                self._tensors = Ring.attach(self.tensors_ring)
            except (OSError, ValueError):
                pass
        n = self.frames.held
        if self._tensors is not None:
            n += self._tensors.held
        return n

    def _drain(self) -> None:
        while self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                msg = unpack(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            except Exception:
                continue  # not a credit: ignore
            at = msg.get("at")
            if self.available < self.credits:
                self.available += 1
                self._due.append(at if type(at) is int else 0)

    def wait(self, alive: Callable[[], bool]) -> bool:
        """Block until a frame may be decoded (False if the stage is stopping meanwhile)."""
        t0 = time.monotonic_ns()
        self._drain()
        while self.available == 0:
            if not alive():
                return False
            if self._poller.poll(RECOUNT_S * 1000):
                self._drain()
            elif self.in_flight() < self.credits:  # credits lost with a restarted stage
                self.available = self.credits - max(0, self.in_flight())
        if self._due:
            self._due.sort()
            at = self._due.pop(0)
            delay = min((at - time.monotonic_ns()) / 1e9, MAX_CREDIT_WAIT_S)
            if delay > 0:
                time.sleep(delay)
        self.available -= 1
        self.waited_ns += time.monotonic_ns() - t0
        return alive()

    def close(self) -> None:
        self.sock.close(0)
        if self._tensors is not None:
            self._tensors.close()
        if self._admission is not None:
            self._admission.release()
            self._admission = None


class CreditSender:
    """Inference side: one credit to the frame's source each time a worker takes a frame."""

    ALPHA = 0.1  # weight of the newest frame in the running estimates

    def __init__(self, zctx: zmq.Context, endpoints: dict[int, str]):
        self.socks = {}
        for source, endpoint in endpoints.items():
            sock = zctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 64)
            sock.connect(endpoint)
            self.socks[source] = sock
        self.service_ns = 0.0  # this worker's busy time per frame: take to result published
        self.lead_ns: dict[int, float] = {}  # per source: decode start to tensor ready

    def took(self, source: int, capture_start: int, ready: int, now: int) -> None:
        """A frame of `source` (decoded from capture_start, ready at `ready`) was taken at `now`."""
        sock = self.socks.get(source)
        if sock is None:
            return
        a = self.ALPHA
        lead = ready - capture_start
        old = self.lead_ns.get(source)
        lead = self.lead_ns[source] = lead if old is None else (1 - a) * old + a * lead
        # Decode the next frame so that it is ready a little before this worker is free again.
        at = now + self.service_ns - lead - max(500_000, 0.25 * lead)
        try:
            sock.send(pack({"at": int(at)}), zmq.NOBLOCK)
        except zmq.Again:
            pass  # capture is gone or restarting: it recounts

    def done(self, busy_ns: int) -> None:
        """The worker finished a frame it worked on for `busy_ns`."""
        a = self.ALPHA
        self.service_ns = busy_ns if not self.service_ns else (1 - a) * self.service_ns + a * busy_ns

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(0)

"""Edges between stages: a shared-memory ring for the pixels, a ZeroMQ PUSH/PULL pair for the
descriptors, and the edge's back-pressure policy.

- `latest`: the writer never waits; the reader drains everything queued and takes only the newest
  frame (the others are counted as `latest` drops). A writer that laps a slow reader is caught by
  the slot's sequence lock and counted as `torn`. A frame whose descriptor the writer cannot hand
  over (the reader's queue full, or no reader: it is restarting) the writer counts as `latest`.
- `drop_new`: while every slot holds a frame the reader has not finished, new frames are dropped
  at the writer (counted as `drop_new`).
- `block`: the writer waits for a free slot; nothing is dropped.
The reader processes `drop_new` and `block` edges in order and releases each slot when done.

A `fanout` edge publishes its descriptors to every reader (PUB/SUB): the tensors edges, which
several inference workers read and share through the ring's claim words (workqueue.SharedReader).

Who may connect: a descriptor handed to a stranger is a slot that is never released, and on an
in-order edge `slots` of them stop the pipeline. So an edge socket given its `readers` admits only
the current process of those stages (admission.py), checked by the kernel's word on the peer.

When readers stop releasing: an in-order writer whose frames stay outstanding far longer than its
reader's pace (a reader that hangs holding a frame, a descriptor lost) reports the stall and takes
the frames back (`EdgeWriter.watch`), so one stuck reader cannot stop the pipeline for good.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from typing import Any, Callable, Collection

import numpy as np
import zmq

from pipeline.transport.admission import Admission, sibling_stage
from pipeline.transport.drops import DROP_NEW, LATEST, MALFORMED, RESTART, STALLED, TORN
from pipeline.transport.messages import has_fields, pack, unpack
from pipeline.transport.ring import Ring

_ITEMSIZE = {"uint8": 1, "float32": 4}  # the payload types rings carry
MAX_DESCRIPTOR = 16 * 1024  # bytes: a descriptor is ~100; a peer sending more is disconnected
READERS_TIMEOUT_S = 300.0  # as long as the supervisor waits for a stage to be ready
# A reader this many of its own frame times behind, with frames outstanding, is stuck, not slow;
# never sooner than the floor (a scheduling hiccup, a stage restarting), and before its pace is
# known, only after the unmeasured limit.
STALL_FACTOR = 10
STALL_FLOOR_S = 2.0
STALL_UNMEASURED_S = 10.0

log = logging.getLogger("edge")


class EdgeWriter:
    """Producer end of an edge: owns the ring and applies the policy."""

    def __init__(self, zctx: zmq.Context, endpoint: str, ring: Ring, policy: str,
                 fanout: bool = False, *, name: str | None = None,
                 readers: Collection[str] | None = None, downstream: str | None = None,
                 judge: bool | None = None):
        """`name`: the edge, for stats and log lines. `readers`: the stage instances the socket
        admits (None: anyone; for tests and tools). `downstream`: the in-order `block` ring the
        reader writes into: while it is full the reader waits on its own output, not stuck.
        `judge`: whether `watch` judges the reader by the ring's counters (default: when its
        readers are known; a TCP writer releases its own ring, the link is its reader)."""
        self.ring = ring
        self.policy = policy
        self.name = name or ring.name
        self.readers = sorted(readers or ())
        self.drops = {DROP_NEW: 0, LATEST: 0}
        self._judged = policy != "latest" and (readers is not None if judge is None else judge)
        if self._judged:
            self.drops[STALLED] = 0  # frames taken back from a reader that stopped releasing
        self._count = ring.written  # frames published (a restarted writer continues the count)
        self._downstream_name = downstream
        self._downstream: Ring | None = None
        self._seen = ring.released  # `released` when last seen moving (by `watch`) ...
        self._seen_at: float | None = None  # ... and when
        self._frame_s: float | None = None  # the reader's pace: seconds per frame released
        self._stall: dict[str, Any] | None = None  # who stalls the edge and why, while it lasts
        self.sock = self._socket(zctx, fanout)
        self._admission = Admission.acquire(zctx) if readers is not None else None
        try:
            if self._admission is not None:
                self._admission.guard(self.sock, self.name, self.readers)
            self.sock.bind(endpoint)
        except zmq.ZMQError:
            self.sock.close(0)  # an open socket would keep the context from terminating
            if self._admission is not None:
                self._admission.release()
            raise

    def _socket(self, zctx: zmq.Context, fanout: bool) -> zmq.Socket:
        # XPUB: a PUB that sees its subscribers, so the writer can wait for its readers
        sock = zctx.socket(zmq.XPUB if fanout else zmq.PUSH)
        if fanout:
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # every reader's subscription, not just the first
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, max(16, 4 * self.ring.slots))
        sock.setsockopt(zmq.SNDTIMEO, 100)
        return sock

    def wait_for_readers(self, readers: int, alive: Callable[[], bool],
                         timeout_s: float = READERS_TIMEOUT_S) -> bool:
        """Before the first frame: wait until `readers` readers are connected (subscribed, on a
        fanout edge), so no descriptor is sent into the void while a reader (re)connects; an
        in-order edge would lose that frame's slot for good. False on timeout."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline and alive():
            if self.sock.type == zmq.PUSH:
                if self.sock.poll(100, zmq.POLLOUT):  # writable once a reader is connected
                    return True
            elif self.sock.poll(100, zmq.POLLIN):
                seen += self.sock.recv()[:1] == b"\x01"  # a subscription
                if seen >= readers:
                    return True
        return False

    def acquire(self, alive: Callable[[], bool]) -> int | None:
        """Slot for the next frame, or None if the stage is stopping or, on a drop_new edge, every
        slot is taken: the caller then discards the frame and calls `dropped_new`."""
        if self.policy != "latest":
            while self._count - self.ring.released >= self.ring.slots:
                if self.policy == "drop_new":
                    return None
                if not alive():
                    return None
                time.sleep(0.0005)
        return self._count % self.ring.slots

    def dropped_new(self) -> None:
        self.drops[DROP_NEW] += 1

    def view(self, slot: int, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        return self.ring.view(slot, shape, dtype)

    @property
    def in_use(self) -> int:
        """Slots holding frames sent to the reader that it has neither finished nor dropped."""
        try:
            return min(self.ring.slots, self.ring.held)
        except TypeError:  # ring closed
            return 0

    def begin(self, slot: int, seq: int) -> None:
        self.ring.begin_write(slot, seq)

    def publish(self, slot: int, seq: int, desc: dict[str, Any], alive: Callable[[], bool]) -> None:
        """Mark the slot complete and announce it downstream."""
        self.ring.end_write(slot, seq)
        self._count += 1
        desc["slot"] = slot
        desc["seq"] = seq
        if self._send(pack(desc), alive):
            self.ring.mark_sent()

    def send_eos(self, alive: Callable[[], bool]) -> None:
        self._send(pack({"eos": True}), alive, lossless=True)

    def _send(self, msg: bytes, alive: Callable[[], bool], lossless: bool = False) -> bool:
        """Hand the message to the socket; False if it was not (counted here as a `latest` drop,
        or the stage is stopping)."""
        if self.policy == "latest" and not lossless:
            try:
                self.sock.send(msg, zmq.NOBLOCK)
                return True
            except zmq.Again:  # reader stalled or down: its queue is full of older frames anyway
                self.drops[LATEST] += 1
                return False
        while True:  # lossless: a lost descriptor would leak a slot
            try:
                self.sock.send(msg)
                return True
            except zmq.Again:
                if not alive():
                    return False

    def watch(self) -> dict[str, Any]:
        """Once a second, from the stage's stats (sent even while the writer waits): judge the
        reader by the ring's counters, and take the frames back from one that stopped releasing
        them. Returns what the stats carry: `stalled` ({edge: {"readers": the stuck stage(s),
        "reason": a line}}, while it lasts) and `refused` (connections from processes that are
        not an edge's stages, per edge of this process)."""
        out: dict[str, Any] = {}
        adm = self._admission
        if adm is not None and any(adm.refused.values()):  # this process's edges, credits too
            out["refused"] = {edge: n for edge, n in adm.refused.items() if n}
        if self._judged and self._judge(time.monotonic()):
            out["stalled"] = {self.name: self._stall}
        return out

    def _judge(self, now: float) -> bool:
        """True while the edge is stalled: frames outstanding and none released for many times
        the reader's own pace (measured here, from the counters, at no cost per frame)."""
        try:
            written, released = self.ring.written, self.ring.released
        except TypeError:  # closed
            return False
        if released != self._seen:  # the reader moves: learn its pace
            if self._seen_at is not None and released > self._seen:
                sample = (now - self._seen_at) / (released - self._seen)
                self._frame_s = sample if self._frame_s is None else \
                    0.8 * self._frame_s + 0.2 * sample
            self._seen, self._seen_at, self._stall = released, now, None
            return False
        if self._seen_at is None or written == released or self._waits_downstream():
            self._seen_at = now  # nothing outstanding, or the reader waits on its own output
            return self._stall is not None
        idle = now - self._seen_at
        limit = STALL_UNMEASURED_S if self._frame_s is None else \
            max(STALL_FLOOR_S, STALL_FACTOR * self._frame_s)
        if idle > limit:
            self._reclaim(idle, now)
        return self._stall is not None

    def _waits_downstream(self) -> bool:
        """Whether the reader's own `block` output ring is full (then it waits, and is excused)."""
        if self._downstream_name is None:
            return False
        if self._downstream is None:
            try:
                self._downstream = Ring.attach(self._downstream_name, readonly=True)
            except (OSError, ValueError):
                return False
        ring = self._downstream
        return ring.written - ring.released >= ring.slots

    def _reclaim(self, idle: float, now: float) -> None:
        """Take back every outstanding frame. Each slot's `begin` word is cleared first, so a
        reader still holding one finds it torn and does not release it a second time (see
        `EdgeReader.release`); shared readers skip the descriptors of frames taken back."""
        ring = self.ring
        with ring.locked():  # holder and claimed change only under the lock (ring.py)
            holder = ring.holder
            for i in range(ring.released, ring.written):
                ring.begin_write(i % ring.slots, 0)
            ring.holder = 0
            ring.claimed = ring.last_seq
            n = ring.release_all()
        self._seen, self._seen_at = ring.released, now
        self.drops[STALLED] += n
        stuck = sibling_stage(holder) if holder else None  # a shared ring names its holder
        readers = [stuck] if stuck else self.readers
        pace = f"{self._frame_s * 1000:.0f} ms a frame" if self._frame_s else "pace not yet known"
        reason = (f"{' or '.join(readers) or 'its reader'} released no frame for {idle:.1f} s "
                  f"(its pace: {pace})")
        if self._stall is None:  # once per stall; the drops count every frame taken back
            log.warning("%s edge stalled: %s; took its %d frame(s) back (counted as 'stalled' "
                        "drops)", self.name, reason, n)
        self._stall = {"readers": readers, "reason": reason}

    def close(self) -> None:
        self.sock.close(0)
        self.ring.close()
        if self._downstream is not None:
            self._downstream.close()
        if self._admission is not None:
            self._admission.release()
            self._admission = None


class EdgeReader:
    """Consumer end of an edge: takes frames by policy and checks they were not overwritten."""

    def __init__(self, zctx: zmq.Context, endpoint: str, ring_name: str, policy: str,
                 required: tuple[str, ...] = (), fanout: bool = False, sole: bool = True):
        self.policy = policy
        self.required = ("slot", "seq", "shape", "dtype", *required)
        self.ring_name = ring_name
        self.ring: Ring | None = None  # attached on the first frame: the writer creates it
        self.drops = {LATEST: 0, TORN: 0, MALFORMED: 0}
        self.depth = 0  # frames that were waiting behind the one taken last
        self._freed = False  # the frame taken last was freed by someone else (see `intact`)
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self.drops[RESTART] = self._take_over() if sole else 0
        self.sock = self._socket(zctx, fanout)
        self.sock.connect(endpoint)
        # One poller for the reader's life: Socket.poll makes a new one per call, which costs
        # a third of a descriptor's whole trip here.
        self._poller = zmq.Poller()
        self._poller.register(self.sock, zmq.POLLIN)

    def _socket(self, zctx: zmq.Context, fanout: bool) -> zmq.Socket:
        sock = zctx.socket(zmq.SUB if fanout else zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_DESCRIPTOR)
        if fanout:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
        return sock

    def _take_over(self) -> int:
        """A reader restarted after a crash: the frames its predecessor was sent and did not
        finish are released (and counted as `restart` drops) so a block/drop_new writer is not
        left waiting for them; frames sent to nobody meanwhile the writer counted already (see
        `Ring.take_over`). Only for the sole reader of a ring: shared readers recover a dead
        holder's frame in `claim`."""
        try:
            self.ring = Ring.attach(self.ring_name)
        except FileNotFoundError:  # first start: the writer creates the ring later
            return 0
        with self.ring.locked():
            self.ring.holder = 0
        return self.ring.take_over()

    def take(self, timeout_ms: int) -> dict[str, Any] | None:
        """Next descriptor by policy (`{"eos": True}` at end of stream), or None on timeout."""
        self._drain()
        if not self._pending:
            if not self._poller.poll(timeout_ms):
                return None
            self._drain()
            if not self._pending:
                return None
        pending = self._pending
        if self.policy != "latest":
            self.depth = len(pending) - 1
            return pending.popleft()
        eos = pending[-1] if pending[-1].get("eos") else None
        frames = len(pending) - (eos is not None)
        if frames == 0:
            pending.clear()
            return eos
        newest = pending[frames - 1]
        self.drops[LATEST] += frames - 1
        self._skip(frames - 1)
        self.depth = frames - 1
        pending.clear()
        if eos is not None:
            pending.append(eos)
        return newest

    def _skip(self, n: int) -> None:
        """Frames passed over by `latest` are done with: their slots may be reused."""
        self._release(n)

    def _drain(self) -> None:
        sock = self.sock
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # (cheaper than an Again per empty read)
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                desc = unpack(raw)
            except Exception:
                desc = None
            if desc is not None and (desc.get("eos") is True or self._valid(desc)):
                self._pending.append(desc)
            else:
                self.drops[MALFORMED] += 1

    def _valid(self, desc: dict[str, Any]) -> bool:
        """A descriptor this reader can act on without failing: all fields present, the slot in
        range, the shape within the slot (anything else is counted as malformed)."""
        if not has_fields(desc, self.required):
            return False
        if self.ring is None:
            try:
                self.ring = Ring.attach(self.ring_name)
            except (OSError, ValueError):
                return False
        slot, seq, shape = desc["slot"], desc["seq"], desc["shape"]
        if not (type(slot) is int and 0 <= slot < self.ring.slots and type(seq) is int and seq > 0
                and isinstance(shape, list) and all(type(d) is int and d > 0 for d in shape)
                and desc["dtype"] in _ITEMSIZE):
            return False
        return 0 < math.prod(shape) * _ITEMSIZE[desc["dtype"]] <= self.ring.slot_bytes

    def frame(self, desc: dict[str, Any]) -> np.ndarray:
        """The descriptor's payload, in place in shared memory (check `intact` after reading)."""
        if self.ring is None:
            self.ring = Ring.attach(self.ring_name)
        return self.ring.view(desc["slot"], tuple(desc["shape"]), desc["dtype"])

    def intact(self, desc: dict[str, Any]) -> bool:
        """True if the slot still held this frame for the whole read. If not: on a `latest` edge
        the writer lapped this reader (a torn drop); on an in-order edge, where the writer waits
        for releases, only a writer taking frames back (`EdgeWriter.watch`, counted there) or a
        restarted reader's take-over can have freed the slot: the frame is not released again."""
        assert self.ring is not None
        if self.ring.intact(desc["slot"], desc["seq"]):
            return True
        if self.policy == "latest":
            self.drops[TORN] += 1
        else:
            self._freed = True
        return False

    def release(self) -> None:
        """Done with the frame taken last: its slot may be reused (unless it was freed already:
        releasing it twice would let the writer overwrite a frame still queued here)."""
        if self._freed:
            self._freed = False
            return
        self._release(1)

    def _release(self, n: int) -> None:
        if self.ring is None:
            try:
                self.ring = Ring.attach(self.ring_name)
            except FileNotFoundError:
                return
        self.ring.release(n)

    @property
    def in_use(self) -> int:
        """Frames sent on this edge and not yet finished or dropped here."""
        try:
            return min(self.ring.slots, self.ring.held)
        except (AttributeError, TypeError):  # not attached yet, or closed
            return 0

    def close(self) -> None:
        self.sock.close(0)
        if self.ring is not None:
            self.ring.close()


"""One results endpoint for any number of inference workers.

Workers publish into the hub's SUB socket (results-in); a thread of the supervisor checks every
message against the result schema (docs/protocol.md), drops what is not a result of ours (counted,
logged once per kind), and publishes the rest on the PUB socket subscribers connect to, and to the
supervisor's own recorder through an in-process queue, so the record never competes with
subscribers. The high-water mark that protects the pipeline from a slow subscriber lives here,
per subscriber. The end-of-stream marker comes only from the supervisor, through the control pair.

The workers draw `result_seq` from one counter: a number that never reaches the hub is a result
the pipeline lost (a worker's queue overflowed while the supervisor was stopped, a worker died
mid-result). Results are published in `result_seq` order: one that overtook an earlier number
(another worker's, still on its way) waits for it. A number still missing a while after a later
one came, with nothing else waiting to be read, is given up: counted as lost, and dropped should
it come after all. The while is LATE_S, or twice the slowest recent inference if longer: a
worker draws its number before its model runs, so on a slow model (a second a frame on a small
board) a result may come that much after a later one of a faster worker. So the running count
stamped on each result (`dropped`) counts losses only, never decreases, and has already risen
over every gap a subscriber sees: it tells its own losses from the pipeline's.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from pipeline.transport.messages import (
    EOS,
    MAX_RESULT_BYTES,
    MAX_SUBSCRIPTION_BYTES,
    SCHEMA,
    pack,
    result_problem,
    unpack,
)

RESULTS_HWM = 1000  # results queued per subscriber (about 1 MB) before it starts losing them
RESULTS_SNDBUF = 8 * 1024  # bytes of kernel buffer per subscriber connection
RECORD_HWM = 20000  # results queued for the supervisor's recorder (its main thread)
REORDER = 10000  # how far behind the newest a result of another worker may still arrive
LATE_S = 1.0  # a missing result_seq is given up at least this long after a later one arrived
LATE_INFERENCES = 2.0  # ... and at least this many times the slowest recent inference
LATE_MAX_S = 30.0  # ... but never longer (a forged result's times cannot stall the others more)
SLOWEST_DECAY = 0.99  # the slowest inference seen forgets itself by this much a result
BACKLOG = 100  # results read at once: a backlog (the supervisor was stopped); its gaps wait anew
END_QUIET_S = 0.02  # no result for this long after the end: the workers' last ones are in
END_WAIT_S = 0.5
_STOP = b"stop"


class ResultsHub:
    def __init__(self, zctx: zmq.Context, inbound: str, outbound: str, counter: Path,
                 reject: Callable[[str], None]):
        """`counter`: the workers' result_seq file; `reject(kind)` counts (and logs once per kind)
        a message that is not a result of ours."""
        self.record_endpoint = f"inproc://results-record-{id(self)}"  # the recorder's PULL
        self.issued = 0  # result_seq numbers the workers have drawn, as of the last result
        self.dropped = 0  # of those, how many were given up (never reached the hub in time)
        self.unrecorded = 0  # results the recorder's queue had no room for
        self._reject = reject
        self._issued = _counter(counter)
        self._next = 1  # the result_seq to publish next
        self._highest = 0  # the highest received
        self._taken = 0  # published
        self._held: dict[int, dict[str, Any]] = {}  # received ahead of _next, waiting for it
        self._missing: dict[int, float] = {}  # below _highest, not received: since when (monotonic)
        self._given_up: set[int] = set()  # recent numbers counted as lost (a late one is dropped)
        self._slowest_s = 0.0  # the slowest recent inference (decaying), from results' own times
        self.late_s = LATE_S  # how long a missing number is awaited after a later one came
        self._zctx = zctx
        self._ctl_endpoint = f"inproc://results-hub-{id(self)}"
        self._ended = threading.Event()
        ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(inbound, outbound, ready),
                                        name="results-hub", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error:
            raise self._error
        self._ctl = zctx.socket(zmq.PAIR)
        self._ctl.connect(self._ctl_endpoint)

    def _run(self, inbound: str, outbound: str, ready: threading.Event) -> None:
        sock_in, out = self._zctx.socket(zmq.SUB), self._zctx.socket(zmq.PUB)
        record, ctl = self._zctx.socket(zmq.PUSH), self._zctx.socket(zmq.PAIR)
        socks = (sock_in, out, record, ctl)
        try:
            for sock in socks:
                sock.setsockopt(zmq.LINGER, 0)
            sock_in.setsockopt(zmq.RCVHWM, 10000)
            sock_in.setsockopt(zmq.MAXMSGSIZE, MAX_RESULT_BYTES)  # a bigger one drops its sender
            sock_in.setsockopt(zmq.SUBSCRIBE, b"")  # everything; `out` filters by subscribers' prefixes
            out.setsockopt(zmq.SNDHWM, RESULTS_HWM)
            out.setsockopt(zmq.SNDBUF, RESULTS_SNDBUF)
            out.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # a longer prefix: disconnected
            record.setsockopt(zmq.SNDHWM, RECORD_HWM)
            sock_in.bind(inbound)
            out.bind(outbound)
            record.bind(self.record_endpoint)
            ctl.bind(self._ctl_endpoint)
        except zmq.ZMQError as e:
            self._error = e
            for sock in socks:
                sock.close(0)
            ready.set()
            return
        ready.set()
        try:
            self._serve(sock_in, out, record, ctl)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in socks:
                sock.close(0)

    def _serve(self, sock_in: zmq.Socket, out: zmq.Socket, record: zmq.Socket,
               ctl: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock_in, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        while True:
            events = dict(poller.poll(int(self.late_s * 250) if self._missing else None))
            if sock_in in events or self._missing:
                self._forward(sock_in, out, record, 0.0)
            if ctl in events:
                end = ctl.recv()
                if end == _STOP:
                    return
                self._forward(sock_in, out, record, END_QUIET_S)  # the workers' last results first
                for data in self._end(end):
                    self._publish(data, out, record)
                self._ended.set()

    def _forward(self, sock_in: zmq.Socket, out: zmq.Socket, record: zmq.Socket,
                 quiet_s: float) -> None:
        """Every waiting result; with `quiet_s`, until none has come for that long (or for at
        most END_WAIT_S: a worker that has not stopped does not hold the end back). Then, with
        nothing left to read, the numbers missing for `late_s` are given up."""
        deadline = time.monotonic() + END_WAIT_S
        read = 0
        while True:
            if not sock_in.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # (cheaper than an Again)
                if quiet_s and time.monotonic() < deadline and sock_in.poll(quiet_s * 1000):
                    continue
                break
            try:
                raw = sock_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            read += 1
            for data in self._take(raw):
                self._publish(data, out, record)
        if read >= BACKLOG:  # other workers' queues may still hold the missing ones: wait anew
            now = time.monotonic()
            self._missing = dict.fromkeys(self._missing, now)
        for data in self._give_up(time.monotonic() - self.late_s):
            self._publish(data, out, record)

    def _publish(self, data: bytes, out: zmq.Socket, record: zmq.Socket) -> None:
        out.send(data)  # a PUB never waits: a full subscriber loses it
        try:
            record.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.unrecorded += 1

    def _take(self, raw: bytes) -> list[bytes]:
        """The results to publish now (stamped, in order): none for anything that is not one of
        ours, nor while an earlier number is still awaited."""
        try:
            msg = unpack(raw)
        except ValueError:
            return self._drop("message on results-in that is not a msgpack map")
        if msg.get("type") == EOS:
            return self._drop("forged end-of-stream marker")
        problem = result_problem(msg)
        if problem:
            return self._drop(f"malformed result ({problem})")
        rseq = msg["result_seq"]
        t = msg["t"]
        self._slowest_s = max((t["inference_end"] - t["inference_start"]) / 1e9,
                              self._slowest_s * SLOWEST_DECAY)
        self.late_s = min(LATE_MAX_S, max(LATE_S, LATE_INFERENCES * self._slowest_s))
        self.issued = int(self._issued[0])
        if rseq > self.issued:
            return self._drop("result with a result_seq no worker drew")
        if rseq in self._given_up:  # came after all, too late: already counted as lost
            self._given_up.discard(rseq)
            return []
        if rseq > self._highest:
            out = self._skip_to(rseq - REORDER)  # memory stays bounded however far ahead
            now = time.monotonic()
            for missing in range(max(self._highest + 1, self._next), rseq):
                self._missing[missing] = now
            self._highest = rseq
        elif self._missing.pop(rseq, None) is not None:
            out = []
        else:
            return self._drop("result with a repeated result_seq")
        self._held[rseq] = msg
        return out + self._release()

    def _release(self) -> list[bytes]:
        """The held results from _next on, as long as they follow one another."""
        out = []
        while self._next in self._held:
            msg = self._held.pop(self._next)
            self._next += 1
            self._taken += 1
            msg["dropped"] = self.dropped
            msg["t"]["published"] = time.monotonic_ns()
            out.append(pack(msg))
        return out

    def _give_up(self, before: float) -> list[bytes]:
        """Count as lost the missing numbers at the front that have been missing since `before`
        (monotonic), and publish the results that waited behind them."""
        out = []
        while self._missing.get(self._next, before + 1) <= before:
            self._lose(self._next)
            out += self._release()
        return out

    def _skip_to(self, rseq: int) -> list[bytes]:
        """Publish or count as lost every number below `rseq`."""
        out = []
        while self._next < rseq and self._next <= self._highest:
            if self._next in self._missing:
                self._lose(self._next)
            out += self._release()
        if self._next < rseq:  # never received, never awaited (beyond the highest)
            self.dropped += rseq - self._next
            self._next = rseq
        return out

    def _lose(self, rseq: int) -> None:
        del self._missing[rseq]
        self.dropped += 1
        self._next += 1
        self._given_up.add(rseq)
        if len(self._given_up) > REORDER:  # the oldest can no longer come: forget them
            self._given_up = {s for s in self._given_up if s > rseq - REORDER // 2}

    def _drop(self, kind: str) -> list[bytes]:
        self._reject(kind)
        return []

    def _end(self, end: bytes) -> list[bytes]:
        """What is still held, then the supervisor's end marker with the final count: every
        result_seq up to the last one drawn was either published or is in `dropped`."""
        out = self._give_up(time.monotonic())
        msg = unpack(end)
        self.issued = int(self._issued[0])
        self.dropped = self.issued - self._taken
        return out + [pack({**msg, "result_seq": self.issued, "dropped": self.dropped})]

    def publish_end(self, pipeline: str, reason: str) -> None:
        """Tell every subscriber the stream has ended (after the workers' last results)."""
        if self._tell(pack({"schema": SCHEMA, "type": EOS, "pipeline": pipeline, "reason": reason})):
            self._ended.wait(1.0)

    def close(self) -> None:
        self._tell(_STOP)
        self._thread.join(timeout=2.0)
        self._ctl.close()

    def _tell(self, msg: bytes) -> bool:
        """To the hub's thread; False if it is gone (it never blocks the supervisor)."""
        try:
            self._ctl.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True


def _counter(path: Path) -> Any:
    """The workers' result_seq (pipeline/transport/workqueue.py: SharedCounter), read-only."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < 8:
            os.posix_fallocate(fd, 0, 8)
        mm = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return np.frombuffer(mm, dtype=np.uint64, count=1)

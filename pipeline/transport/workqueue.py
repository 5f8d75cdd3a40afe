"""Several inference workers sharing several sources, without a broker.

Every worker subscribes to every source's tensors edge and keeps a round-robin cursor over the
sources. To work, it claims the newest frame of the next source that has one no worker has taken
(`SharedReader.claim`: a few microseconds under the ring's lock), so no source starves, none is
served a stale frame, and a worker that dies takes nothing with it but the frame it held. One
that hangs holding a frame of an in-order ring (where the others wait for it) has its frames
taken back by the ring's writer (`EdgeWriter.watch`), which also clears `holder` and moves
`claimed` past them, so the others carry on and skip what was taken back.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Any

import numpy as np
import zmq

from pipeline.transport.drops import LATEST, RESTART
from pipeline.transport.edge import EdgeReader
from pipeline.transport.rundir import pid_alive


class SharedReader(EdgeReader):
    """A reader of a fanout edge that shares the ring with the other workers: each frame goes to
    one of them, claimed under the ring's lock."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, fanout=True, **kwargs)
        self.ended = False  # the writer's end of stream arrived
        self._holding = False  # this reader is the ring's holder (in-order edges)

    def claim(self) -> dict[str, Any] | None:
        """Shared ring: take the frame this reader should work on next, unless another reader
        took it first. `latest` takes the newest frame no reader has taken; in-order edges take
        the oldest, one frame at a time per ring (so slots are released in order). None if
        there is nothing to take; sets `ended` once the writer's end of stream arrives."""
        self._drain()
        pending = self._pending
        if pending and pending[-1].get("eos"):
            pending.pop()
            self.ended = True
        if not pending or self.ring is None:
            return None
        ring, mine = self.ring, os.getpid()
        with ring.locked():
            claimed = ring.claimed
            while pending and pending[0]["seq"] <= claimed:  # taken by other readers
                pending.popleft()
            if not pending:
                return None
            if self.policy == "latest":
                desc = pending.pop()
                skipped = len(pending)
                self.drops[LATEST] += skipped
                ring.release(skipped)
                pending.clear()
                self.depth = skipped
            else:
                holder = ring.holder
                if holder and holder != mine:
                    if pid_alive(holder):
                        return None  # another reader works on this ring: keep the order
                    self.drops[RESTART] += 1  # its frame died with it
                    ring.release(1)
                desc = pending.popleft()
                ring.holder = mine
                self._holding = True
                self.depth = len(pending)
            ring.claimed = desc["seq"]
        return desc

    @property
    def waiting(self) -> bool:
        """Descriptors received and not yet claimed (they may be claimable after a release)."""
        return bool(self._pending)


    def release(self) -> None:
        """Done with the frame claimed last: its slot may be reused, and (in order) the next
        frame of this ring may be claimed by any reader."""
        super().release()
        if self._holding:
            self._holding = False
            with self.ring.locked():
                if self.ring.holder == os.getpid():
                    self.ring.holder = 0


class WorkQueue:
    def __init__(self, readers: list[SharedReader]):
        self.readers = readers
        self.current: SharedReader | None = None  # the reader of the frame taken last
        self._next = 0
        self._poller = zmq.Poller()
        for r in readers:
            self._poller.register(r.sock, zmq.POLLIN)

    @property
    def ended(self) -> bool:
        """Every source has ended and nothing is left to take."""
        return all(r.ended and not r.waiting for r in self.readers)

    def take(self, timeout_ms: int) -> dict[str, Any] | None:
        """The next frame's descriptor (its reader is `current`), or None on timeout."""
        desc = self._claim_next()
        if desc is not None:
            return desc
        # Frames held back behind another worker's in-order frame wake nobody: look again soon.
        blocked = any(r.waiting for r in self.readers)
        if not self._poller.poll(min(timeout_ms, 2) if blocked else timeout_ms) and not blocked:
            return None
        return self._claim_next()

    def _claim_next(self) -> dict[str, Any] | None:
        n = len(self.readers)
        for k in range(n):
            i = (self._next + k) % n
            desc = self.readers[i].claim()
            if desc is not None:
                self._next = i + 1
                self.current = self.readers[i]
                return desc
        return None

    def close(self) -> None:
        for r in self.readers:
            r.close()


class SharedCounter:
    """A number the workers of one pipeline draw from in turn (result_seq): 8 bytes in a file
    of the run directory, incremented under an flock, surviving any worker's restart."""

    def __init__(self, path: str):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.posix_fallocate(fd, 0, 8)
            self._mm = mmap.mmap(fd, 8)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._value = np.frombuffer(self._mm, dtype=np.uint64, count=1)

    def next(self) -> int:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._value[0] += 1
            return int(self._value[0])
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        del self._value
        self._mm.close()
        os.close(self._fd)

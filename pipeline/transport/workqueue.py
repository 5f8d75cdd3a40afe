"""Several inference workers sharing several sources, without a broker.

Every worker subscribes to every source's tensors edge and keeps a round-robin cursor over the
sources. To work, it claims the newest frame of the next source that has one no worker has taken
(`EdgeReader.claim`: a few microseconds under the ring's lock), so no source starves, none is
served a stale frame, and a worker that dies takes nothing with it but the frame it held.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Any

import numpy as np
import zmq

from pipeline.transport.edge import EdgeReader


class WorkQueue:
    def __init__(self, readers: list[EdgeReader]):
        self.readers = readers
        self.current: EdgeReader | None = None  # the reader of the frame taken last
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

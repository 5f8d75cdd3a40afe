"""The capture loop's clock: a fixed-rate schedule, and deliberate stalls for studying hiccups."""

from __future__ import annotations

import time


class Pacer:
    """Holds a loop to `fps` on a fixed schedule; falls back in step instead of bursting."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.due = time.monotonic()

    def restart(self) -> None:
        """Start the schedule afresh (after a stall, frames resume at once, no catch-up burst)."""
        self.due = time.monotonic()

    def wait(self, frames: int = 1) -> None:
        """Until the next frame is due, `frames` periods after the last (a file's frames that
        could not be decoded keep their time, as a camera's missed frames do)."""
        if not self.period:
            return
        self.due += self.period * frames
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

    def sleep_if_due(self) -> bool:
        """Sleeps through the stall if one is due; True if it did."""
        if not self.seconds or time.monotonic() < self.next:
            return False
        time.sleep(self.seconds)
        self.next += self.every
        return True

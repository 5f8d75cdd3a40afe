"""What every frame source is, apart from the sources themselves: the `Source` interface the
capture stage reads, its error, and the `buffer_for` callback that hands a source the slot to
decode into. The Pi camera's source (picamera2_source.py) and the others (sources.py) build on it
without importing each other."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.transport.drops import CORRUPT, DECODE, ROI

BufferFor = Callable[[tuple[int, int, int]], np.ndarray]


class SourceError(UserError):
    """A source that cannot be opened or read."""


class Source:
    max_frame_bytes: int = 0
    fps: float = 0.0  # pacing for the capture loop; 0: no pacing (as fast as possible / device-paced)
    corrupt = 0  # items skipped because they could not be decoded
    roi = 0  # images skipped because source.roi does not fit them
    undecodable = 0  # video frames skipped mid-file or missing at its end because they cannot be decoded
    damage = ""  # the first frames the file could not deliver, for the user ("": none)
    gap = 0  # undecodable frames skipped just before the last one read (they keep their time)
    strict = False  # every frame matters (block edges): damage ends the stream, even looping
    live = False  # a failed read means "reconnect", not "end of stream"

    def read(self, buffer_for: BufferFor) -> dict[str, Any] | None:
        raise NotImplementedError

    def drop_counts(self) -> dict[str, int]:
        """What the source skipped so far, under the drop reasons the status reports."""
        return {CORRUPT: self.corrupt, ROI: self.roi, DECODE: self.undecodable}

    def close(self) -> None:
        pass

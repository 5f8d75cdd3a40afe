"""A result as a subscriber receives it: the published map (docs/protocol.md) as a `Result` of
`Prediction`s. Its own module, so what reads results (the state tracker, the consumers) does not
import the subscription that delivers them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.transport.ring import Ring


@dataclass(frozen=True, slots=True)
class Prediction:
    index: int  # the model's class index (ImageNet-1k's for the shipped model)
    label: str
    prob: float


@dataclass(slots=True)
class Result:
    """One classification, as published (see docs/protocol.md)."""

    pipeline: str
    seq: int  # frame sequence number from capture
    result_seq: int  # consecutive per pipeline: gaps are results lost (see missed/dropped_before)
    source: str
    frame_index: int | None
    item: str | None
    captured_at: float  # UNIX time
    latency_ms: float  # capture to result
    model: str
    top: list[Prediction]
    timestamps: dict[str, int]  # CLOCK_MONOTONIC ns per stage
    missed_before: int = 0  # results this subscriber lost since the previous one
    dropped_before: int = 0  # results the pipeline dropped (or delayed past max_age) since then
    frame: np.ndarray | None = None  # HxWx3 BGR, read-only view into shared memory
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    events: list[Any] = field(default_factory=list)  # StateEvents it caused (states=True)
    model_id: str = ""  # short hash of the model file (results of two models differ in it)
    _ring: Ring | None = field(default=None, repr=False)

    @classmethod
    def from_message(cls, msg: dict[str, Any], missed_before: int = 0,
                     dropped_before: int = 0) -> "Result":
        """A result from its published map (checked with `messages.result_problem`), e.g. a
        line of a recording."""
        return cls(
            pipeline=msg["pipeline"], seq=msg["seq"], result_seq=msg["result_seq"],
            source=msg["source"], frame_index=msg.get("frame"), item=msg.get("item"),
            captured_at=msg["captured_at"], latency_ms=msg["latency_ms"], model=msg["model"],
            top=[Prediction(t["index"], t["label"], t["prob"]) for t in msg["top"]],
            timestamps=msg["t"], missed_before=missed_before, dropped_before=dropped_before,
            raw=msg, model_id=msg.get("model_id", ""))

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def prob(self) -> float:
        return self.top[0].prob

    def frame_still_valid(self) -> bool:
        """False once the pipeline has overwritten the frame's slot: check after using `frame`."""
        return self._ring is not None and self._ring.intact(self.raw["frame_slot"], self.seq)

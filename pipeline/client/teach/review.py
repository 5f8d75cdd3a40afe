"""Examples worth labelling, saved while a model runs: the frames it was unsure of (top-1
probability below a threshold) and those where its source's state is about to change (the newest
vote is not the state), the moments the next training most needs. They are saved as the collect
consumer saves (the region of interest, its naming and de-duplication) into the dataset's
`unlabelled/`, noted in the dataset's review index so the page offers them first; at most one per
second of capture time per source, and at most `cap` per source and run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.client.consumers.collect import MAX_EXAMPLES, ExampleSaver, source_configs
from pipeline.client.result import Result
from pipeline.client.states import Tracker
from pipeline.errors import UserError

from .store import mark_review

INTERVAL_S = 1.0


class Review:
    """Fed every result (with its frame); saves the few worth labelling."""

    def __init__(self, dataset: Path, below: float, config: dict[str, Any] | None = None,
                 cap: int = MAX_EXAMPLES, interval: float = INTERVAL_S):
        self.root = dataset
        self.below = below
        self.cap = cap
        self.interval = interval
        self.saver = ExampleSaver(dataset, source_configs(config) if config else {})
        self.tracker = Tracker(config)
        self.last: dict[str, float] = {}  # source -> capture time of the last frame looked at
        self.saved = 0
        self.failed = False

    def worth_labelling(self, r: Result) -> bool:
        """Unsure, or its source's state about to change (the newest vote disagrees with it)."""
        self.tracker.update(r)
        machine = self.tracker.machines[r.source]
        turning = machine.decided and machine.state is not None and bool(machine.votes) \
            and machine.votes[-1] != machine.state.key
        return r.prob < self.below or turning

    def on_result(self, r: Result) -> Path | None:
        """The example saved for this result, if any."""
        if self.failed or r.frame is None or not self.worth_labelling(r):
            return None
        last = self.last.get(r.source)
        if last is not None and 0 <= r.captured_at - last < self.interval:
            return None
        src = self.saver.source(r.source)
        if src.full:
            return None
        crop = self.saver.region(src, r)
        if crop is None:
            return None
        self.last[r.source] = r.captured_at
        try:
            path = self.saver.save(src, r, crop)
            if path is not None:
                mark_review(self.root, path.name)
        except (OSError, UserError) as e:
            self.failed = True
            print(f"teach: cannot save examples for review any more: {e}", file=sys.stderr, flush=True)
            return None
        if src.saved >= self.cap:
            src.full = True
            print(f"teach: {r.source}: {src.saved} examples saved for review, the most per run",
                  file=sys.stderr, flush=True)
        if path is not None:
            self.saved += 1
        return path

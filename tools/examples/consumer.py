"""Custom consumers, two ways. Run either against a running pipeline:

    pipeline-attach --consumer tools/examples/consumer.py:print_changes
    pipeline-attach --consumer tools/examples/consumer.py:LabelCounter --duration 10

or from Python:

    from pipeline import attach
    counter = LabelCounter()
    for result in attach("lab"):
        counter.on_result(result)
"""

from __future__ import annotations

import collections

from pipeline import Result

_last: list[str] = []


def print_changes(result: Result) -> None:
    """A plain function: called with every result. Prints when the top-1 label changes."""
    if not _last or _last[-1] != result.label:
        print(f"seq {result.seq}: now {result.label} ({result.prob:.2f})", flush=True)
        _last.append(result.label)


class LabelCounter:
    """A class: `on_result` per result, `close` at the end. `frames = True` would hand it each
    result's frame too (result.frame, a read-only HxWx3 BGR view in shared memory)."""

    frames = False

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def on_result(self, result: Result) -> None:
        self.counts[result.label] += 1

    def close(self) -> None:
        for label, n in self.counts.most_common(5):
            print(f"{n:6d}  {label}")

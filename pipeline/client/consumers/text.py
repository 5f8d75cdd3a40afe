"""Text consumers: `print` (one human line per result) and `jsonl` (one JSON object per line)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from pipeline.client.result import Result
from pipeline.client.states import Tracker
from pipeline.errors import UserError


class PrintConsumer:
    """`seq 1234  water bottle 0.93  (41 ms)`; a gap in the stream gets a line of its own, saying
    whose loss it is: this consumer's, or the pipeline's."""

    max_age = 2.0  # a live view: after falling behind, skip to fresh results

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout

    def on_result(self, r: Result) -> None:
        if r.dropped_before:
            print(f"... the pipeline dropped or delayed {r.dropped_before} results "
                  "(not this consumer's loss)", file=self.stream)
        if r.missed_before:
            print(f"... missed {r.missed_before} results (this consumer fell behind)",
                  file=self.stream)
        print(f"seq {r.seq}  {r.label} {r.prob:.2f}  ({r.latency_ms:.0f} ms)", file=self.stream,
              flush=True)


class JsonlConsumer:
    """Every result as published (see docs/protocol.md), one JSON object per line; for a source
    with state options (`source.state`), the state events a result causes follow it, one line
    each (`"type": "event"`). A file that can no longer be written (a full disk) ends the
    consumer with one line (exit code 1 from pipeline-attach); what was written stays."""

    def __init__(self, out: str | None = None, config: dict[str, Any] | None = None):
        self.out = out
        self.file = open(out, "w") if out and out != "-" else sys.stdout
        self.states = Tracker(config)

    def on_result(self, r: Result) -> None:
        lines = [json.dumps(r.raw)]
        if self.states.declared(r.source):
            lines += [json.dumps(e.to_dict()) for e in self.states.update(r)]
        try:
            self.file.write("\n".join(lines) + "\n")
            self.file.flush()
        except OSError as e:
            if self.file is sys.stdout:  # a closed pipe: pipeline-attach ends quietly
                raise
            self.close()
            raise UserError(f"jsonl: cannot write {self.out} any more ({e.strerror}); stopped") from None

    def close(self) -> None:
        file, self.file = self.file, sys.stdout
        if file is not sys.stdout:
            try:
                file.close()
            except OSError:  # what was buffered cannot be written either
                pass

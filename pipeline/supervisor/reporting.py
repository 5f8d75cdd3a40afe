"""What the supervisor tells the world besides the control protocol: the ready line, the status
it publishes once a second, and its own subscription to the results (report, metrics, record)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import zmq

from pipeline.config import Config
from pipeline.observe.format import format_status
from pipeline.observe.journal import STATUS_EVERY_S, WARNING, journald, logfmt, status_fields
from pipeline.observe.report import RunReport
from pipeline.supervisor.file_lines import FileLines
from pipeline.supervisor.results_hub import ResultsHub
from pipeline.transport.messages import MAX_SUBSCRIPTION_BYTES, pack, unpack


def synthetic_note(config: Config) -> str | None:
    """What a synthetic source shows, so its labels are not taken for a real scene's."""
    ids = config.source_ids()
    names = [ids[i] for i, src in enumerate(config.source_list) if src.kind == "synthetic"]
    if not names:
        return None
    which = "synthetic source" if len(config.source_list) == 1 else f"source {', '.join(names)}"
    return (f"{which}: a generated test pattern (colour bars and a moving box), not a camera, so "
            "the labels it gets mean nothing; on a real clip (the one shipped, or yours with "
            "--set source.path=CLIP.mp4): pipeline-up configs/video.toml")


def ready_line(config: Config, stages: list[str], workers: list[str], ready: dict[str, dict]) -> str:
    """What runs where, once every stage is ready."""
    return (f"ready: {_sources_ready(config, ready)}, {_model_ready(config, workers, ready)}; cores "
            + ", ".join(f"{s} {ready[s].get('cores')}" for s in stages))


def _sources_ready(config: Config, ready: dict[str, dict]) -> str:
    """How many sources or what kind, and which are read on demand."""
    kinds = sorted({ready[s].get("source") for s in ready if ready[s].get("source")})
    what = f"{len(config.source_list)} sources" if len(config.source_list) > 1 \
        else f"{kinds[0] if kinds else 'remote'} source"
    pulled = sum(bool(m.get("on_demand")) for m in ready.values())
    what += " read on demand" if pulled and pulled == len(config.source_list) else \
        f" ({pulled} read on demand)" if pulled else ""
    return what


def _model_ready(config: Config, workers: list[str], ready: dict[str, dict]) -> str:
    """The model the workers loaded."""
    inf = ready[workers[0]] if workers else None
    return (f"{inf.get('model')} on {inf.get('runtime')} ({inf.get('plan')}; engine "
            f"{inf.get('engine')}) with {inf.get('threads')} thread(s)"
            f"{f' x {len(workers)} workers' if len(workers) > 1 else ''}") \
        if inf else f"no model here (inference on host {config.inference.host})"


class StatusPublisher:
    """The once-a-second status: on the status socket, to the metrics, and printed."""

    def __init__(self, zctx: zmq.Context, endpoint: str, report: RunReport, metrics: Any,
                 quiet: bool, say: Callable[..., None]):
        self.report = report
        self.metrics = metrics
        self.quiet = quiet
        self.say = say
        self.socket = zctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 10)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # a longer prefix: disconnected
        self.socket.bind(endpoint)
        self.journal = journald()  # the journal stamps lines: one structured line now and then
        self.journal_next = 0.0

    def publish(self) -> dict[str, Any]:
        """Publish, hand to the metrics and print the status; returns it."""
        status = self.report.status()
        self.socket.send(pack(status))
        if self.metrics:
            self.metrics.on_status(status)
        if self.quiet:
            return status
        if self.journal:
            if status["elapsed_s"] >= self.journal_next:
                self.journal_next = status["elapsed_s"] + STATUS_EVERY_S
                self.say(logfmt(status_fields(status)))
        else:
            lines = format_status(status, self.report.rate)
            self.say(f"[{status['elapsed_s']:6.1f}s] " + f"\n{'':9}".join(lines))
        return status

    def close(self) -> None:
        self.socket.close(0)


class ResultsRecorder:
    """The supervisor's own share of the results, handed over by the hub's thread (never lost to
    a subscriber's high-water mark): each one counts in the report and the metrics and, with
    `--record`, is written to the record file as a JSON line; for an images source, each file's
    label goes to stdout (`lines`)."""

    def __init__(self, zctx: zmq.Context, hub: ResultsHub | None, report: RunReport, metrics: Any,
                 record_path: str | None, say: Callable[..., None], lines: FileLines | None = None):
        """`hub`: the results hub (None on a host without workers: nothing to take)."""
        self.say = say
        self.lines = lines
        self.report = report
        self.metrics = metrics
        self.hub = hub
        self.socket = zctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        if hub is not None:
            self.socket.connect(hub.record_endpoint)
        self.record = open(record_path, "w") if record_path else None

    def drain(self) -> None:
        """Take every waiting result (the hub has checked them), and the hub's counts of the
        results the pipeline dropped and of those there was no room for here."""
        now = time.monotonic()
        while True:
            try:
                msg = unpack(self.socket.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if msg.get("type") != "result":
                continue
            self.report.on_result(msg)
            if self.metrics:
                self.metrics.on_result(msg)
            if self.record:
                self._write(json.dumps(msg) + "\n")
            if self.lines:
                self.lines.on_result(msg, now)
        if self.lines:
            self.lines.release(now)
        if self.hub is not None:
            self.report.results_issued = self.hub.issued
            self.report.results_dropped = self.hub.dropped
            self.report.results_unrecorded = self.hub.unrecorded

    def _write(self, line: str) -> None:
        """One result into the record; a record that cannot be written (a pipe whose reader
        left, a full disk) stops recording with one line, and the pipeline runs on."""
        try:
            self.record.write(line)
        except OSError as e:
            self.close_record()
            self.say(f"--record: cannot write any more ({e.strerror}); recording stopped, "
                     "the pipeline runs on", WARNING)

    def close_record(self) -> None:
        record, self.record = self.record, None
        if record:
            try:
                record.close()
            except OSError:  # what was buffered cannot be written either
                pass

    def close(self) -> None:
        self.socket.close(0)

"""What the supervisor tells the user: a status line per stage each second, a summary at exit.

`RunReport` folds the stages' stats messages and the result stream into one picture; the same
dict feeds the printed summary and `--summary-json`. The printed text is made in format.py.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pipeline.observe.health import HealthReader
from pipeline.observe.stats import Histogram


def _merge_drops(into: dict[str, dict[str, int]], drops: dict[str, dict[str, int]]) -> None:
    for edge, reasons in drops.items():
        slot = into.setdefault(edge, {})
        for reason, n in reasons.items():
            slot[reason] = slot.get(reason, 0) + int(n)


class RunReport:
    """Everything the supervisor knows about a running pipeline, from the stages' stats
    messages (about once a second), their processes, and every result's timestamps."""

    STALLED_AFTER_S = 3.0  # no stats from a stage for this long: it is shown as stalled

    def __init__(self, name: str, stages: dict[str, tuple[str, str | None]]):
        """`stages`: instance name -> (kind, source id or None), in display order."""
        self.name = name
        self.kinds = {n: kind for n, (kind, _) in stages.items()}
        self.source_of = {n: src for n, (_, src) in stages.items()}
        self.sources: dict[str, SourceReport] = {}
        self.latest: dict[str, dict[str, Any]] = {}  # last stats message per stage
        self.ready: dict[str, dict[str, Any]] = {}  # ready message per stage (pid, cores, ...)
        self.seen: dict[str, float] = {}  # when each stage last reported (ready or stats)
        self.heard: dict[str, float] = {}  # when each stage's process last sent stats
        self._prev: dict[str, tuple[float, int, int]] = {}
        self.rate: dict[str, tuple[float, float]] = {}  # stage -> (fps in, fps out)
        self._procs: dict[str, Any] = {}  # psutil.Process per stage
        self.latency = Histogram()  # end-to-end, capture -> result, ms
        self.frame_age = Histogram()  # capture -> inference start, ms
        self.window: dict[str, list[float]] = {"latency": [], "frame_age": []}
        self.first_result = self.last_result = 0.0
        self.results = 0
        self.last_top: dict[str, Any] | None = None
        self.model: dict[str, Any] | None = None  # the model of the newest result: name, id, runtime
        self.started = time.monotonic()
        self.stopped: float | None = None
        self.rejected: dict[str, int] = {}  # the supervisor's count of hostile messages
        self.results_issued = 0  # result_seq numbers the workers drew (from the results hub)
        self.results_dropped = 0  # of those, lost before the hub could publish them
        self.results_unrecorded = 0  # published, but not taken here (not in the figures or record)
        self.restarts: dict[str, int] = {stage: 0 for stage in self.kinds}
        self.down: dict[str, str] = {}  # stage -> why it is being restarted
        self.carried: dict[str, dict[str, Any]] = {}  # counters of a stage's earlier lives
        self.health = HealthReader()  # the machine: temperature, clock, throttling

    def mark_started(self) -> None:
        """Frames start flowing now; stages report from here on."""
        self.started = time.monotonic()
        self.seen = {stage: self.started for stage in self.seen}

    def stage_down(self, stage: str, why: str) -> None:
        """A stage died and will be restarted: keep its counters, they start again from 0."""
        self.restarts[stage] += 1
        self.down[stage] = why
        last = self.latest.pop(stage, None)
        if last:
            c = self.carried.setdefault(stage, {"frames_in": 0, "frames_out": 0, "drops": {}})
            c["frames_in"] += int(last.get("frames_in", 0))
            c["frames_out"] += int(last.get("frames_out", 0))
            _merge_drops(c["drops"], last.get("drops", {}))
        self._prev.pop(stage, None)
        self.heard.pop(stage, None)

    def final_drops(self, stage: str, drops: dict[str, dict[str, int]]) -> None:
        """A stage's process ended: what it had counted up to its end, from its tally (its last
        stats, up to a second older, may not tell the last of it), replaces those edges' counts."""
        if drops:
            last = self.latest.setdefault(stage, {})
            last["drops"] = {**last.get("drops", {}), **drops}

    def counter(self, stage: str, key: str) -> int:
        """A stage's frames_in / frames_out over all its lives."""
        return int(self.latest.get(stage, {}).get(key, 0)) + self.carried.get(stage, {}).get(key, 0)

    def on_ready(self, stage: str, msg: dict[str, Any]) -> None:
        self.down.pop(stage, None)
        self.ready[stage] = msg
        self.seen[stage] = time.monotonic()
        try:
            import psutil

            self._procs[stage] = psutil.Process(int(msg["pid"]))
            self._procs[stage].cpu_percent(None)  # starts the CPU accounting interval
        except Exception:
            pass

    def on_stats(self, msg: dict[str, Any]) -> None:
        stage = msg.get("stage")
        if stage not in self.kinds:
            return
        now = time.monotonic()
        # When the stage sent them: stats queued while the supervisor was stopped arrive together.
        sent = msg.get("sent_ns")
        at = sent / 1e9 if type(sent) is int and 0 < sent / 1e9 <= now else now
        n_in, n_out = int(msg.get("frames_in", 0)), int(msg.get("frames_out", 0))
        if stage in self._prev:
            t0, i0, o0 = self._prev[stage]
            if at > t0:
                self.rate[stage] = ((n_in - i0) / (at - t0), (n_out - o0) / (at - t0))
        self._prev[stage] = (at, n_in, n_out)
        self.latest[stage] = msg
        self.seen[stage] = self.heard[stage] = now

    def on_result(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        # The throughput goes by when the hub published each result (this clock): results are
        # taken here in batches, so a short run would otherwise seem to take no time at all.
        published = msg.get("t", {}).get("published")
        at = published / 1e9 if type(published) is int and 0 < published / 1e9 <= now else now
        if not self.results:
            self.first_result = at
        self.last_result = at
        self.results += 1
        ms = float(msg.get("latency_ms", 0.0))
        self.latency.add(ms)
        self.window["latency"].append(ms)
        t = msg.get("t", {})
        if "inference_start" in t and "capture" in t:
            age = (t["inference_start"] - t["capture"]) / 1e6
            self.frame_age.add(age)
            self.window["frame_age"].append(age)
        top = msg.get("top") or []
        self.last_top = top[0] if top else None
        if self.model is None or self.model["id"] != msg.get("model_id"):  # (a deploy)
            self.model = {"name": msg.get("model"), "id": msg.get("model_id"),
                          "runtime": msg.get("runtime")}
        src = str(msg.get("source"))
        per = self.sources.get(src) or self.sources.setdefault(src, SourceReport())
        per.add(now, ms)

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, k in self.kinds.items() if k == kind]

    def source_drops(self, src: str) -> dict[str, dict[str, int]]:
        """Drops on a source's edges: its capture and preprocess, and every worker's share of
        its tensors edge (with one source, every drop is that source's)."""
        single = len({s for s in self.source_of.values() if s is not None}) <= 1
        drops: dict[str, dict[str, int]] = {}
        for stage in self.kinds:
            own = single or self.source_of[stage] == src
            for m in (self.latest.get(stage, {}), self.carried.get(stage, {})):
                for edge, reasons in m.get("drops", {}).items():
                    if own or edge == f"tensors.{src}":
                        _merge_drops(drops, {edge: reasons})
        return drops

    def _process(self, stage: str) -> dict[str, Any]:
        proc = self._procs.get(stage)
        if proc is None:
            return {"cpu_percent": None, "rss_mb": None}
        try:
            with proc.oneshot():
                return {"cpu_percent": round(proc.cpu_percent(None), 1),
                        "rss_mb": round(proc.memory_info().rss / 2**20, 1)}
        except Exception:  # the process is gone
            return {"cpu_percent": None, "rss_mb": None}

    def status(self) -> dict[str, Any]:
        """The pipeline now: per stage and end to end, over the last second (see docs/profiling.md's
        definitions). Printed as status lines, published on the status socket, read by
        pipeline-top and the metrics endpoint. Starts a new one-second window."""
        now = time.monotonic()
        stages = {stage: self._stage_status(stage, now) for stage in self.kinds}
        for stage, m in stages.items():
            if self.source_of[stage] is not None:
                m["source"] = self.source_of[stage]
        for writer in list(stages):  # a writer names the reader that stopped releasing its frames
            for edge, stall in self.latest.get(writer, {}).get("stalled", {}).items():
                for reader in (r for r in stall.get("readers", []) if r in stages):
                    stages[reader].update(state="stalled", stall_reason=f"{edge}: {stall.get('reason')}")
        jitters = [m["interval_ms"]["p99"] - m["interval_ms"]["p50"] for n, m in stages.items()
                   if self.kinds[n] == "capture" and m["interval_ms"]]
        windows = {k: _percentiles(v) for k, v in self.window.items()}
        for values in self.window.values():
            values.clear()
        sources = {src: {**per.window(now), "drops": self.source_drops(src)}
                   for src, per in sorted(self.sources.items())}
        return {"schema": 1, "type": "status", "pipeline": self.name,
                "elapsed_s": round(now - self.started, 3),
                "stages": stages,
                "latency_ms": windows["latency"],
                "frame_age_ms": windows["frame_age"],
                "capture_jitter_ms": round(max(jitters), 3) if jitters else None,
                "sources": sources,
                "totals": self.totals(),
                "health": self.health.read(),
                "top": self.last_top,
                "model": self.model}

    def _stage_status(self, stage: str, now: float) -> dict[str, Any]:
        """One stage's entry in `status`."""
        m = self.latest.get(stage, {})
        ready = self.ready.get(stage, {})
        age = now - self.seen[stage] if stage in self.seen else None
        heard = self.heard.get(stage)
        fps_in, fps_out = self.rate.get(stage, (0.0, 0.0))
        return {
            "state": ("restarting" if stage in self.down else
                      "starting" if stage not in self.seen else
                      "stalled" if age is not None and age > self.STALLED_AFTER_S else
                      "reconnecting" if m.get("source_state") == "reconnecting" else "running"),
            "reconnects": m.get("reconnects", 0),
            "pid": ready.get("pid"),
            "cores": ready.get("cores"),
            "threads": m.get("threads"),
            # the ready message tells it too: there before the first stats and while restarting
            **({"runtime": m.get("runtime") or ready.get("runtime")}
               if self.kinds[stage] == "inference" else {}),
            **({"on_demand": ready["on_demand"]} if "on_demand" in ready else {}),
            "fps_in": round(fps_in, 2),
            "fps_out": round(fps_out, 2),
            "service_ms": m.get("service_ms") or {},
            "queue": m.get("queue") or {},
            "queue_hwm": m.get("queue_hwm", 0),
            "in_use": m.get("in_use", {}),
            "interval_ms": m.get("interval_ms") or {},
            "drops": m.get("drops", {}),
            "frames_in": self.counter(stage, "frames_in"),
            "frames_out": self.counter(stage, "frames_out"),
            "heartbeat_age_s": round(now - heard, 2) if heard is not None else None,
            "restarts": self.restarts[stage],
            "last_failure": self.down.get(stage),
            **self._process(stage),
        }

    def _refused_connections(self) -> dict[str, int]:
        """Connections the stages' edges refused (processes that are not the edge's stages)."""
        refused: dict[str, int] = {}
        for m in [*self.latest.values(), *self.carried.values()]:
            for edge, n in m.get("refused", {}).items():
                refused[f"connection to {edge}"] = refused.get(f"connection to {edge}", 0) + n
        return refused

    def totals(self) -> dict[str, Any]:
        drops: dict[str, dict[str, int]] = {}
        for m in [*self.latest.values(), *self.carried.values()]:
            _merge_drops(drops, m.get("drops", {}))
        def total(kind: str, key: str) -> int:
            return sum(self.counter(stage, key) for stage in self.of_kind(kind))

        return {
            "captured": total("capture", "frames_in"),
            "preprocessed": total("preprocess", "frames_out"),
            "classified": total("inference", "frames_out"),
            "restarts": dict(self.restarts),
            "results": self.results,
            "drops": drops,
        }

    def summary(self, reason: str, failure: str | None = None) -> dict[str, Any]:
        totals = self.totals()
        span = self.last_result - self.first_result
        return {
            "pipeline": self.name,
            "stopped_by": reason,
            "failure": failure,
            "duration_s": round((self.stopped or time.monotonic()) - self.started, 3),
            "frames": {k: totals[k] for k in ("captured", "preprocessed", "classified")},
            "results_received": self.results,
            "results_issued": self.results_issued,
            "results_dropped": self.results_dropped,
            "results_unrecorded": self.results_unrecorded,
            "drops": totals["drops"],
            "fps": round((self.results - 1) / span, 2) if self.results > 1 and span > 0 else 0.0,
            "latency_ms": self.latency.summary(),
            "frame_age_ms": self.frame_age.summary(),
            "service_ms": {s: self.latest[s]["service_run_ms"] for s in self.kinds
                           if "service_run_ms" in self.latest.get(s, {})},
            "capture_interval_ms": next((self.latest.get(s, {}).get("interval_run_ms", {})
                                         for s in self.of_kind("capture")), {}),
            "sources": {src: {**per.summary(), "drops": self.source_drops(src)}
                        for src, per in sorted(self.sources.items())},
            "tcp": {s: {k: self.latest[s][k] for k in ("tx_bytes", "tx_frames", "encode_ms")}
                    for s in self.of_kind("capture") if "tx_bytes" in self.latest.get(s, {})},
            "rejected_messages": {**self.rejected, **self._refused_connections()},
            "restarts": dict(self.restarts),
            "model": next(({k: r.get(k) for k in ("model", "runtime", "engine", "threads", "plan")}
                           for s, r in self.ready.items() if self.kinds[s] == "inference"), None),
        }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def rank(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, math.ceil(len(v) * q) - 1))], 3)

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": round(v[-1], 3),
            "count": len(v)}


class SourceReport:
    """One source's results: fps and end-to-end latency, per second and over the run."""

    def __init__(self) -> None:
        self.latency = Histogram()
        self.recent: list[float] = []
        self.first = self.last = 0.0
        self.count = 0
        self._window_start: float | None = None

    def add(self, now: float, latency_ms: float) -> None:
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1
        self.latency.add(latency_ms)
        self.recent.append(latency_ms)

    def window(self, now: float) -> dict[str, Any]:
        """fps and latency since the previous call."""
        span = now - self._window_start if self._window_start is not None else 1.0
        self._window_start = now
        out = {"fps": round(len(self.recent) / span, 2) if span > 0 else 0.0,
               "latency_ms": _percentiles(self.recent)}
        self.recent = []
        return out

    def summary(self) -> dict[str, Any]:
        span = self.last - self.first
        return {"results": self.count,
                "fps": round((self.count - 1) / span, 2) if self.count > 1 and span > 0 else 0.0,
                "latency_ms": self.latency.summary()}

"""What the supervisor tells the user: a status line per stage each second, a summary at exit.

`RunReport` folds the stages' stats messages and the result stream into one picture; the same
dict feeds the printed summary and `--summary-json`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from .runtime import STAGES
from .stats import Histogram


def _merge_drops(into: dict[str, dict[str, int]], drops: dict[str, dict[str, int]]) -> None:
    for edge, reasons in drops.items():
        slot = into.setdefault(edge, {})
        for reason, n in reasons.items():
            slot[reason] = slot.get(reason, 0) + int(n)


class RunReport:
    def __init__(self, name: str):
        self.name = name
        self.latest: dict[str, dict[str, Any]] = {}  # last stats message per stage
        self._prev: dict[str, tuple[float, int]] = {}
        self.fps: dict[str, float] = {s: 0.0 for s in STAGES}
        self.latency = Histogram()  # end-to-end, capture -> result, ms
        self.window_latency: list[float] = []
        self.first_result = self.last_result = 0.0
        self.results = 0
        self.last_top: dict[str, Any] | None = None
        self.started = time.monotonic()
        self.stopped: float | None = None

    def on_stats(self, msg: dict[str, Any]) -> None:
        stage = msg.get("stage")
        if stage not in STAGES:
            return
        now = time.monotonic()
        out = int(msg.get("frames_out", 0))
        if stage in self._prev:
            t0, n0 = self._prev[stage]
            if now > t0:
                self.fps[stage] = (out - n0) / (now - t0)
        self._prev[stage] = (now, out)
        self.latest[stage] = msg

    def on_result(self, msg: dict[str, Any]) -> None:
        now = time.monotonic()
        if not self.results:
            self.first_result = now
        self.last_result = now
        self.results += 1
        ms = float(msg.get("latency_ms", 0.0))
        self.latency.add(ms)
        self.window_latency.append(ms)
        top = msg.get("top") or []
        self.last_top = top[0] if top else None

    def status(self) -> dict[str, Any]:
        """The last second, per stage and end to end; printed as status lines and published to
        subscribers of the status socket. Starts a new one-second window for latency."""
        e2e = sorted(self.window_latency)
        self.window_latency.clear()
        stages = {}
        for stage in STAGES:
            m = self.latest.get(stage)
            if m is None:
                continue
            stages[stage] = {
                "fps": round(self.fps[stage], 2),
                "queue": m.get("queue") or {},
                "service_ms": m.get("service_ms") or {},
                "interval_ms": m.get("interval_ms") or {},
                "drops": m.get("drops", {}),
            }
        latency = {}
        if e2e:
            latency = {"p50": e2e[len(e2e) // 2],
                       "p99": e2e[min(len(e2e) - 1, math.ceil(len(e2e) * 0.99) - 1)],
                       "max": e2e[-1]}
        return {"schema": 1, "type": "status", "pipeline": self.name,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                "stages": stages, "latency_ms": latency, "top": self.last_top}

    def summary(self, reason: str, failure: str | None = None) -> dict[str, Any]:
        frames = {
            "captured": int(self.latest.get("capture", {}).get("frames_in", 0)),
            "preprocessed": int(self.latest.get("preprocess", {}).get("frames_out", 0)),
            "classified": int(self.latest.get("inference", {}).get("frames_out", 0)),
        }
        drops: dict[str, dict[str, int]] = {}
        for m in self.latest.values():
            _merge_drops(drops, m.get("drops", {}))
        span = self.last_result - self.first_result
        return {
            "pipeline": self.name,
            "stopped_by": reason,
            "failure": failure,
            "duration_s": round((self.stopped or time.monotonic()) - self.started, 3),
            "frames": frames,
            "results_received": self.results,
            "drops": drops,
            "fps": round((self.results - 1) / span, 2) if self.results > 1 and span > 0 else 0.0,
            "latency_ms": self.latency.summary(),
            "service_ms": {s: self.latest[s]["service_run_ms"] for s in STAGES
                           if "service_run_ms" in self.latest.get(s, {})},
        }


def format_status(st: dict[str, Any]) -> list[str]:
    lines = []
    for stage in STAGES:
        m = st["stages"].get(stage)
        if m is None:
            lines.append(f"{stage:<10}  (no stats yet)")
            continue
        parts = [f"{stage:<10} {m['fps']:6.1f} fps"]
        if stage != "capture":
            q = m["queue"]
            parts.append(f"queue {q.get('p50', 0):.0f}/max {q.get('max', 0):.0f}")
        for key, label in (("service_ms", "service"), ("interval_ms", "interval")):
            if m[key]:
                parts.append(f"{label} {m[key]['p50']:.1f}/{m[key]['p99']:.1f} ms")
        drops = [f"{r} {n}" for edge in m["drops"].values() for r, n in edge.items() if n]
        parts.append("drops " + (", ".join(drops) if drops else "0"))
        if stage == "inference" and st["latency_ms"]:
            lat = st["latency_ms"]
            parts.append(f"e2e {lat['p50']:.1f}/{lat['p99']:.1f} ms")
            if st["top"]:
                parts.append(f"{st['top']['label']} {st['top']['prob']:.2f}")
        lines.append("  ".join(parts))
    return lines


def format_summary(s: dict[str, Any]) -> str:
    f = s["frames"]
    lines = [
        f"== {s['pipeline']}: stopped by {s['stopped_by']} after {s['duration_s']:.1f} s ==",
        f"frames     captured {f['captured']}, preprocessed {f['preprocessed']}, "
        f"classified {f['classified']}",
    ]
    for edge, reasons in sorted(s["drops"].items()):
        lines.append(f"drops      {edge:<8} " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    lines.append(f"throughput {s['fps']:.1f} fps (results received: {s['results_received']})")
    lat = s["latency_ms"]
    if lat.get("count"):
        lines.append(f"latency    end-to-end p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  "
                     f"p99 {lat['p99']:.1f}  max {lat['max']:.1f} ms")
    for stage, svc in s["service_ms"].items():
        if svc.get("count"):
            lines.append(f"service    {stage:<10} p50 {svc['p50']:.1f}  p99 {svc['p99']:.1f}  "
                         f"max {svc['max']:.1f} ms")
    if s.get("failure"):
        lines.append(f"failure    {s['failure']}")
    return "\n".join(lines)

"""The text the supervisor prints: status lines each second and the summary at exit, made from
the dicts `RunReport` builds (which are also published and written as JSON)."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

UNMEASURED = "—"  # in place of a rate not measured yet (it takes two stats messages, a second)


def format_status(st: dict[str, Any], measured: Container[str] | None = None) -> list[str]:
    """One line per stage for the supervisor's terminal (and one per source when several).
    `measured`: the stages whose rate is known (None: all); the others show no figure."""
    lines = []
    first_inference = next((n for n in st["stages"] if n.split(".")[0] == "inference"), None)
    width = max([10, *map(len, st["stages"]), *(len(s) + 7 for s in st.get("sources", {}))])
    for stage, m in st["stages"].items():
        kind = stage.split(".")[0]
        if m["state"] == "starting":
            lines.append(f"{stage:<{width}}  (no stats yet)")
            continue
        rate = f"{m['fps_out']:6.1f}" if measured is None or stage in measured else f"{UNMEASURED:>6}"
        parts = [f"{stage:<{width}} {rate} fps"]
        if kind != "capture":
            q = m["queue"]
            parts.append(f"queue {q.get('p50', 0):.0f}/max {q.get('max', 0):.0f}")
        for key, label in (("service_ms", "service"), ("interval_ms", "interval")):
            if m[key]:
                parts.append(f"{label} {m[key]['p50']:.1f}/{m[key]['p99']:.1f} ms")
        drops = [f"{r} {n}" for edge in m["drops"].values() for r, n in edge.items() if n]
        parts.append("drops " + (", ".join(drops) if drops else "0"))
        if m["state"] == "stalled":
            age = m["heartbeat_age_s"]  # None: no stats since its process started
            parts.append(f"STALLED ({m['stall_reason']})" if "stall_reason" in m else
                         f"STALLED (no report for {age:.0f} s)" if age is not None else
                         "STALLED (no report since it started)")
        if stage == first_inference and st["latency_ms"]:
            lat = st["latency_ms"]
            parts.append(f"e2e {lat['p50']:.1f}/{lat['p99']:.1f} ms")
            if st["top"]:
                parts.append(f"{st['top']['label']} {st['top']['prob']:.2f}")
        lines.append("  ".join(parts))
    if len(st.get("sources", {})) > 1:
        for src, m in st["sources"].items():
            lat = m["latency_ms"]
            e2e = f"e2e {lat['p50']:.1f}/{lat['p99']:.1f} ms" if lat else "no results"
            drops = sum(n for reasons in m["drops"].values() for n in reasons.values())
            lines.append(f"{'source ' + src:<{width}} {m['fps']:6.1f} fps  {e2e}  drops {drops}")
    return lines


def results_per_second(st: dict[str, Any]) -> float:
    """Results per second over the last second, all sources."""
    return sum(m.get("fps") or 0.0 for m in st.get("sources", {}).values() if isinstance(m, dict))


def total_drops(st: dict[str, Any]) -> int:
    """Frames dropped since the start, every edge and reason."""
    return sum(n for edge in st.get("totals", {}).get("drops", {}).values() for n in edge.values())


def status_line(st: dict[str, Any]) -> str:
    """The whole pipeline in one line: results per second, end-to-end latency, drops so far,
    stages that are not running, the newest top-1 (systemd's STATUS=, a journal line)."""
    fps, drops = results_per_second(st), total_drops(st)
    lat = st.get("latency_ms") or {}
    parts = [f"{fps:.1f} fps",
             f"latency {lat['p50']:.1f}/{lat['p99']:.1f} ms" if lat else "no results",
             f"drops {drops}"]
    parts += [f"{stage} {m['state']}" for stage, m in st["stages"].items() if m["state"] != "running"]
    if st.get("top"):
        parts.append(f"{st['top']['label']} {st['top']['prob']:.2f}")
    if st.get("model"):
        parts.append(f"model {st['model']['name']}")
    return ", ".join(parts)


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
    if s.get("results_dropped") or s.get("results_unrecorded"):
        lines.append(f"results    {s['results_dropped']} dropped before publication, "
                     f"{s['results_unrecorded']} published but not recorded")
    if s.get("rejected_messages"):
        lines.append("rejected   " + ", ".join(f"{kind} {n}" for kind, n
                                               in sorted(s["rejected_messages"].items())))
    lat = s["latency_ms"]
    if lat.get("count"):
        lines.append(f"latency    end-to-end p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  "
                     f"p99 {lat['p99']:.1f}  max {lat['max']:.1f} ms")
    if len(s.get("sources", {})) > 1:
        for src, m in s["sources"].items():
            lat = m["latency_ms"]
            lines.append(f"source     {src:<10} {m['fps']:.1f} fps, {m['results']} results"
                         + (f", e2e p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f} ms" if lat.get("count")
                            else ""))
    for stage, svc in s["service_ms"].items():
        if svc.get("count"):
            lines.append(f"service    {stage:<10} p50 {svc['p50']:.1f}  p99 {svc['p99']:.1f}  "
                         f"max {svc['max']:.1f} ms")
    if s.get("failure"):
        lines.append(f"failure    {s['failure']}")
    return "\n".join(lines)

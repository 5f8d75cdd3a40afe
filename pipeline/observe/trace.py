"""A recording of results as a trace: Chrome trace-event JSON (Perfetto, chrome://tracing) with a
track per stage process, and a PNG plot of latency, service times and queue depths over time.
Recorded by `pipeline-trace` (pipeline/cli/trace.py).
"""

from __future__ import annotations

from typing import Any

from pipeline.transport.messages import SPANS


def chrome_trace(info: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Trace-event JSON: one process track per stage process (per source, per worker), one
    complete ("X") slice per frame per stage, and queue-depth counters ("C") where each stage
    took its frame."""
    t0 = min((r["t"].get("capture_start", r["t"]["capture"]) for r in rows), default=0)
    stage_pids = info.get("stage_pids", {})

    def us(ns: int) -> float:
        return round((ns - t0) / 1000, 3)

    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}

    def track(kind: str, r: dict[str, Any]) -> int:
        """The process track of the stage that handled this frame."""
        name = r.get("worker", kind) if kind == "inference" else kind
        if f"{kind}.{r.get('source')}" in stage_pids:  # one capture and preprocess per source
            name = f"{kind}.{r['source']}"
        if name not in pids:
            pid = pids[name] = stage_pids.get(name) or 100000 + len(pids)
            order = [k for k, _, _ in SPANS].index(kind)
            events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": pid,
                           "args": {"name": f"{name} (pid {pid})"}})
            events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": pid,
                           "args": {"sort_index": 100 * order + len(pids)}})
        return pids[name]

    for r in rows:
        t = r["t"]
        label = r["top"][0]["label"] if r.get("top") else ""
        for stage, start, end in SPANS:
            if start not in t:
                continue
            pid = track(stage, r)
            events.append({"ph": "X", "name": f"frame {r['seq']}", "cat": stage, "pid": pid,
                           "tid": pid, "ts": us(t[start]), "dur": us(t[end]) - us(t[start]),
                           "args": {"seq": r["seq"], "source": r.get("source"), "label": label,
                                    "latency_ms": r["latency_ms"]}})
        for stage, key in (("preprocess", "preprocess_start"), ("inference", "inference_start")):
            depth = r.get("queue", {}).get(stage)
            if depth is not None:
                events.append({"ph": "C", "name": "queue depth", "pid": track(stage, r),
                               "ts": us(t[key]), "args": {"frames waiting": depth}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"pipeline": info["name"], "frames": len(rows),
                          "results_missed": info.get("missed", 0)}}


def plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    """Latency and service time over time, queue depth over time, latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t0 = rows[0]["t"]["capture"] if rows else 0
    when = np.array([(r["t"]["inference_end"] - t0) / 1e9 for r in rows])
    e2e = np.array([r["latency_ms"] for r in rows])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    fig.suptitle(f"{title}: {len(rows)} frames")
    ax = axes[0, 0]
    ax.plot(when, e2e, ".-", ms=3, lw=0.8, label="end-to-end (capture to result)")
    ax.set(title="End-to-end latency", xlabel="time (s)", ylabel="latency (ms)")
    ax.legend(loc="upper right")
    ax = axes[0, 1]
    for stage, start, end in SPANS:
        values = [(r["t"][end] - r["t"][start]) / 1e6 if start in r["t"] else np.nan for r in rows]
        ax.plot(when, values, ".-", ms=3, lw=0.8, label=stage)
    ax.set(title="Service time per stage", xlabel="time (s)", ylabel="time per frame (ms)")
    ax.legend(loc="upper right")
    queue_panel(axes[1, 0], when, rows)
    ax = axes[1, 1]
    if len(e2e):
        ax.hist(e2e, bins=40, color="tab:blue", alpha=0.8, label="frames")
        for q, style in ((50, "--"), (99, ":")):
            v = float(np.percentile(e2e, q))
            ax.axvline(v, color="k", ls=style, label=f"p{q} {v:.1f} ms")
    ax.set(title="End-to-end latency distribution", xlabel="latency (ms)", ylabel="frames")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


NO_QUEUEING = "no queueing: every frame was taken as soon as it was ready"


def queue_panel(ax: Any, when: Any, rows: list[dict[str, Any]]) -> None:
    """The frames waiting on each edge when a stage took one, on a 0-based frame axis (an
    empty or all-zero panel says there was no queueing instead of spanning -0.04..0.04)."""
    peak = 0
    for stage in ("preprocess", "inference"):
        depths = [r.get("queue", {}).get(stage, 0) for r in rows]
        peak = max([peak, *depths])
        ax.step(when, depths, where="post", label=f"waiting for {stage}")
    ax.set(title="Input queue depth when a frame was taken", xlabel="time (s)",
           ylabel="frames waiting")
    ax.set_ylim(0, 1 if peak == 0 else peak * 1.1)
    ax.yaxis.get_major_locator().set_params(integer=True)
    if peak == 0:
        ax.text(0.5, 0.5, NO_QUEUEING, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.legend(loc="upper right")

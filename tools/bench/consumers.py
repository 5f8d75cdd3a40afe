"""Do consumers cost the pipeline anything? Throughput with 0, 1 and 10 attached consumers, and
how long a result takes from publication to a subscriber (delivery latency), in one run.

    .venv/bin/python -m tools.bench.consumers [--duration 15] [--json out.json]

Each run plays the bottle clip as fast as possible (loop) through configs/video.toml. With
N consumers, N-1 are `jsonl` consumers writing to /dev/null, started with the pipeline, and one is
this script, subscribed through `pipeline.attach`, timing each result's arrival against the
inference stage's publish timestamp (`t.inference_end`, the same CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tools.assets import CONFIGS, ROOT, WEIGHTS, default_video, missing

VIDEO = default_video()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else 0.0


def measure_delivery(name: str, stop: threading.Event, out: list[float]) -> None:
    from pipeline import attach
    from pipeline.transport.rundir import NotRunning

    while not stop.is_set():
        try:
            sub = attach(name)
            break
        except NotRunning:
            time.sleep(0.1)
    else:
        return
    with sub:
        while not stop.is_set():
            r = sub.receive(timeout=0.5)
            if r is not None:
                out.append((time.monotonic_ns() - r.timestamps["inference_end"]) / 1e6)
            elif sub.ended:
                return


def run(consumers: int, duration: float) -> dict:
    name = f"benchc{consumers}"
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        sets = [f"source.path={VIDEO}", f"model.weights={WEIGHTS}", "source.loop=true",
                "source.realtime=false"]
        if consumers > 1:
            table = ", ".join('{kind="jsonl", out="/dev/null"}' for _ in range(consumers - 1))
            sets.append(f"consumers=[{table}]")
        cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"),
               "--name", name, "--quiet", "--duration", str(duration), "--summary-json", str(summary)]
        for s in sets:
            cmd += ["--set", s]
        delivery: list[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=measure_delivery, args=(name, stop, delivery), daemon=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if consumers:
            thread.start()
        _, err = proc.communicate()
        stop.set()
        if proc.returncode != 0:
            sys.exit(f"pipeline failed: {err.strip().splitlines()[-1]}")
        s = json.loads(summary.read_text())
    return {"consumers": consumers, "fps": s["fps"], "results": s["results_received"],
            "delivery_ms": {"count": len(delivery), "p50": percentile(delivery, 50),
                            "p99": percentile(delivery, 99)} if delivery else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    for p in missing(VIDEO):
        print(f"tools.bench.consumers: missing asset {p}", file=sys.stderr)
        return 2
    rows = []
    for n in (0, 1, 10):
        print(f"running with {n} consumer(s) ...", file=sys.stderr, flush=True)
        rows.append(run(n, args.duration))
    base = rows[0]["fps"]
    print(f"{'consumers':>9} {'fps':>7} {'vs none':>8} {'delivery p50':>13} {'p99':>8}")
    for r in rows:
        d = r["delivery_ms"]
        lat = f"{d['p50']:10.2f} ms {d['p99']:6.2f} ms" if d else f"{'-':>13} {'-':>8}"
        print(f"{r['consumers']:>9} {r['fps']:7.1f} {r['fps'] / base:8.3f} {lat}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

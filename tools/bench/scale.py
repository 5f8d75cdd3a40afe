"""Scaling benchmark: a sources x workers grid, and the cost of the tcp frames edge.

    .venv/bin/python -m tools.bench.scale [--duration 10] [--sources 1,2,4] [--workers 1,2]
                                          [--runtime onnxruntime] [--batching] [--json out.json]
                                          [--markdown]

Grid: N live 30 fps video sources (the asset videos, looping, paced at 30 fps like cameras) into
W inference workers running the shipped model in `--runtime`; one worker gets core 1, two get
one core each; capture and preprocess on core 0. Printed per run: total results per second, the
share of the sources' frames classified, the worst source's fps and end-to-end p99, drops, CPU,
memory (all processes, and the largest inference worker alone).

Tcp edge: one 30 fps source with the frames edge over shared memory (the baseline, same run),
then over ZeroMQ TCP on loopback, raw and JPEG at quality 90 and 75: bytes per frame, the link
bandwidth at 30 fps, and end-to-end latency against the baseline.

Batching (`--batching`): the model's time per frame at batch 1, 2 and 4 on one core, which is
what micro-batching frames of several sources could gain (torch).

`--markdown` prints the grid and the tcp edge as markdown tables for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.assets import ROOT, SCALE_VIDEOS, WEIGHTS, missing
from tools.bench.kit import markdown
from tools.bench.kit.common import child_env, progress, spread
from tools.bench.kit.pipeline_run import run_pipeline

SOURCE_FPS = 30.0
RUNTIMES = ("onnxruntime", "torch")


def topology(path: Path, sources: int, workers: int, runtime: str, extra: str = "") -> Path:
    lines = ['name = "bench-scale"']
    for i in range(sources):
        video = SCALE_VIDEOS[i % len(SCALE_VIDEOS)]
        lines += ["[[sources]]", 'kind = "video"', f'id = "cam{i + 1}"', f'path = "{video}"',
                  "loop = true", "realtime = true", f"fps = {SOURCE_FPS}"]
    cores = [1] if workers == 1 else [0, 1]
    lines += ["[capture]", "cores = [0]", "[preprocess]", "cores = [0]",
              "[inference]", f"cores = {cores}", f"workers = {workers}", "threads = 1",
              "[model]", 'weights = "builtin"', f'runtime = "{runtime}"', 'engine = "qnnpack"', extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def per_source(results: list[dict[str, Any]], wall: float) -> dict[str, dict[str, Any]]:
    out: dict[str, list[float]] = {}
    for r in results:
        out.setdefault(r["source"], []).append((r["t"]["inference_end"] - r["t"]["capture_start"]) / 1e6)
    return {src: {"fps": round(len(v) / wall, 2), "latency_ms": spread(v)} for src, v in out.items()}


def grid(duration: float, sources: list[int], workers: list[int], runtime: str,
         tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sources:
        for w in workers:
            progress(f"grid: {n} source(s) x {w} worker(s) ...")
            run = run_pipeline(topology(tmp / f"g{n}x{w}.toml", n, w, runtime), [], duration)
            srcs = per_source(run["results"], duration)
            worst = min(srcs.values(), key=lambda m: m["fps"]) if srcs else {"fps": 0, "latency_ms": {}}
            drops = sum(c for edge in run["drops"].values() for c in edge.values())
            rows.append({"sources": n, "workers": w, "fps": run["fps"],
                         "served": round(run["fps"] / (n * SOURCE_FPS), 3),
                         "worst_source_fps": worst["fps"],
                         "worst_p99_ms": max(m["latency_ms"]["p99"] for m in srcs.values()),
                         "p50_ms": run["latency_ms"]["p50"], "drops": drops,
                         "cpu_pct": run["cpu_pct"], "rss_mb": run["rss_mb"],
                         "inference_rss_mb": run["inference_rss_mb"], "per_source": srcs})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_edge(duration: float, runtime: str, tmp: Path) -> list[dict[str, Any]]:
    cases = [("shared memory", "")]
    for encoding, quality in (("raw", 90), ("jpeg", 90), ("jpeg", 75)):
        port = free_port()
        cases.append((f"tcp {encoding}" + (f" q{quality}" if encoding == "jpeg" else ""),
                      f'[edges.frames]\nbind = "tcp://127.0.0.1:{port}"\n'
                      f'connect = "tcp://127.0.0.1:{port}"\nencoding = "{encoding}"\n'
                      f"quality = {quality}"))
    rows = []
    for label, extra in cases:
        progress(f"tcp edge: {label} ...")
        cfg = topology(tmp / f"t{len(rows)}.toml", 1, 1, runtime, extra)
        summary_run = run_pipeline(cfg, [], duration)
        tcp = next(iter(summary_run.get("tcp", {}).values()), None)
        per_frame = tcp["tx_bytes"] / tcp["tx_frames"] if tcp and tcp["tx_frames"] else 0.0
        rows.append({"edge": label, "fps": summary_run["fps"], "latency_ms": summary_run["latency_ms"],
                     "bytes_per_frame": round(per_frame),
                     "mbit_s_at_30fps": round(per_frame * SOURCE_FPS * 8 / 1e6, 1),
                     "encode_ms": round(tcp["encode_ms"] / tcp["tx_frames"], 2)
                     if tcp and tcp["tx_frames"] else 0.0,
                     "cpu_pct": summary_run["cpu_pct"]})
    base = rows[0]["latency_ms"]
    for r in rows:
        r["extra_p50_ms"] = round(r["latency_ms"]["p50"] - base["p50"], 2)
        r["extra_p99_ms"] = round(r["latency_ms"]["p99"] - base["p99"], 2)
    return rows


def batching() -> dict[str, float]:
    progress("batching: model alone at batch 1, 2, 4 on core 1 ...")
    out = subprocess.run([sys.executable, "-m", "tools.bench.kit.batching", "1", str(WEIGHTS)], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"tools.bench.scale: batching run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.scale", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--sources", default="1,2,4", help="source counts of the grid")
    ap.add_argument("--workers", default="1,2", help="worker counts of the grid")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--runtime", choices=RUNTIMES, default=RUNTIMES[0],
                    help="the workers' runtime (default: %(default)s)")
    ap.add_argument("--batching", action="store_true", help="also time the model at batch 1, 2, 4")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--markdown", action="store_true",
                    help="print the tables as markdown, each row with its runtime, date and machine")
    args = ap.parse_args(argv)
    try:
        sources = [int(x) for x in args.sources.split(",")]
        workers = [int(x) for x in args.workers.split(",")]
    except ValueError:
        ap.error("--sources and --workers take comma-separated integers, e.g. 1,2,4")
    absent = missing(*SCALE_VIDEOS)
    if absent:
        print(f"tools.bench.scale: test assets missing: {', '.join(map(str, absent))} (see "
              "../shared/assets/README.md)", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if not args.no_grid:
            out["grid"] = grid(args.duration, sources, workers, args.runtime, Path(tmp))
        if not args.no_tcp:
            out["tcp"] = tcp_edge(args.duration, args.runtime, Path(tmp))
        if args.batching:
            out["batching_ms_per_frame"] = batching()
    out["runtime"] = args.runtime
    print("\n".join(markdown_tables(out) if args.markdown else text_tables(out, args.duration)))
    if args.json:
        for r in out.get("grid", []):
            r.pop("results", None)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def markdown_tables(out: dict[str, Any]) -> list[str]:
    """The grid and the tcp edge as markdown tables, every row with its runtime, date, machine."""
    lines: list[str] = []
    where = markdown.provenance(out["runtime"])
    if "grid" in out:
        rows = [[r["sources"], r["workers"], f"{r['fps']:.1f}", f"{r['served']:.0%}",
                 f"{r['worst_source_fps']:.1f}", f"{r['worst_p99_ms']:.1f}", f"{r['p50_ms']:.1f}",
                 f"{r['cpu_pct']:.0f}", f"{r['rss_mb']:.0f}", f"{r['inference_rss_mb']:.0f}", *where]
                for r in out["grid"]]
        lines += ["", markdown.table(["sources", "workers", "results/s", "frames served",
                                      "worst source fps", "worst source p99 ms", "e2e p50 ms", "CPU %",
                                      "RSS MB (all)", "largest worker MB", *markdown.PROVENANCE], rows)]
    if "tcp" in out:
        rows = []
        for r in out["tcp"]:
            shm = r["edge"] == "shared memory"
            lat = r["latency_ms"]
            rows.append([r["edge"], "–" if shm else f"{r['bytes_per_frame']:,}".replace(",", " "),
                         "–" if shm else f"{r['mbit_s_at_30fps']:g} Mbit/s",
                         f"{r['encode_ms']:.2f}" if r["encode_ms"] else "–",
                         f"{lat['p50']:.1f} / {lat['p99']:.1f}",
                         "–" if shm else f"{r['extra_p50_ms']:+.1f} / {r['extra_p99_ms']:+.1f}", *where])
        lines += ["", markdown.table(["frames edge", "bytes per frame", "link at 30 fps", "encode ms",
                                      "e2e p50 / p99 ms", "extra p50 / p99 ms", *markdown.PROVENANCE],
                                     rows)]
    if "batching_ms_per_frame" in out:
        per = out["batching_ms_per_frame"]
        lines += ["", markdown.table(["batch", "model ms per frame, one core", *markdown.PROVENANCE],
                                     [[b, f"{ms:.2f}", *markdown.provenance("torch")]
                                      for b, ms in per.items()])]
    return lines


def text_tables(out: dict[str, Any], duration: float) -> list[str]:
    lines: list[str] = []
    if "grid" in out:
        lines += [f"\nSources x workers ({SOURCE_FPS:g} fps per source, {duration:g} s each, "
                  f"{out['runtime']})",
                  f"{'sources':>7} {'workers':>7} {'fps':>6} {'served':>6} {'worst src fps':>13} "
                  f"{'worst p99 ms':>12} {'e2e p50':>7} {'drops':>6} {'CPU %':>6} {'RSS MB':>7} "
                  f"{'inf MB':>7}"]
        lines += [f"{r['sources']:>7} {r['workers']:>7} {r['fps']:>6.1f} {r['served']:>6.0%} "
                  f"{r['worst_source_fps']:>13.1f} {r['worst_p99_ms']:>12.1f} {r['p50_ms']:>7.1f} "
                  f"{r['drops']:>6} {r['cpu_pct']:>6.0f} {r['rss_mb']:>7.0f} {r['inference_rss_mb']:>7.0f}"
                  for r in out["grid"]]
    if "tcp" in out:
        lines += [f"\nFrames edge: shared memory vs tcp (1 source, {SOURCE_FPS:g} fps, loopback)",
                  f"{'edge':<14} {'fps':>5} {'bytes/frame':>11} {'Mbit/s':>7} {'encode ms':>9} "
                  f"{'e2e p50':>7} {'p99':>6} {'+p50':>6} {'+p99':>6} {'CPU %':>6}"]
        lines += [f"{r['edge']:<14} {r['fps']:>5.1f} {r['bytes_per_frame']:>11} "
                  f"{r['mbit_s_at_30fps']:>7.1f} {r['encode_ms']:>9.2f} {r['latency_ms']['p50']:>7.1f} "
                  f"{r['latency_ms']['p99']:>6.1f} {r['extra_p50_ms']:>+6.1f} {r['extra_p99_ms']:>+6.1f} "
                  f"{r['cpu_pct']:>6.0f}" for r in out["tcp"]]
    if "batching_ms_per_frame" in out:
        per = out["batching_ms_per_frame"]
        lines.append("\nMicro-batching (model alone, one core): ms per frame "
                     + ", ".join(f"batch {b}: {ms:.2f}" for b, ms in per.items())
                     + f"; batch 4 saves {100 * (1 - per['4'] / per['1']):.1f}% per frame "
                       f"and holds each frame {4 * per['4'] - per['1']:.0f} ms longer")
    return lines


if __name__ == "__main__":
    sys.exit(main())

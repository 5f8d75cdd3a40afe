"""Scaling benchmark: a sources x workers grid, and the cost of the tcp frames edge.

    python tools/bench_scale.py [--duration 10] [--sources 1,2,4] [--workers 1,2] [--batching]
                                [--json out.json]

Grid: N live 30 fps video sources (the asset videos, looping, paced at their own rate like
cameras) into W inference workers; one worker gets core 1 (the shipped layout), two get one core
each. Printed per run: total results per second, the share of the sources' frames classified,
the worst source's fps and end-to-end p99, drops, CPU and memory.

Tcp edge: one 30 fps source with the frames edge over shared memory (the baseline, same run),
then over ZeroMQ TCP on loopback, raw and JPEG at quality 90 and 75: bytes per frame, the link
bandwidth at 30 fps, and end-to-end latency against the baseline.

Batching (`--batching`): the model's time per frame at batch 1, 2 and 4 on one core, which is
what micro-batching frames of several sources could gain.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.common import ASSETS, DEFAULT_WEIGHTS, ROOT, child_env, progress, spread  # noqa: E402
from benchkit.pipeline_run import run_pipeline  # noqa: E402

VIDEOS = ["bottle-detection.mp4", "car-detection.mp4", "one-by-one-person-detection.mp4", "vtest.avi"]
SOURCE_FPS = 30.0


def topology(path: Path, sources: int, workers: int, extra: str = "") -> Path:
    lines = ['name = "bench-scale"']
    for i in range(sources):
        video = ASSETS / "video" / VIDEOS[i % len(VIDEOS)]
        lines += ["[[sources]]", 'kind = "video"', f'id = "cam{i + 1}"', f'path = "{video}"',
                  "loop = true", "realtime = true", f"fps = {SOURCE_FPS}"]
    cores = [1] if workers == 1 else [0, 1]
    lines += ["[capture]", "cores = [0]", "[preprocess]", "cores = [0]",
              "[inference]", f"cores = {cores}", f"workers = {workers}", "threads = 1",
              "[model]", f'weights = "{DEFAULT_WEIGHTS}"', 'engine = "qnnpack"', extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def per_source(results: list[dict[str, Any]], wall: float) -> dict[str, dict[str, Any]]:
    out: dict[str, list[float]] = {}
    for r in results:
        out.setdefault(r["source"], []).append((r["t"]["inference_end"] - r["t"]["capture_start"]) / 1e6)
    return {src: {"fps": round(len(v) / wall, 2), "latency_ms": spread(v)} for src, v in out.items()}


def grid(duration: float, sources: list[int], workers: list[int], tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for n in sources:
        for w in workers:
            progress(f"grid: {n} source(s) x {w} worker(s) ...")
            run = run_pipeline(topology(tmp / f"g{n}x{w}.toml", n, w), [], duration)
            srcs = per_source(run["results"], duration)
            worst = min(srcs.values(), key=lambda m: m["fps"]) if srcs else {"fps": 0, "latency_ms": {}}
            drops = sum(c for edge in run["drops"].values() for c in edge.values())
            rows.append({"sources": n, "workers": w, "fps": run["fps"],
                         "served": round(run["fps"] / (n * SOURCE_FPS), 3),
                         "worst_source_fps": worst["fps"],
                         "worst_p99_ms": max(m["latency_ms"]["p99"] for m in srcs.values()),
                         "p50_ms": run["latency_ms"]["p50"], "drops": drops,
                         "cpu_pct": run["cpu_pct"], "rss_mb": run["rss_mb"], "per_source": srcs})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp_edge(duration: float, tmp: Path) -> list[dict[str, Any]]:
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
        cfg = topology(tmp / f"t{len(rows)}.toml", 1, 1, extra)
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
    child = ROOT / "tools" / "benchkit" / "batching.py"
    out = subprocess.run([sys.executable, str(child), "1", str(DEFAULT_WEIGHTS)], cwd=ROOT,
                         env=child_env(), capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"bench_scale.py: batching run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_scale.py", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    ap.add_argument("--sources", default="1,2,4", help="source counts of the grid")
    ap.add_argument("--workers", default="1,2", help="worker counts of the grid")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--batching", action="store_true", help="also time the model at batch 1, 2, 4")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    try:
        sources = [int(x) for x in args.sources.split(",")]
        workers = [int(x) for x in args.workers.split(",")]
    except ValueError:
        ap.error("--sources and --workers take comma-separated integers, e.g. 1,2,4")
    if not DEFAULT_WEIGHTS.exists() or not all((ASSETS / "video" / v).exists() for v in VIDEOS):
        print(f"bench_scale.py: test assets missing under {ASSETS} (see its README)", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if not args.no_grid:
            out["grid"] = grid(args.duration, sources, workers, Path(tmp))
        if not args.no_tcp:
            out["tcp"] = tcp_edge(args.duration, Path(tmp))
        if args.batching:
            out["batching_ms_per_frame"] = batching()
    if "grid" in out:
        print(f"\nSources x workers ({SOURCE_FPS:g} fps per source, {args.duration:g} s each)")
        print(f"{'sources':>7} {'workers':>7} {'fps':>6} {'served':>6} {'worst src fps':>13} "
              f"{'worst p99 ms':>12} {'e2e p50':>7} {'drops':>6} {'CPU %':>6} {'RSS MB':>7}")
        for r in out["grid"]:
            print(f"{r['sources']:>7} {r['workers']:>7} {r['fps']:>6.1f} {r['served']:>6.0%} "
                  f"{r['worst_source_fps']:>13.1f} {r['worst_p99_ms']:>12.1f} {r['p50_ms']:>7.1f} "
                  f"{r['drops']:>6} {r['cpu_pct']:>6.0f} {r['rss_mb']:>7.0f}")
    if "tcp" in out:
        print(f"\nFrames edge: shared memory vs tcp (1 source, {SOURCE_FPS:g} fps, loopback)")
        print(f"{'edge':<14} {'fps':>5} {'bytes/frame':>11} {'Mbit/s':>7} {'encode ms':>9} "
              f"{'e2e p50':>7} {'p99':>6} {'+p50':>6} {'+p99':>6} {'CPU %':>6}")
        for r in out["tcp"]:
            lat = r["latency_ms"]
            print(f"{r['edge']:<14} {r['fps']:>5.1f} {r['bytes_per_frame']:>11} "
                  f"{r['mbit_s_at_30fps']:>7.1f} {r['encode_ms']:>9.2f} {lat['p50']:>7.1f} "
                  f"{lat['p99']:>6.1f} {r['extra_p50_ms']:>+6.1f} {r['extra_p99_ms']:>+6.1f} "
                  f"{r['cpu_pct']:>6.0f}")
    if "batching_ms_per_frame" in out:
        per = out["batching_ms_per_frame"]
        print("\nMicro-batching (model alone, one core): ms per frame "
              + ", ".join(f"batch {b}: {ms:.2f}" for b, ms in per.items())
              + f"; batch 4 saves {100 * (1 - per['4'] / per['1']):.1f}% per frame "
                f"and holds each frame {4 * per['4'] - per['1']:.0f} ms longer")
    if args.json:
        for r in out.get("grid", []):
            r.pop("results", None)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Before/after: the pipeline of another git revision against this working tree, run in turns.

A change that should not cost speed (a refactor) is checked here: the same input, the same
configs, the two trees alternating round by round (before-after, then after-before), so the
machine's drift hits both alike. Prints each run and the median per config and tree;
`--markdown` prints the medians as a markdown table for docs/performance.md.

    .venv/bin/python -m tools.bench.ab --base HEAD~3 --rounds 3 [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.assets import ROOT, default_video
from tools.bench.kit import markdown

CONFIGS = {
    "onnxruntime, fast": ["source.realtime=false"],
    "onnxruntime, 30 fps": ["source.realtime=true", "source.fps=30"],
    "onnxruntime, 2 workers, fast": ["source.realtime=false", "inference.workers=2",
                                     "inference.cores=[0, 1]"],
    "torch, fast": ["source.realtime=false", "model.runtime=torch", "model.weights=builtin"],
    "torch, 30 fps": ["source.realtime=true", "source.fps=30", "model.runtime=torch",
                      "model.weights=builtin"],
}


def entry_point(root: Path) -> str:
    """`pipeline-up`'s module in that tree (it moved once)."""
    return "pipeline.cli.up" if (root / "pipeline" / "cli" / "up.py").exists() else "pipeline.cli"


def onnx_model(root: Path) -> Path:
    return next(root.glob("workers/**/model_files/mobilenet_v2_qnnpack_imagenet1k.onnx"))


def run(root: Path, extra: list[str], video: Path, warmup: float, duration: float) -> dict[str, float]:
    """fps and end-to-end latency of one run, over the results after `warmup` seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        record = Path(tmp) / "results.jsonl"
        cmd = [sys.executable, "-m", entry_point(root), "configs/video.toml", "--quiet",
               "--duration", str(warmup + duration), "--record", str(record),
               "--name", f"ab{abs(hash(root)) % 10000}"]
        for item in [f"source.path={video}", "source.loop=true", "model.runtime=onnxruntime",
                     f"model.weights={onnx_model(root)}", *extra]:
            cmd += ["--set", item]
        p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"bench_ab: the pipeline in {root} failed:\n{p.stderr[-2000:]}")
        rows = [r for r in map(json.loads, record.read_text().splitlines()) if r.get("type") == "result"]
    start = rows[0]["t"]["inference_end"] + warmup * 1e9
    rows = [r for r in rows if r["t"]["inference_end"] >= start]
    if len(rows) < 2:
        raise SystemExit(f"bench_ab: only {len(rows)} results after the warm-up in {root}")
    span = (rows[-1]["t"]["inference_end"] - rows[0]["t"]["inference_end"]) / 1e9
    latency = sorted(r["latency_ms"] for r in rows)

    def rank(q: float) -> float:
        return latency[min(len(latency) - 1, int(q * len(latency)))]

    return {"fps": (len(rows) - 1) / span, "p50": rank(0.5), "p99": rank(0.99)}


def compare(trees: dict[str, Path], configs: dict[str, list[str]], args: argparse.Namespace
            ) -> dict[str, dict[str, list[dict[str, float]]]]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {c: {t: [] for t in trees} for c in configs}
    order = list(trees)
    for i in range(args.rounds):
        for config, extra in configs.items():
            for tree in order if i % 2 == 0 else order[::-1]:
                r = run(trees[tree], extra, args.video, args.warmup, args.duration)
                runs[config][tree].append(r)
                print(f"round {i + 1}  {config:<30} {tree:<7} {r['fps']:7.1f} fps  "
                      f"e2e p50 {r['p50']:6.2f}  p99 {r['p99']:6.2f} ms", flush=True)
    return runs


def summary(runs: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for config, by_tree in runs.items():
        out[config] = {tree: {k: round(statistics.median(r[k] for r in rs), 2) for k in ("fps", "p50", "p99")}
                       for tree, rs in by_tree.items()}
        before, after = out[config]["before"], out[config]["after"]
        out[config]["fps after/before"] = round(after["fps"] / before["fps"], 3)
    return out


def markdown_table(medians: dict[str, Any]) -> str:
    """The medians as a markdown table: a row per config, its runtime named by the config."""
    rows = []
    for config, m in medians.items():
        before, after = m["before"], m["after"]
        rows.append([config, f"{before['fps']:.1f}", f"{after['fps']:.1f}", f"{m['fps after/before']:.2f}",
                     f"{before['p50']:.1f} / {before['p99']:.1f} → {after['p50']:.1f} / {after['p99']:.1f}",
                     *markdown.provenance(config.split(",")[0])])
    return markdown.table(["config", "before fps", "after fps", "after / before",
                           "e2e p50 / p99 ms, before → after", *markdown.PROVENANCE], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the git revision to compare against (before)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every config in both trees (3)")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds counted per run (12)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start (3)")
    ap.add_argument("--video", type=Path, default=default_video(),
                    help="input video (default: %(default)s)")
    ap.add_argument("--only", help="run only the configs whose name contains this")
    ap.add_argument("--json", help="also write the medians here")
    ap.add_argument("--markdown", action="store_true",
                    help="print the medians as a markdown table, each row with its runtime, date, machine")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        ap.error("--rounds must be at least 1, --duration positive, --warmup not negative")
    if not args.video.is_file():
        ap.error(f"--video: no such file: {args.video}")
    configs = {k: v for k, v in CONFIGS.items() if not args.only or args.only in k}
    if not configs:
        ap.error(f"--only {args.only!r} matches none of: {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="bench-ab-base-") as tmp:
        base = Path(tmp) / "before"
        made = subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT,
                              capture_output=True, text=True)
        if made.returncode != 0:
            ap.error(f"--base {args.base}: {made.stderr.strip().splitlines()[-1]}")
        try:
            medians = summary(compare({"before": base, "after": ROOT}, configs, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT,
                           capture_output=True)
    print(f"\nmedians of {args.rounds} round(s), before = {args.base}, after = this tree:")
    for config, m in medians.items():
        for tree in ("before", "after"):
            print(f"{config:<30} {tree:<7} {m[tree]['fps']:7.1f} fps  e2e p50 {m[tree]['p50']:6.2f}  "
                  f"p99 {m[tree]['p99']:6.2f} ms")
        print(f"{config:<30} fps after/before {m['fps after/before']:.3f}")
    if args.markdown:
        print("\n" + markdown_table(medians))
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

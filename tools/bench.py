"""Benchmark the pipeline against the model's ceiling, the tutorial's single loop and a
multiprocessing.Queue pipeline, all in one invocation on the same input, weights and cores.

Why one tool and one run: the machines are shared and noisy, so only figures measured side by
side mean anything. Every run is its own process tree:

  a. model only   - the scripted quantized model in a loop on the inference cores (the ceiling);
  b. tutorial     - the single loop of PyTorch's Raspberry Pi 4 tutorial, torch's default threads;
  c. mp.Queue     - capture, preprocess and inference processes joined by multiprocessing.Queue;
  d. pipeline     - `pipeline-up` with the given config.

b, c and d read the same video, once as fast as possible and once paced at 30 fps like a live
camera (a late reader gets stale frames from a 4-buffer driver queue, as with V4L2).

Options add sections: --spikes (stall, CPU hog, slow model frames, each beside the tutorial),
--tuning (threads, engine, TorchScript, channels-last, uint8 input ring), --adaptive (input size
224/192/160: fps and accuracy, and the controller reacting), --models (the tutorial's model table).

Usage:
    .venv/bin/python tools/bench.py [--duration 15] [--json out.json] [--spikes] [--tuning]
                                    [--adaptive] [--models [--model-names A,B]] [--no-main]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.benchkit.common import (  # noqa: E402
    DEFAULT_VIDEO,
    DEFAULT_WEIGHTS,
    IMAGES,
    PACED_FPS,
    ROOT,
    child_env,
    progress,
)
from tools.benchkit.pipeline_run import run_pipeline  # noqa: E402

CONFIG = ROOT / "configs" / "video.toml"


class Bench:
    """Holds the common settings of one invocation and runs measurements with them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.video, self.weights = str(args.video), str(args.weights)
        self.config = args.config
        self.all_cores = sorted(os.sched_getaffinity(0))
        from pipeline.config import load_config

        cfg = load_config(str(self.config), self.base_overrides(fast=True))
        self.inference_cores = sorted(cfg.cores_of("inference"))
        self.inference_threads = cfg.inference.threads or len(self.inference_cores)
        self.capture_cores = sorted(cfg.cores_of("capture"))

    # -- runs ---------------------------------------------------------------------------------
    def baseline(self, kind: str, cores: list[int] | None = None, **extra: Any) -> dict[str, Any]:
        args = {"cores": cores or self.all_cores, "video": self.video, "weights": self.weights,
                "model": "mobilenet_v2", "duration": self.args.duration, **extra}
        progress(f"    {kind}: {json.dumps({k: v for k, v in extra.items() if k != 'weights'})}")
        cmd = [sys.executable, str(ROOT / "tools" / "benchkit" / "baselines.py"), kind,
               json.dumps(args)]
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=args["duration"] + 600)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"bench: the {kind} run failed (exit code {proc.returncode})")
        return json.loads(lines[-1])

    def model_only(self, **extra: Any) -> dict[str, Any]:
        extra.setdefault("threads", self.inference_threads)
        return self.baseline("model", self.inference_cores, **extra)

    def base_overrides(self, fast: bool) -> list[str]:
        paced = ["source.realtime=false"] if fast else \
            ["source.realtime=true", f"source.fps={PACED_FPS:g}"]
        return [f"source.path={self.video}", f"model.weights={self.weights}", "source.loop=true",
                *paced, *self.args.set]

    def pipeline(self, fast: bool, extra: list[str] = (), config: Path | None = None,
                 during: Any = None, keep_results: bool = False,
                 duration: float | None = None) -> dict[str, Any]:
        progress(f"    pipeline, {'fast' if fast else 'paced'}: {' '.join(extra)}")
        res = run_pipeline(config or self.config, self.base_overrides(fast) + list(extra),
                           duration or self.args.duration, during)
        if not keep_results:
            res.pop("results")
        return res


# ---------------------------------------------------------------------------------- sections

def main_table(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    progress(f"a. model only on cores {b.inference_cores}, {b.inference_threads} thread(s) ...")
    out["model"] = b.model_only()
    for mode, fps in (("fast", 0.0), ("paced", PACED_FPS)):
        progress(f"b. tutorial loop, {mode} source ...")
        out[f"tutorial_{mode}"] = b.baseline("tutorial", fps=fps)
        progress(f"c. multiprocessing.Queue pipeline, {mode} source ...")
        out[f"mpqueue_{mode}"] = b.baseline("mpqueue", fps=fps)
        progress(f"d. pipeline ({b.config.name}), {mode} source ...")
        out[f"pipeline_{mode}"] = b.pipeline(fast=(mode == "fast"))
        if mode == "fast":
            progress("b'. tutorial loop on the inference cores only, their thread count ...")
            out["tutorial_fast_model_cores"] = b.baseline("tutorial", b.inference_cores,
                                                          threads=b.inference_threads)
    a, fast, paced = out["model"], out["pipeline_fast"], out["pipeline_paced"]
    out["ratios"] = {"d/a": fast["fps"] / a["fps"],
                     "d/b": fast["fps"] / out["tutorial_fast"]["fps"],
                     "d/b_model_cores": fast["fps"] / out["tutorial_fast_model_cores"]["fps"],
                     "d/c": fast["fps"] / out["mpqueue_fast"]["fps"]}
    out["paced_overhead_ms"] = {"p50": paced["latency_ms"]["p50"] - a["latency_ms"]["p50"],
                                "p99": paced["latency_ms"]["p99"] - a["latency_ms"]["p99"]}
    return out


ROWS = (("model", "a. model only (ceiling)"),
        ("tutorial_fast", "b. tutorial loop, fast"),
        ("tutorial_fast_model_cores", "b'. tutorial, model cores"),
        ("mpqueue_fast", "c. mp.Queue, fast"),
        ("pipeline_fast", "d. pipeline, fast"),
        ("tutorial_paced", "b. tutorial loop, 30 fps"), ("mpqueue_paced", "c. mp.Queue, 30 fps"),
        ("pipeline_paced", "d. pipeline, 30 fps"))


def format_row(name: str, r: dict[str, Any]) -> str:
    lat, age = r["latency_ms"], r["age_ms"]
    return (f"{name:<28} {r['fps']:6.1f} {lat['p50']:7.1f} {lat['p99']:7.1f} {lat['max']:7.1f} "
            f"{age['p50']:6.1f} {age['max']:7.1f} {r['cpu_pct']:6.0f} {r['rss_mb']:7.0f}")


def format_main(res: dict[str, Any]) -> list[str]:
    lines = [f"{'run':<28} {'fps':>6} {'e2e p50':>7} {'p99':>7} {'max':>7} "
             f"{'age p50':>6} {'max':>7} {'CPU %':>6} {'RSS MB':>7}"]
    lines += [format_row(name, res[key]) for key, name in ROWS if key in res]
    r, o = res["ratios"], res["paced_overhead_ms"]
    lines += ["", f"throughput d/a = {r['d/a']:.3f} (target >= 0.95)   d/b = {r['d/b']:.3f} "
              f"(target >= 1.25)   d/b' = {r['d/b_model_cores']:.3f}   d/c = {r['d/c']:.3f}",
              "b: all cores, torch's default threads, as the tutorial runs; b': only the "
              "inference cores and threads, the model's resources in d",
              f"30 fps latency over the model: p50 {o['p50']:+.1f} ms (target <= +3), "
              f"p99 {o['p99']:+.1f} ms (target <= +5)",
              "e2e: capture start to result; age: capture start to model start; "
              "model only: one forward pass"]
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="pipeline config (default: %(default)s)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video (default: %(default)s)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                    help="quantized mobilenet_v2 state dict (default: %(default)s)")
    ap.add_argument("--images", type=Path, default=IMAGES,
                    help="labelled images for --adaptive accuracy (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=15.0,
                    help="seconds counted per run, after 2 s of warm-up (default: 15)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every pipeline run")
    ap.add_argument("--spikes", action="store_true", help="spike-isolation section")
    ap.add_argument("--tuning", action="store_true", help="tuning section")
    ap.add_argument("--adaptive", action="store_true", help="adaptive-resolution section")
    ap.add_argument("--models", action="store_true", help="the tutorial's model table")
    ap.add_argument("--model-names", default="", metavar="A,B",
                    help="with --models: only these models (default: the tutorial's list)")
    ap.add_argument("--no-main", action="store_true", help="skip the a/b/c/d table")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop runs in progress cleanly
    for name in ("video", "weights", "config"):
        path = getattr(args, name).resolve()
        if not path.is_file():
            print(f"bench: --{name}: no such file: {path}", file=sys.stderr)
            return 2
        setattr(args, name, path)
    if args.duration <= 0:
        print("bench: --duration must be positive", file=sys.stderr)
        return 2
    b = Bench(args)
    res: dict[str, Any] = {"video": b.video, "weights": b.weights, "config": str(b.config),
                           "duration_s": args.duration, "cores": b.all_cores,
                           "inference_cores": b.inference_cores}
    report: list[str] = []
    if not args.no_main:
        res["main"] = main_table(b)
        report += format_main(res["main"])
        print("\n".join(report), flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
    from tools.benchkit import sections

    for flag, section in (("spikes", sections.spikes), ("tuning", sections.tuning),
                          ("adaptive", sections.adaptive), ("models", sections.models)):
        if getattr(args, flag):
            res[flag], lines = section(b, res.get("main"))
            report += ["", *lines]
            print("\n".join(lines), flush=True)
            if args.json:  # written as sections finish: a long run keeps what it measured
                args.json.write_text(json.dumps(res, indent=2) + "\n")
    if len(report) > 0 and not args.no_main and any(
            getattr(args, f) for f in ("spikes", "tuning", "adaptive", "models")):
        print("\n" + "\n".join(report))  # everything together at the end
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the core pipeline against the two numbers it has to be judged by.

Why: splitting capture, preprocessing and inference into pinned processes only pays off if
(a) the inference core is kept busy with the model and nothing else, so the pipeline's
throughput comes within a few percent of the model's own ("ceiling"), and (b) the result beats
the obvious single loop from PyTorch's "Real Time Inference on Raspberry Pi 4" tutorial, which
decodes, converts and classifies one frame after the other on one core.

The machine is shared and noisy, so all four figures are measured in one invocation, one after
the other, each in its own process:

1. model only     - the scripted quantized model on the inference core, a fixed input tensor;
2. tutorial loop  - cv2 decode + BGR->RGB + resize + ToTensor/Normalize + model, one core;
3. pipeline, fast - `pipeline-up configs/video.toml`, the video decoded as fast as possible;
4. pipeline, 30fps- the same with the video played as a live 30 fps camera (end-to-end latency).

Usage:
    .venv/bin/python tools/bench_core.py [--duration 20] [--frames 300] [--json out.json]

The model-only and tutorial runs re-invoke this script with a hidden `--child model|tutorial`
argument; the child pins itself before importing torch and prints one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
DEFAULT_VIDEO = ASSETS / "video" / "bottle-detection.mp4"
DEFAULT_WEIGHTS = ASSETS / "weights" / "mobilenet_v2_qnnpack_imagenet1k.pth"
CONFIG = ROOT / "configs" / "video.toml"
MODEL = "mobilenet_v2"
SIZE = 224
WARMUP = 20  # forward passes before anything is timed, in both child measurements


# ---------------------------------------------------------------- helpers

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100), the same rule as the pipeline's status lines."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q / 100) - 1))]


def child_env() -> dict[str, str]:
    """The environment for every subprocess: the project root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- child measurements

def child_model(args: argparse.Namespace) -> dict[str, Any]:
    """Forward passes of one fixed tensor: the most the inference core can do."""
    os.sched_setaffinity(0, {args.inference_core})  # before torch starts any thread
    import torch

    from workers.models import load_classifier, warm_up

    torch.set_num_threads(1)
    model = load_classifier(MODEL, str(args.weights), engine="auto", jit=True)
    warm_up(model, SIZE, WARMUP)
    x = torch.rand(1, 3, SIZE, SIZE)
    times: list[float] = []
    with torch.inference_mode():
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.frames):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"frames": len(times), "fps": len(times) / elapsed, "cpu_share": cpu / elapsed,
            "ms_p50": percentile(times, 50), "ms_p99": percentile(times, 99), "ms_max": max(times),
            "engine": torch.backends.quantized.engine, "torch": torch.__version__}


def child_tutorial(args: argparse.Namespace) -> dict[str, Any]:
    """The tutorial's loop, with a resize because the video is 640x360, not a 224x224 camera."""
    os.sched_setaffinity(0, {args.inference_core})
    import cv2
    import torch
    from torchvision import transforms

    from workers.models import load_classifier, warm_up

    torch.set_num_threads(1)
    net = load_classifier(MODEL, str(args.weights), engine="auto", jit=True)
    warm_up(net, SIZE, WARMUP)  # the tutorial does not; its slow first frames are not the point
    preprocess = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    cap = cv2.VideoCapture(str(args.video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {args.video}")
    loop_ms: list[float] = []
    model_ms: list[float] = []
    with torch.no_grad():
        start, cpu_start = time.perf_counter(), time.process_time()
        while len(loop_ms) < args.frames:
            t0 = time.perf_counter()
            ret, image = cap.read()
            if not ret:
                break
            image = image[:, :, [2, 1, 0]]  # BGR -> RGB
            image = cv2.resize(image, (SIZE, SIZE))
            input_tensor = preprocess(image)
            input_batch = input_tensor.unsqueeze(0)
            t1 = time.perf_counter()
            output = net(input_batch)  # noqa: F841 - the tutorial then looks at the top classes
            t2 = time.perf_counter()
            loop_ms.append((t2 - t0) * 1e3)
            model_ms.append((t2 - t1) * 1e3)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cap.release()
    if not loop_ms:
        raise SystemExit(f"no frames decoded from {args.video}")
    return {"frames": len(loop_ms), "fps": len(loop_ms) / elapsed, "cpu_share": cpu / elapsed,
            "ms_p50": percentile(loop_ms, 50), "ms_p99": percentile(loop_ms, 99),
            "ms_max": max(loop_ms), "model_ms_p50": percentile(model_ms, 50)}


def run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--video", str(args.video), "--weights", str(args.weights),
           "--frames", str(args.frames), "--inference-core", str(args.inference_core)]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"bench_core: the {kind} measurement failed (exit code {proc.returncode})")
    result = json.loads(lines[-1])
    if result["cpu_share"] < 0.9:  # the child got less than its core: something else ran there
        progress(f"  warning: the {kind} run got only {result['cpu_share']:.0%} of core "
                 f"{args.inference_core}; the machine is busy, figures are not comparable")
    return result


# ---------------------------------------------------------------- pipeline runs

def run_pipeline(args: argparse.Namespace, realtime: bool) -> dict[str, Any]:
    """One `pipeline-up` run; returns its --summary-json."""
    with tempfile.TemporaryDirectory(prefix="bench_core-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "pipeline.cli", str(CONFIG),
               "--set", f"source.path={args.video}",
               "--set", f"model.weights={args.weights}",
               "--set", f"inference.cores=[{args.inference_core}]",
               "--set", "source.loop=true"]
        if realtime:
            cmd += ["--set", "source.realtime=true", "--set", "source.fps=30"]
        else:
            cmd += ["--set", "source.realtime=false"]
        cmd += ["--duration", str(args.duration), "--quiet", "--summary-json", str(summary_path)]
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=args.duration + 180)
        if proc.returncode != 0 or not summary_path.exists():
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"bench_core: pipeline-up failed (exit code {proc.returncode})")
        summary = json.loads(summary_path.read_text())
    if summary.get("failure"):
        progress(f"  warning: pipeline reported a failure: {summary['failure']}")
    return summary


# ---------------------------------------------------------------- report

def row(name: str, fps: float, p50: float, p99: float, mx: float, what: str) -> str:
    return f"{name:<24} {fps:7.1f} {p50:8.1f} {p99:8.1f} {mx:8.1f}   {what}"


def report(res: dict[str, Any]) -> str:
    model, tut = res["model"], res["tutorial"]
    lines = [f"{'run':<24} {'fps':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
             row("model only (ceiling)", model["fps"], model["ms_p50"], model["ms_p99"],
                 model["ms_max"], "per frame"),
             row("tutorial single loop", tut["fps"], tut["ms_p50"], tut["ms_p99"], tut["ms_max"],
                 f"per frame (model p50 {tut['model_ms_p50']:.1f} ms)")]
    for key, name in (("pipeline_fast", "pipeline, fast source"),
                      ("pipeline_30fps", "pipeline, 30 fps source")):
        s = res.get(key)
        if s is None:
            continue
        lat = s["latency_ms"]
        lines.append(row(name, s["fps"], lat.get("p50", 0.0), lat.get("p99", 0.0),
                         lat.get("max", 0.0), "end-to-end latency"))
    for key, name in (("pipeline_fast", "fast"), ("pipeline_30fps", "30 fps")):
        s = res.get(key)
        if s is None:
            continue
        f = s["frames"]
        drops = "; ".join(
            f"{edge} " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
            for edge, reasons in sorted(s["drops"].items()) if any(reasons.values()))
        svc = ", ".join(f"{stage} {v['p50']:.1f}/{v['p99']:.1f}"
                        for stage, v in s["service_ms"].items() if v)
        lines.append("")
        lines.append(f"{name:>6}: frames captured {f['captured']}, "
                     f"preprocessed {f['preprocessed']}, classified {f['classified']}; "
                     f"drops {drops or '0'}")
        lines.append(f"{'':>6}  service ms p50/p99: {svc}")
    if "ratios" in res:
        r, o = res["ratios"], res["overhead_ms"]
        lines.append("")
        lines.append(f"pipeline fps / model fps    = {r['pipeline_over_model']:.3f}")
        lines.append(f"pipeline fps / tutorial fps = {r['pipeline_over_tutorial']:.3f}")
        lines.append(f"30 fps overhead over model  = p50 {o['p50']:+.1f} ms, p99 {o['p99']:+.1f} ms")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO,
                    help="video file (default: %(default)s)")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                    help="quantized mobilenet_v2 state dict (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds per pipeline run (default: 20)")
    ap.add_argument("--frames", type=int, default=300,
                    help="timed iterations for model-only and frame limit for the tutorial loop "
                         "(default: 300)")
    ap.add_argument("--inference-core", type=int, default=1,
                    help="core for the model (default: 1)")
    ap.add_argument("--skip-pipeline", action="store_true",
                    help="only the model-only and tutorial runs")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write all figures as JSON")
    ap.add_argument("--child", choices=("model", "tutorial"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.video, args.weights = args.video.resolve(), args.weights.resolve()
    if args.child:
        measure = child_model if args.child == "model" else child_tutorial
        print(json.dumps(measure(args)), flush=True)
        return 0

    for path in (args.video, args.weights):
        if not path.is_file():
            print(f"bench_core: missing asset: {path}", file=sys.stderr)
            return 2
    if args.inference_core not in os.sched_getaffinity(0):
        print(f"bench_core: core {args.inference_core} is not available "
              f"(have {sorted(os.sched_getaffinity(0))})", file=sys.stderr)
        return 2

    res: dict[str, Any] = {"video": str(args.video), "weights": str(args.weights),
                           "inference_core": args.inference_core, "duration_s": args.duration,
                           "frames": args.frames}
    progress(f"running model-only ({args.frames} frames on core {args.inference_core}) ...")
    res["model"] = run_child("model", args)
    progress("running tutorial single loop ...")
    res["tutorial"] = run_child("tutorial", args)
    if not args.skip_pipeline:
        progress(f"running pipeline, as fast as possible ({args.duration:g} s) ...")
        res["pipeline_fast"] = run_pipeline(args, realtime=False)
        progress(f"running pipeline, 30 fps source ({args.duration:g} s) ...")
        res["pipeline_30fps"] = run_pipeline(args, realtime=True)
        fast, live = res["pipeline_fast"], res["pipeline_30fps"]["latency_ms"]
        res["ratios"] = {"pipeline_over_model": fast["fps"] / res["model"]["fps"],
                         "pipeline_over_tutorial": fast["fps"] / res["tutorial"]["fps"]}
        res["overhead_ms"] = {"p50": live.get("p50", 0.0) - res["model"]["ms_p50"],
                              "p99": live.get("p99", 0.0) - res["model"]["ms_p99"]}

    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

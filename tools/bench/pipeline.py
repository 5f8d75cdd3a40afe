"""Benchmark the pipeline against the model's ceiling, the tutorial's single loop and a
multiprocessing.Queue pipeline, all in one invocation on the same input, weights and cores, with
the torch runtime and with onnxruntime (and, with --runtimes, LiteRT beside them).

Why one tool and one run: the machines are shared and noisy, so only figures measured side by
side mean anything. Every run is its own process tree:

  a. model only   - the scripted quantized model in a loop on the inference cores (the ceiling);
  b. tutorial     - the single loop of PyTorch's Raspberry Pi 4 tutorial, torch's default threads;
                    b': the same loop held to the inference cores and threads;
  c. mp.Queue     - capture, preprocess and inference processes joined by multiprocessing.Queue;
  d. pipeline     - `pipeline-up` with the given config and model.runtime = "torch";
  a-ort1, a-ort2  - the same model's ONNX file (--onnx) alone in onnxruntime: 1 thread on the
                    inference cores, 2 threads on all cores;
  b-ort1, b-ort2  - the tutorial's loop and preprocessing with that session in place of the torch
                    model, on all cores, 1 and 2 threads (the session's and torch's, as b' has
                    for its loop): the fair single-loop baselines;
  d-ort           - the pipeline with model.runtime = "onnxruntime", in the layout it picks for
                    the config (one worker at 30 fps, a worker per core for a file read as fast
                    as possible) and with 2 workers set on all cores.

b, c and d read the same video, once as fast as possible and once paced at 30 fps like a live
camera (a late reader gets stale frames from a 4-buffer driver queue, as with V4L2); b-ort as
fast as possible. Pipeline rows also give the inference stage process's own RSS (the largest
worker's).

Options add sections: --spikes (stall, CPU hog, slow model frames, each beside the tutorial),
--tuning (threads, engine, TorchScript, channels-last, uint8 input ring), --adaptive (input size
224/192/160: fps and accuracy, and the controller reacting), --models (the tutorial's model table),
--cost (the pipeline's own cost per frame, piece by piece, and its targets as ratios against the
single loop, the 2-core limit and torchvision's eval transform: tools/bench/kit/cost.py),
--runtimes (torch, onnxruntime and LiteRT, each with 1 and 2 threads: the model alone, 1 thread on
the inference cores and 2 on all cores as a-ort1/a-ort2, and the pipeline on a fast source with
one inference worker of as many threads; fps, ms p50/p99, CPU %, the model process's RSS, each row
as a ratio against torch's model alone with 1 thread in the same run, and each runtime's 2 threads
over its 1; LiteRT runs the .tflite file --tflite; a runtime not installed gets a row saying so).
--markdown prints the a/b/c/d table and its targets, and the --runtimes table, as markdown for
docs/performance.md.

Usage (from the project root):
    .venv/bin/python -m tools.bench.pipeline [--duration 15] [--json out.json] [--markdown]
                                    [--onnx FILE] [--tflite FILE] [--spikes] [--tuning]
                                    [--adaptive] [--models [--model-names A,B]]
                                    [--cost [--cost-rounds 3]] [--runtimes] [--no-main]
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

from tools.assets import CONFIGS, IMAGES, ONNX, ROOT, WEIGHTS, default_video
from tools.bench.kit import markdown
from tools.bench.kit.baselines import WARMUP_S
from tools.bench.kit.common import PACED_FPS, child_env, progress
from tools.bench.kit.pipeline_run import run_pipeline
from workers.inference.model_files import builtin_tflite

CONFIG = CONFIGS / "video.toml"
ORT = "onnxruntime"
LITERT = "litert"
SECTIONS = ("spikes", "tuning", "adaptive", "models", "cost", "runtimes")


class Bench:
    """Holds the common settings of one invocation and runs measurements with them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.video, self.weights, self.onnx = str(args.video), str(args.weights), str(args.onnx)
        self.tflite = str(args.tflite)
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
                "onnx": self.onnx, "tflite": self.tflite, "model": "mobilenet_v2",
                "duration": self.args.duration, "warmup": self.args.warmup, **extra}
        progress(f"    {kind}: {json.dumps({k: v for k, v in extra.items() if k != 'weights'})}")
        cmd = [sys.executable, "-m", "tools.bench.kit.baselines", kind, json.dumps(args)]
        proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                              timeout=args["duration"] + 600)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"bench: the {kind} run failed (exit code {proc.returncode})")
        return json.loads(lines[-1])

    def model_only(self, cores: list[int] | None = None, **extra: Any) -> dict[str, Any]:
        extra.setdefault("threads", self.inference_threads)
        return self.baseline("model", cores or self.inference_cores, **extra)

    def inference_cores_with(self, extra: list[str]) -> list[int]:
        """The inference cores of a fast-source pipeline run with these overrides."""
        from pipeline.config import load_config

        cfg = load_config(str(self.config), self.base_overrides(True) + extra)
        return sorted(cfg.cores_of("inference"))

    def base_overrides(self, fast: bool) -> list[str]:
        paced = ["source.realtime=false"] if fast else \
            ["source.realtime=true", f"source.fps={PACED_FPS:g}"]
        return [f"source.path={self.video}", f"model.weights={self.weights}", "source.loop=true",
                *paced, *self.args.set]

    def pipeline(self, fast: bool, extra: list[str] = (), config: Path | None = None,
                 during: Any = None, keep_results: bool = False,
                 duration: float | None = None, runtime: str = "torch") -> dict[str, Any]:
        """A pipeline run; the runtime is set explicitly (the config's "auto" would pick one),
        and onnxruntime and LiteRT run the same files as the model-alone rows."""
        file = {ORT: self.onnx, LITERT: self.tflite}.get(runtime)
        model = [f"model.runtime={runtime}"] + ([f"model.weights={file}"] if file else [])
        progress(f"    pipeline, {'fast' if fast else 'paced'}: {' '.join(model + list(extra))}")
        res = run_pipeline(config or self.config, self.base_overrides(fast) + model + list(extra),
                           duration or self.args.duration, during, self.args.warmup)
        if not keep_results:
            res.pop("results")
        return res


# ---------------------------------------------------------------------------------- sections

def overhead_ms(paced: dict[str, Any], model: dict[str, Any]) -> dict[str, float]:
    """30 fps end-to-end latency of a pipeline over the model alone's forward pass."""
    return {q: paced["latency_ms"][q] - model["latency_ms"][q] for q in ("p50", "p99")}


def main_table(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {}
    progress(f"a. model only on cores {b.inference_cores}, {b.inference_threads} thread(s) ...")
    out["model"] = b.model_only()
    for threads, cores in ((1, b.inference_cores), (2, b.all_cores)):
        progress(f"a-ort{threads}. model only in onnxruntime on cores {cores}, {threads} thread(s) ...")
        out[f"model_ort{threads}"] = b.model_only(cores, runtime=ORT, threads=threads)
    progress(f"a-ort1 paced. the same, one frame every 1/{PACED_FPS:g} s (caches cool between) ...")
    out["model_ort1_paced"] = b.model_only(b.inference_cores, runtime=ORT, threads=1, fps=PACED_FPS)
    two_workers = ["inference.workers=2", f"inference.cores={b.all_cores}"]
    for mode, fps in (("fast", 0.0), ("paced", PACED_FPS)):
        fast = mode == "fast"
        progress(f"b. tutorial loop, {mode} source ...")
        out[f"tutorial_{mode}"] = b.baseline("tutorial", fps=fps)
        if fast:
            progress("b'. tutorial loop on the inference cores only, their thread count ...")
            out["tutorial_fast_model_cores"] = b.baseline("tutorial", b.inference_cores,
                                                          threads=b.inference_threads)
            for threads in (1, 2):
                progress(f"b-ort{threads}. tutorial loop with onnxruntime, {threads} thread(s) ...")
                out[f"tutorial_ort{threads}_fast"] = b.baseline("tutorial", runtime=ORT,
                                                                threads=threads)
        progress(f"c. multiprocessing.Queue pipeline, {mode} source ...")
        out[f"mpqueue_{mode}"] = b.baseline("mpqueue", fps=fps)
        progress(f"d. pipeline ({b.config.name}), torch, {mode} source ...")
        out[f"pipeline_{mode}"] = b.pipeline(fast)
        for workers, extra in ((1, []), (2, two_workers)):
            layout = "2 workers set" if extra else "the layout it picks"
            progress(f"d-ort. pipeline, onnxruntime, {layout}, {mode} source ...")
            out[f"pipeline_ort{workers}w_{mode}"] = b.pipeline(fast, extra, runtime=ORT)
    a, fast = out["model"], out["pipeline_fast"]
    best_d = max(("pipeline_ort1w_fast", "pipeline_ort2w_fast"), key=lambda k: out[k]["fps"])
    best_b = max(("tutorial_ort1_fast", "tutorial_ort2_fast"), key=lambda k: out[k]["fps"])
    out["ratios"] = {"d/a": fast["fps"] / a["fps"],
                     "d/b": fast["fps"] / out["tutorial_fast"]["fps"],
                     "d/b_model_cores": fast["fps"] / out["tutorial_fast_model_cores"]["fps"],
                     "d/c": fast["fps"] / out["mpqueue_fast"]["fps"],
                     "d-ort/a": out[best_d]["fps"] / a["fps"],
                     "d-ort/b-ort": out[best_d]["fps"] / out[best_b]["fps"]}
    out["ort_best"] = {"d": best_d, "b": best_b}
    out["paced_overhead_ms"] = overhead_ms(out["pipeline_paced"], a)
    out["paced_overhead_ms_ort"] = overhead_ms(out["pipeline_ort1w_paced"], out["model_ort1"])
    out["paced_overhead_ms_ort_paced_model"] = overhead_ms(out["pipeline_ort1w_paced"],
                                                           out["model_ort1_paced"])
    return out


ROWS = (("model", "a. model only (ceiling)"),
        ("model_ort1", "a-ort1. ort model, 1 thread"),
        ("model_ort2", "a-ort2. ort model, 2 threads"),
        ("model_ort1_paced", "a-ort1. ort model, 30 fps pace"),
        ("tutorial_fast", "b. tutorial loop, fast"),
        ("tutorial_fast_model_cores", "b'. tutorial, model cores"),
        ("tutorial_ort1_fast", "b-ort1. tutorial + ort, 1 thread"),
        ("tutorial_ort2_fast", "b-ort2. tutorial + ort, 2 threads"),
        ("mpqueue_fast", "c. mp.Queue, fast"),
        ("pipeline_fast", "d. pipeline, fast"),
        ("pipeline_ort1w_fast", "d-ort. pipeline, picked layout, fast"),
        ("pipeline_ort2w_fast", "d-ort. pipeline, 2 workers set, fast"),
        ("tutorial_paced", "b. tutorial loop, 30 fps"), ("mpqueue_paced", "c. mp.Queue, 30 fps"),
        ("pipeline_paced", "d. pipeline, 30 fps"),
        ("pipeline_ort1w_paced", "d-ort. pipeline, picked layout, 30 fps"),
        ("pipeline_ort2w_paced", "d-ort. pipeline, 2 workers set, 30 fps"))
NAME_W = 34


def format_row(name: str, r: dict[str, Any]) -> str:
    lat, age = r["latency_ms"], r["age_ms"]
    inf = f"{r['inference_rss_mb']:7.0f}" if "inference_rss_mb" in r else f"{'-':>7}"
    return (f"{name:<{NAME_W}} {r['fps']:6.1f} {lat['p50']:7.1f} {lat['p99']:7.1f} {lat['max']:7.1f} "
            f"{age['p50']:6.1f} {age['max']:7.1f} {r['cpu_pct']:6.0f} {r['rss_mb']:7.0f} {inf}")


def format_main(res: dict[str, Any]) -> list[str]:
    lines = [f"{'run':<{NAME_W}} {'fps':>6} {'e2e p50':>7} {'p99':>7} {'max':>7} "
             f"{'age p50':>6} {'max':>7} {'CPU %':>6} {'RSS MB':>7} {'inf MB':>7}"]
    lines += [format_row(name, res[key]) for key, name in ROWS if key in res]
    r, o, oo = res["ratios"], res["paced_overhead_ms"], res["paced_overhead_ms_ort"]
    op = res["paced_overhead_ms_ort_paced_model"]
    label = dict(ROWS)
    ort_inf = max(res[k]["inference_rss_mb"] for k in res if k.startswith("pipeline_ort"))
    torch_inf = max(res[k]["inference_rss_mb"] for k in ("pipeline_fast", "pipeline_paced"))
    lines += ["", f"throughput d/a = {r['d/a']:.3f} (target >= 0.95)   d/b = {r['d/b']:.3f} "
              f"(target >= 1.25)   d/b' = {r['d/b_model_cores']:.3f}   d/c = {r['d/c']:.3f}",
              f"onnxruntime: d-ort fast / a = {r['d-ort/a']:.2f} (target >= 5)   d-ort fast / "
              f"b-ort = {r['d-ort/b-ort']:.3f} (target >= 1.25), the best of each: "
              f"{label[res['ort_best']['d']]!r}, {label[res['ort_best']['b']]!r}",
              "b: all cores, torch's default threads, as the tutorial runs; b': only the "
              "inference cores and threads, the model's resources in d; b-ort: all cores, "
              "the threads named for the session and torch's preprocessing; a-ort2: all cores",
              f"30 fps latency over the model: d over a: p50 {o['p50']:+.1f} ms (target <= +3), "
              f"p99 {o['p99']:+.1f} ms (target <= +5); d-ort, picked layout, over a-ort1: "
              f"p50 {oo['p50']:+.1f} ms (target <= +2), p99 {oo['p99']:+.1f} ms (target <= +4); "
              f"over the model at the same 30 fps pace: p50 {op['p50']:+.1f}, p99 {op['p99']:+.1f} ms",
              f"inf MB: the inference stage process alone (the largest worker): onnxruntime max "
              f"{ort_inf:.0f} MB (target <= 150), torch max {torch_inf:.0f} MB",
              "e2e: capture start to result; age: capture start to model start; "
              "model only: one forward pass"]
    shared = [label[k].split(".")[0] for k in ("model", "model_ort1") if res[k]["cpu_pct"] < 90]
    if shared:  # one thread on its own core should use all of it
        lines.append(f"warning: {' and '.join(shared)} got under 90% of the inference core: "
                     "something else ran on it, so the figures against the model are unreliable")
    return lines


def row_runtime(key: str) -> str:
    """The runtime of a row: its key names onnxruntime ("model_ort1", ...) or LiteRT
    ("model_litert1", ...), else torch."""
    parts = key.split("_")
    if any(part.startswith("litert") for part in parts):
        return LITERT
    return ORT if any(part.startswith("ort") for part in parts) else "torch"


def markdown_row(name: str, key: str, r: dict[str, Any]) -> list[Any]:
    lat, age = r["latency_ms"], r["age_ms"]
    alone = key.startswith("model")  # one forward pass: no capture, no age
    return [name, f"{r['fps']:.1f}",
            f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f}" + (" (one pass)" if alone else ""),
            "–" if alone else f"{age['p50']:.1f} / {age['max']:.1f}", f"{r['cpu_pct']:.0f}",
            f"{r['rss_mb']:.0f}", f"{r['inference_rss_mb']:.0f}" if "inference_rss_mb" in r else "–",
            *markdown.provenance(row_runtime(key))]


def met(ok: bool) -> str:
    return "met" if ok else "missed"


def markdown_main(res: dict[str, Any]) -> list[str]:
    """The a/b/c/d table and its targets as markdown, every row with its runtime, date, machine."""
    rows = [markdown_row(name, key, res[key]) for key, name in ROWS if key in res]
    r, o, oo = res["ratios"], res["paced_overhead_ms"], res["paced_overhead_ms_ort"]
    ort_inf = max(res[k]["inference_rss_mb"] for k in res if k.startswith("pipeline_ort"))
    torch_inf = max(res[k]["inference_rss_mb"] for k in ("pipeline_fast", "pipeline_paced"))
    targets = [
        ["d-ort, fast / a (torch model alone) ≥ 5", f"{r['d-ort/a']:.2f}", met(r["d-ort/a"] >= 5),
         *markdown.provenance(ORT, "torch")],
        ["d-ort, fast / best b-ort (single loop, same runtime) ≥ 1.25", f"{r['d-ort/b-ort']:.3f}",
         met(r["d-ort/b-ort"] >= 1.25), *markdown.provenance(ORT)],
        ["d-ort, picked layout, 30 fps: e2e over a-ort1, p50 ≤ +2 ms, p99 ≤ +4 ms",
         f"{oo['p50']:+.1f} / {oo['p99']:+.1f} ms", met(oo["p50"] <= 2 and oo["p99"] <= 4),
         *markdown.provenance(ORT)],
        ["inference process RSS ≤ 150 MB", f"{ort_inf:.0f} MB (torch: {torch_inf:.0f} MB)",
         met(ort_inf <= 150), *markdown.provenance(ORT)],
        ["d / a ≥ 0.95", f"{r['d/a']:.3f}", met(r["d/a"] >= 0.95), *markdown.provenance("torch")],
        ["d / b ≥ 1.25", f"{r['d/b']:.3f} (d / b' {r['d/b_model_cores']:.3f})", met(r["d/b"] >= 1.25),
         *markdown.provenance("torch")],
        ["d, 30 fps: e2e over a, p50 ≤ +3 ms, p99 ≤ +5 ms", f"{o['p50']:+.1f} / {o['p99']:+.1f} ms",
         met(o["p50"] <= 3 and o["p99"] <= 5), *markdown.provenance("torch")]]
    return [markdown.table(["run", "fps", "e2e p50 / p99 / max ms", "age p50 / max ms", "CPU %",
                            "RSS MB (sum)", "inf MB", *markdown.PROVENANCE], rows), "",
            markdown.table(["target", "measured", "result", *markdown.PROVENANCE], targets)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="pipeline config (default: %(default)s)")
    ap.add_argument("--video", type=Path, default=default_video(),
                    help="video (default: %(default)s)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS,
                    help="quantized mobilenet_v2 state dict (default: the shipped one)")
    ap.add_argument("--onnx", type=Path, default=ONNX,
                    help="its ONNX export, for the onnxruntime rows (default: the shipped one)")
    ap.add_argument("--tflite", type=Path, default=builtin_tflite(),
                    help="its TFLite conversion, for the LiteRT rows of --runtimes (default: the "
                         "shipped one)")
    ap.add_argument("--images", type=Path, default=IMAGES,
                    help="labelled images for --adaptive accuracy (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=15.0,
                    help="seconds counted per run, after the warm-up (default: 15)")
    ap.add_argument("--warmup", type=float, default=WARMUP_S,
                    help=f"seconds of each run not counted, while caches and clocks settle "
                         f"(default: {WARMUP_S:g})")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra config override for every pipeline run (model.runtime, and for "
                         "onnxruntime and LiteRT model.weights, are set by each run)")
    ap.add_argument("--spikes", action="store_true", help="spike-isolation section")
    ap.add_argument("--tuning", action="store_true", help="tuning section")
    ap.add_argument("--adaptive", action="store_true", help="adaptive-resolution section")
    ap.add_argument("--models", action="store_true", help="the tutorial's model table")
    ap.add_argument("--cost", action="store_true",
                    help="the pipeline's own cost per frame and its five targets as ratios")
    ap.add_argument("--cost-rounds", type=int, default=3, metavar="N",
                    help="with --cost: 30 fps rounds, the single loop and the pipeline in turns "
                         "(default: 3)")
    ap.add_argument("--runtimes", action="store_true",
                    help="torch, onnxruntime and LiteRT with 1 and 2 threads: the model alone and "
                         "the pipeline, against torch's model alone with 1 thread")
    ap.add_argument("--model-names", default="", metavar="A,B",
                    help="with --models: only these models (default: the tutorial's list)")
    ap.add_argument("--no-main", action="store_true", help="skip the a/b/c/d table")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--markdown", action="store_true",
                    help="print the a/b/c/d table and its targets (and the --runtimes table) as "
                         "markdown tables, each row with its runtime, date and machine")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop runs in progress cleanly
    for name in ("video", "weights", "onnx", "tflite", "config"):
        path = getattr(args, name).resolve()
        if not path.is_file():
            print(f"bench: --{name}: no such file: {path}", file=sys.stderr)
            return 2
        setattr(args, name, path)
    if args.warmup < 0:
        print("bench: --warmup must be 0 or more seconds", file=sys.stderr)
        return 2
    if args.duration <= 0:
        print("bench: --duration must be positive", file=sys.stderr)
        return 2
    b = Bench(args)
    res: dict[str, Any] = {"video": b.video, "weights": b.weights, "onnx": b.onnx, "tflite": b.tflite,
                           "config": str(b.config), "duration_s": args.duration,
                           "cores": b.all_cores, "inference_cores": b.inference_cores}
    report: list[str] = []
    if not args.no_main:
        res["main"] = main_table(b)
        report += markdown_main(res["main"]) if args.markdown else format_main(res["main"])
        print("\n".join(report), flush=True)
        if args.json:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
    from tools.bench.kit import cost, sections

    for flag, section in (("spikes", sections.spikes), ("tuning", sections.tuning),
                          ("adaptive", sections.adaptive), ("models", sections.models),
                          ("cost", cost.section), ("runtimes", sections.runtimes)):
        if getattr(args, flag):
            res[flag], lines = section(b, res.get("main"))
            report += ["", *lines]
            print("\n".join(lines), flush=True)
            if args.json:  # written as sections finish: a long run keeps what it measured
                args.json.write_text(json.dumps(res, indent=2) + "\n")
    if len(report) > 0 and not args.no_main and any(getattr(args, f) for f in SECTIONS):
        print("\n" + "\n".join(report))  # everything together at the end
    return 0


if __name__ == "__main__":
    sys.exit(main())

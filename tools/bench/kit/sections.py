"""The optional sections of `tools.bench.pipeline`: spike isolation, tuning, adaptive resolution, the
tutorial's model table, and the three runtimes side by side. Each returns (figures, report lines)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from typing import Any, Callable

from tools.assets import CONFIGS, WEIGHTS
from tools.bench.kit import markdown
from tools.bench.kit.common import PACED_FPS, progress, spread


class Hog:
    """A busy loop pinned to one core, for as long as the run needs it."""

    def __init__(self, core: int):
        code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _model(b: Any, main: dict[str, Any] | None) -> dict[str, Any]:
    return main["model"] if main else b.model_only()


def _with_hog(core: int, run: Any) -> dict[str, Any]:
    hog = Hog(core)
    try:
        return run()
    finally:
        hog.stop()


def _stale_and_resume(res: dict[str, Any], bound_ms: float, gap_ms: float) -> dict[str, Any]:
    """Frames classified older than `bound_ms`, and the latency of the first result after each
    capture gap longer than `gap_ms` (how fast the pipeline resumes after a stall)."""
    rs = res.pop("results")
    ages = [(r["t"]["inference_start"] - r["t"]["capture_start"]) / 1e6 for r in rs]
    resumed = [(b["t"]["inference_end"] - b["t"]["capture_start"]) / 1e6
               for a, b in zip(rs, rs[1:])
               if (b["t"]["capture_start"] - a["t"]["capture_start"]) / 1e6 > gap_ms]
    res["stale"] = sum(a > bound_ms for a in ages)
    res["resume_latency_ms"] = spread(resumed)
    return res


def spikes(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    model = _model(b, main)
    interval = 1000 / PACED_FPS
    bound = interval + model["latency_ms"]["p50"]
    out: dict[str, Any] = {"stale_bound_ms": round(bound, 2)}

    progress("spikes (i): the source stalls 200 ms every 2 s ...")
    stall = ["source.stall_ms=200", "source.stall_every_s=2"]
    out["stall"] = {
        "pipeline": _stale_and_resume(b.pipeline(False, stall, keep_results=True), bound, 150),
        "tutorial": b.baseline("tutorial", fps=PACED_FPS, stall_ms=200, stall_every_s=2,
                               stale_ms=bound)}

    core = min(b.capture_cores)
    progress(f"spikes (ii): a CPU hog on the capture core {core} ...")
    base_p = main["pipeline_fast"] if main else b.pipeline(True)
    base_t = main["tutorial_fast"] if main else b.baseline("tutorial")
    hog_p = _with_hog(core, lambda: b.pipeline(True))
    hog_t = _with_hog(core, lambda: b.baseline("tutorial"))
    out["hog"] = {"core": core,
                  "pipeline": {"fps": base_p["fps"], "fps_hog": hog_p["fps"],
                               "ratio": hog_p["fps"] / base_p["fps"]},
                  "tutorial": {"fps": base_t["fps"], "fps_hog": hog_t["fps"],
                               "ratio": hog_t["fps"] / base_t["fps"]}}

    progress("spikes (iii): the model takes 100 ms extra on every 30th frame ...")
    slow = ["inference.delay_ms=100", "inference.delay_every=30"]
    out["slow_model"] = {
        "pipeline": _stale_and_resume(b.pipeline(False, slow, keep_results=True), bound, 1e9),
        "tutorial": b.baseline("tutorial", fps=PACED_FPS, extra_ms=100, extra_every=30,
                               stale_ms=bound)}

    lines = ["Spike isolation (30 fps source unless said; stale = classified more than "
             f"{bound:.1f} ms after capture, one frame interval + model p50)",
             f"{'case':<34} {'fps':>6} {'age max':>8} {'e2e p99':>8} {'e2e max':>8} "
             f"{'stale':>6} {'capture interval p50/p99':>25}"]
    for case, label in (("stall", "(i) stall 200 ms / 2 s"), ("slow_model", "(iii) +100 ms every 30th")):
        for who in ("pipeline", "tutorial"):
            r = out[case][who]
            iv = r["capture_interval_ms"]
            lines.append(f"{label + ', ' + who:<34} {r['fps']:6.1f} {r['age_ms']['max']:8.1f} "
                         f"{r['latency_ms']['p99']:8.1f} {r['latency_ms']['max']:8.1f} "
                         f"{r['stale']:6d} {iv.get('p50', 0):12.1f}/{iv.get('p99', 0):.1f} ms")
    s = out["stall"]["pipeline"]["resume_latency_ms"]
    lines.append(f"(i) pipeline: first result after each stall came {s['p50']:.1f} ms (max "
                 f"{s['max']:.1f}) after its capture, over {s['count']} stalls")
    h = out["hog"]
    lines.append(f"(ii) CPU hog on core {core}: pipeline {h['pipeline']['fps']:.1f} -> "
                 f"{h['pipeline']['fps_hog']:.1f} fps ({h['pipeline']['ratio']:.3f}); tutorial "
                 f"{h['tutorial']['fps']:.1f} -> {h['tutorial']['fps_hog']:.1f} fps "
                 f"({h['tutorial']['ratio']:.3f})")
    return out, lines


def tuning(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {"model_only": {}, "pipeline": {}}
    variants = [("1 thread, qnnpack, TorchScript (default)", {"threads": 1}, None),
                ("2 threads on both cores", {"threads": 2}, b.all_cores),
                ("engine x86", {"threads": 1, "engine": "x86"}, None),
                ("engine fbgemm", {"threads": 1, "engine": "fbgemm"}, None),
                ("TorchScript off (eager)", {"threads": 1, "jit": False}, None),
                ("channels-last", {"threads": 1, "channels_last": True}, None)]
    lines = ["Tuning: model alone (same input, 1x3x224x224)",
             f"{'variant':<44} {'fps':>6} {'p50 ms':>7} {'p99 ms':>7}"]
    for name, extra, cores in variants:
        progress(f"tuning: model only, {name} ...")
        r = b.baseline("model", cores or b.inference_cores, **extra)
        out["model_only"][name] = r
        lat = r["latency_ms"]
        lines.append(f"{name:<44} {r['fps']:6.1f} {lat['p50']:7.2f} {lat['p99']:7.2f}")
    pipeline_variants = [("shipped config", []),
                         ("uint8 input ring", ["preprocess.dtype=uint8"]),
                         ("channels-last", ["model.channels_last=true"]),
                         ("inference on both cores, 2 threads",
                          [f"inference.cores={b.all_cores}", "inference.threads=2"])]
    lines += ["", "Tuning: pipeline", f"{'variant':<44} {'fast fps':>8} {'30 fps: e2e p50':>15} "
              f"{'p99':>6} {'max':>6} {'CPU %':>6}"]
    for name, extra in pipeline_variants:
        progress(f"tuning: pipeline, {name} ...")
        fast, paced = b.pipeline(True, extra), b.pipeline(False, extra)
        out["pipeline"][name] = {"fast": fast, "paced": paced}
        lat = paced["latency_ms"]
        lines.append(f"{name:<44} {fast['fps']:8.1f} {lat['p50']:15.1f} {lat['p99']:6.1f} "
                     f"{lat['max']:6.1f} {paced['cpu_pct']:6.0f}")
    return out, lines


def accuracy(b: Any, size: int) -> dict[str, Any]:
    """Top-1 / top-5 of the pipeline on the labelled images at one input size (every image
    classified once: both edges block)."""
    import csv
    import json
    import tempfile

    from tools.bench.kit.pipeline_run import run_to_end

    with open(b.args.images / "labels.csv") as f:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(f)}
    with tempfile.TemporaryDirectory(prefix="bench-acc-") as tmp:
        record = f"{tmp}/r.jsonl"
        run_to_end(CONFIGS / "images.toml",
                   [f"source.path={b.args.images}", f"model.weights={b.weights}",
                    f"preprocess.crop_size={size}",
                    f"preprocess.resize_size={round(size * 256 / 224)}"], record)
        results = [json.loads(line) for line in open(record) if line.strip()]
    results = [r for r in results if r.get("type") == "result" and r.get("item") in labels]
    top1 = sum(r["top"][0]["index"] == labels[r["item"]] for r in results)
    top5 = sum(labels[r["item"]] in [t["index"] for t in r["top"][:5]] for r in results)
    n = len(results)
    return {"images": n, "top1": round(top1 / n, 3) if n else 0.0,
            "top5": round(top5 / n, 3) if n else 0.0}


def adaptive(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {"sizes": {}}
    lines = ["Adaptive resolution: each input size fixed (fps of the model alone and of the "
             "pipeline, fast source; accuracy on the labelled images)",
             f"{'size':>5} {'model fps':>10} {'model ms':>9} {'pipeline fps':>13} "
             f"{'top-1':>6} {'top-5':>6}"]
    for size in (224, 192, 160):
        progress(f"adaptive: input {size} ...")
        alone = b.model_only(size=size)
        pipe = b.pipeline(True, [f"preprocess.crop_size={size}",
                                 f"preprocess.resize_size={round(size * 256 / 224)}"])
        acc = accuracy(b, size)
        out["sizes"][size] = {"model_only": alone, "pipeline": pipe, "accuracy": acc}
        lines.append(f"{size:5d} {alone['fps']:10.1f} {alone['latency_ms']['p50']:9.1f} "
                     f"{pipe['fps']:13.1f} {acc['top1']:6.3f} {acc['top5']:6.3f}")
    # The controller at work: a 30 fps source while a CPU hog shares the inference core.
    core = min(b.inference_cores)
    progress(f"adaptive: 30 fps source, CPU hog on inference core {core}, adaptive off/on ...")
    runs = {}
    for mode in ("off", "on"):
        res = _with_hog(core, lambda: b.pipeline(False, [f"adaptive.enabled={str(mode == 'on').lower()}"],
                                                 keep_results=True))
        rs = res.pop("results")
        sizes: dict[int, int] = {}
        for r in rs:
            sizes[r.get("input_size", 224)] = sizes.get(r.get("input_size", 224), 0) + 1
        res["results_by_size"] = sizes
        runs[mode] = res
    out["hogged"] = runs
    lines.append(f"30 fps source, CPU hog on core {core}: adaptive off {runs['off']['fps']:.1f} fps "
                 f"(e2e p50 {runs['off']['latency_ms']['p50']:.1f} ms), on "
                 f"{runs['on']['fps']:.1f} fps (e2e p50 {runs['on']['latency_ms']['p50']:.1f} ms); "
                 f"results by size with it on: {runs['on']['results_by_size']}")
    return out, lines


MODELS = ["mobilenet_v2", "mobilenet_v3_large", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
          "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "resnet18", "resnet50", "googlenet",
          "inception_v3", "resnext101_32x8d"]
# The tutorial's Raspberry Pi 4 figures (fps), for the table's last column.
PI4_FPS = {"mobilenet_v2": 33.7, "mobilenet_v3_large": 29.3, "shufflenet_v2_x0_5": 46.7,
           "shufflenet_v2_x1_0": 24.4, "resnet18": 9.2, "resnet50": 4.3, "googlenet": 7.4,
           "inception_v3": 4.9, "resnext101_32x8d": 1.1}


def models(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {}
    duration = min(b.args.duration, 8.0)
    lines = ["Model table. FPS, total and model ms: the tutorial's loop (all cores, qnnpack, "
             "torch's default threads); alone: the model on the inference cores; pipeline: "
             "fast source. Random weights where marked: timing only",
             f"{'model':<20} {'weights':<10} {'FPS':>6} {'total ms':>9} {'model ms':>9} "
             f"{'alone fps':>9} {'engine':>7} {'pipeline fps':>12} {'Pi 4 FPS':>9}"]
    chosen = [m for m in b.args.model_names.split(",") if m] or MODELS
    for name in chosen:
        weights = str(WEIGHTS) if name == "mobilenet_v2" else "none"
        size = 299 if name == "inception_v3" else 224
        progress(f"models: {name} ({'pretrained' if weights != 'none' else 'random weights'}) ...")
        common = {"model": name, "weights": weights, "size": size, "duration": duration}
        sizes = [f"preprocess.crop_size={size}", f"preprocess.resize_size={round(size * 256 / 224)}"]
        try:
            tut = b.baseline("tutorial", **common)
            alone = b.baseline("model", b.inference_cores, threads=b.inference_threads, **common)
            pipe = b.pipeline(True, [f"model.name={name}", f"model.weights={weights}",
                                     "model.engine=auto", *sizes], duration=duration)
        except SystemExit as e:  # one model failing does not lose the others' figures
            out[name] = {"error": str(e)[-500:]}
            lines.append(f"{name:<20} failed: {str(e).strip().splitlines()[-1][:80]}")
            continue
        out[name] = {"weights": "pretrained" if weights != "none" else "random",
                     "tutorial": tut, "model_only": alone, "pipeline": pipe}
        total_ms = 1000 / tut["fps"] if tut["fps"] else 0.0
        lines.append(f"{name:<20} {out[name]['weights']:<10} {tut['fps']:6.1f} {total_ms:9.1f} "
                     f"{tut['model_ms']['p50']:9.1f} {alone['fps']:9.1f} {alone['engine']:>7} "
                     f"{pipe['fps']:12.1f} "
                     f"{PI4_FPS.get(name, float('nan')):9.1f}")
    return out, lines


# ------------------------------------------------------------------------------------- runtimes

RUNTIMES = ("torch", "onnxruntime", "litert")
MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai_edge_litert"}
PACKAGES = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}
THREADS = (1, 2)
KINDS = (("model", "model alone"), ("pipeline", "pipeline, fast"))
BASELINE = ("torch", "model_1t")  # what every row's fps is divided by: torch's model, 1 thread


def installed(runtime: str) -> bool:
    return importlib.util.find_spec(MODULES[runtime]) is not None


def _attempt(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A run's figures, or its error: one run failing does not lose the others'."""
    try:
        return run()
    except SystemExit as e:
        return {"error": (str(e).strip().splitlines() or ["failed"])[-1][:200]}


def runtimes(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """Each runtime with 1 and 2 threads: the model alone (1 thread on the inference cores, 2 on
    all cores, as the a-ort rows) and the pipeline on a fast source with one inference worker of
    that many threads (1 thread: the worker on the cores it gets by default; 2: on all cores)."""
    entries: dict[str, Any] = {}
    for rt in RUNTIMES:
        if not installed(rt):
            progress(f"runtimes: {rt} is not installed, skipped")
            entries[rt] = {"missing": f"not installed (pip install {PACKAGES[rt]})"}
            continue
        runs: dict[str, Any] = {}
        for n in THREADS:
            cores = b.inference_cores if n == 1 else b.all_cores
            progress(f"runtimes: {rt}, model alone, {n} thread(s) on cores {cores} ...")
            runs[f"model_{n}t"] = _attempt(lambda: b.model_only(cores, runtime=rt, threads=n)) | \
                {"threads": n, "cores": cores}
            extra = ["inference.workers=1", f"inference.threads={n}",
                     *([f"inference.cores={b.all_cores}"] if n > 1 else [])]
            stage = b.inference_cores_with(extra)
            progress(f"runtimes: {rt}, pipeline, fast source, {n} thread(s) on cores {stage} ...")
            runs[f"pipeline_{n}t"] = _attempt(lambda: b.pipeline(True, extra, runtime=rt)) | \
                {"threads": n, "cores": stage}
        entries[rt] = {"runs": runs}
    out = summarise(entries)
    lines = format_runtimes(out)
    if b.args.markdown:
        lines += ["", *markdown_runtimes(out)]
    return out, lines


def summarise(entries: dict[str, Any]) -> dict[str, Any]:
    """The section's figures with their ratios: every run's fps over the baseline's
    (`vs_baseline`), and each runtime's 2 threads over its 1 (`ratios`)."""
    base_rt, base_key = BASELINE
    base = entries.get(base_rt, {}).get("runs", {}).get(base_key, {}).get("fps")
    for rt, entry in entries.items():
        entry.setdefault("version", "" if "missing" in entry else markdown.runtime(rt))
        runs, entry["ratios"] = entry.get("runs", {}), {}
        for run in runs.values():
            if base and "fps" in run:
                run["vs_baseline"] = round(run["fps"] / base, 3)
        for kind, _ in KINDS:
            one, two = runs.get(f"{kind}_1t", {}), runs.get(f"{kind}_2t", {})
            if one.get("fps") and "fps" in two:
                entry["ratios"][f"{kind}_2t/1t"] = round(two["fps"] / one["fps"], 3)
    return {"baseline": "torch, model alone, 1 thread", "baseline_fps": base, "runtimes": entries}


def _rows(out: dict[str, Any]) -> list[tuple[str, str, str, int, dict[str, Any]]]:
    """(runtime, run kind, its label, threads, figures) in table order; a missing runtime once,
    with kind "" and its figures the entry."""
    rows = []
    for rt in RUNTIMES:
        entry = out["runtimes"].get(rt)
        if entry is None:
            continue
        if "missing" in entry:
            rows.append((rt, "", "", 0, entry))
            continue
        rows += [(rt, kind, label, n, entry["runs"][f"{kind}_{n}t"])
                 for kind, label in KINDS for n in THREADS if f"{kind}_{n}t" in entry["runs"]]
    return rows


def _cells(out: dict[str, Any], rt: str, kind: str, n: int, r: dict[str, Any]) -> list[str]:
    """threads, cores, fps, p50, p99, CPU %, inf MB, x baseline, 2t/1t of one run."""
    lat = r["latency_ms"]
    mb = r.get("inference_rss_mb") if kind == "pipeline" else r.get("rss_mb")
    ratio = out["runtimes"][rt]["ratios"].get(f"{kind}_2t/1t") if n == 2 else None
    return [str(n), ",".join(map(str, r["cores"])), f"{r['fps']:.1f}", f"{lat['p50']:.1f}",
            f"{lat['p99']:.1f}", f"{r['cpu_pct']:.0f}", f"{mb:.0f}" if mb else "–",
            f"{r['vs_baseline']:.2f}" if "vs_baseline" in r else "–",
            f"{ratio:.2f}" if ratio is not None else "–"]


def format_runtimes(out: dict[str, Any]) -> list[str]:
    base = out["baseline_fps"]
    w = 36
    lines = ["Runtimes: the model alone (one forward pass; 1 thread on the inference cores, 2 on all "
             "cores) and the pipeline (fast source, one inference worker with as many threads)",
             f"{'run':<{w}} {'thr':>3} {'cores':<6} {'fps':>6} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'CPU %':>6} {'inf MB':>7} {'x base':>7} {'2t/1t':>6}"]
    for rt, kind, label, n, r in _rows(out):
        name = f"{out['runtimes'][rt]['version'] or markdown.runtime_name(rt)}, {label}"
        if not kind:
            lines.append(f"{markdown.runtime_name(rt) + ':':<{w}} {r['missing']}")
        elif "error" in r:
            lines.append(f"{name:<{w}} {n:>3} failed: {r['error']}")
        else:
            c = _cells(out, rt, kind, n, r)
            lines.append(f"{name:<{w}} {c[0]:>3} {c[1]:<6} {c[2]:>6} {c[3]:>7} {c[4]:>7} {c[5]:>6} "
                         f"{c[6]:>7} {c[7]:>7} {c[8]:>6}")
    lines += [f"x base: fps over the baseline, torch's model alone with 1 thread in this run "
              f"({base:.1f} fps)" if base else "x base: no baseline (torch's model alone, 1 thread, "
              "did not run)",
              "2t/1t: the runtime's fps with 2 threads over its fps with 1, the same run kind",
              "p50/p99: model alone, one forward pass; pipeline, capture start to result (e2e)",
              "CPU %: 100 = one core (the model-alone process; the pipeline's whole process tree); "
              "inf MB: RSS of the process running the model (model alone: that process; pipeline: "
              "the inference worker)"]
    shared = [markdown.runtime_name(rt) for rt, kind, _, n, r in _rows(out)
              if kind == "model" and n == 1 and r.get("cpu_pct", 100) < 90]
    if shared:  # one thread alone in a loop should use a whole core
        lines.append(f"warning: the model alone with 1 thread got under 90% of a core ({', '.join(shared)}): "
                     "something else ran on these cores, so the figures are unreliable")
    return lines


def markdown_runtimes(out: dict[str, Any]) -> list[str]:
    """The runtimes table as markdown, every row with its runtime and version, date, machine."""
    rows = []
    for rt, kind, label, n, r in _rows(out):
        name = f"{markdown.runtime_name(rt)}, {label}" + (" (one pass)" if kind == "model" else " (e2e)")
        if not kind:
            rows.append([f"{markdown.runtime_name(rt)}: {r['missing']}", *["–"] * 8,
                         *markdown.provenance(rt)])
        elif "error" in r:
            rows.append([name, str(n), f"failed: {r['error']}", *["–"] * 6, *markdown.provenance(rt)])
        else:
            c = _cells(out, rt, kind, n, r)
            rows.append([name, *c[:3], f"{c[3]} / {c[4]}", *c[5:], *markdown.provenance(rt)])
    base = out["baseline_fps"]
    return [markdown.table(["run", "threads", "cores", "fps", "p50 / p99 ms", "CPU %", "inf MB",
                            f"× torch 1 thread alone ({base:.1f} fps)" if base else "× torch 1 thread alone",
                            "2 threads / 1", *markdown.PROVENANCE], rows)]

"""`tools.bench.pipeline --cost`: what the pipeline costs per frame around the model, and its five targets,
each measured side by side in one run and printed as a ratio.

1. Components (tools/bench/kit/components.py): every piece of the per-frame path on its own,
   single-threaded on one core: the work (decode, preprocess, model) and the plumbing
   (descriptors, a hop and its wake-up, the result, the hub, stats).
2. 30 fps: the single loop (the tutorial's, with the same onnxruntime session, 1 thread) and
   the pipeline (configs/video.toml played at 30 fps), in turns, `--cost-rounds` times: CPU per
   classified frame of each process, and end-to-end latency. Target: CPU <= 1.05x the loop's;
   latency p50 <= the loop's, p99 <= p50 + 3 ms.
3. A file decoded as fast as possible, in the layout the pipeline picks for it, against the
   2-core limit 2 / (decode + preprocess + model), those measured single-threaded as in step 1
   just before and just after the run. Target >= 0.85.
4. Cameras: N live 30 fps sources (the same video each, looping) in the layout the pipeline
   picks for several sources; served in full = every source >= 99% of its frames classified and
   end-to-end p99 <= 50 ms. Target: N >= 0.9x the cameras the single loop's CPU per frame allows
   on this box's cores. N starts at that target and steps down until served in full.
5. Accuracy: top-1 on the labelled photos with the pipeline's preprocessing and with
   torchvision's eval transform, the same onnxruntime session; and the preprocessing time,
   today's against the OpenCV area resize it replaced. Target: within one photo, no slower.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from tools.assets import ROOT
from tools.bench.kit.common import PACED_FPS, child_env, progress, spread
from tools.bench.kit.pipeline_run import run_pipeline

ORT = "onnxruntime"
SERVED_SHARE = 0.99
SERVED_P99_MS = 50.0


class StageCpu:
    """A `during` hook for run_pipeline: CPU seconds of each process of the tree over the
    counted window, by stage name (the supervisor as "supervisor")."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def __call__(self, pids: list[int]) -> Callable[[], None]:
        import psutil

        procs: dict[str, Any] = {}
        for pid in pids:
            try:
                p = psutil.Process(pid)
                line = p.cmdline()
            except psutil.Error:
                continue
            if "--stage" in line:
                procs[line[line.index("--stage") + 1]] = p
            elif "pipeline.cli.up" in line:
                procs["supervisor"] = p

        def total(p: Any) -> float:
            try:
                t = p.cpu_times()
                return t.user + t.system
            except psutil.Error:
                return 0.0

        start = {name: total(p) for name, p in procs.items()}

        def end() -> None:
            self.cpu = {name: total(p) - start[name] for name, p in procs.items()}
        return end


def stage_kind(name: str) -> str:
    return name.split(".")[0]


def components(b: Any, work_only: bool = False) -> dict[str, Any]:
    core = b.all_cores[-1]
    progress(f"cost 1. components, single-threaded on core {core}"
             f"{' (decode, preprocess, model)' if work_only else ''} ...")
    args = {"core": core, "video": b.video, "onnx": b.onnx, "work_only": work_only}
    proc = subprocess.run([sys.executable, "-m", "tools.bench.kit.components", json.dumps(args)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit("bench: the components run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def paced(b: Any, rounds: int) -> dict[str, Any]:
    """The single loop and the pipeline at 30 fps, in turns."""
    loops, pipes = [], []
    for i in range(rounds):
        progress(f"cost 2. 30 fps, round {i + 1}/{rounds}: the single loop ...")
        loop = b.baseline("tutorial", runtime=ORT, threads=1, fps=PACED_FPS)
        loop["cpu_ms_per_frame"] = loop["cpu_pct"] * 10 / loop["fps"]
        loops.append(loop)
        progress(f"cost 2. 30 fps, round {i + 1}/{rounds}: the pipeline ...")
        hook = StageCpu()
        res = b.pipeline(False, runtime=ORT, during=hook)
        frames = max(1, res["frames"])
        res["stage_cpu_ms"] = {k: round(v * 1000 / frames, 3) for k, v in sorted(hook.cpu.items())}
        res["cpu_ms_per_frame"] = sum(hook.cpu.values()) * 1000 / frames
        pipes.append(res)
    ratios = [p["cpu_ms_per_frame"] / lo["cpu_ms_per_frame"] for p, lo in zip(pipes, loops)]
    return {"loop": loops, "pipeline": pipes, "cpu_ratio": statistics.median(ratios),
            "cpu_ratios": [round(r, 3) for r in ratios]}


def fast_file(b: Any) -> dict[str, Any]:
    """The pipeline's rate against the limit measured just before and just after it (the
    machine's speed drifts over minutes: the mean of the two)."""
    before = components(b, work_only=True)
    progress("cost 3. a file decoded as fast as possible, the layout the pipeline picks ...")
    hook = StageCpu()
    res = b.pipeline(True, runtime=ORT, during=hook)
    after = components(b, work_only=True)
    work_ms = sum(p[k]["cpu_us"] for p in (before, after)
                  for k in ("decode", "preprocess", "model")) / 2000
    cores = len(b.all_cores)
    limit = cores * 1000 / work_ms
    frames = max(1, res["frames"])
    res["stage_cpu_ms"] = {k: round(v * 1000 / frames, 3) for k, v in sorted(hook.cpu.items())}
    return {"run": res, "work_ms": round(work_ms, 3), "limit_fps": round(limit, 1),
            "ratio": res["fps"] / limit, "cores": cores}


def cameras_config(path: Path, b: Any, n: int) -> Path:
    lines = ['name = "bench-cameras"']
    for i in range(n):
        lines += ["[[sources]]", 'kind = "video"', f'id = "cam{i + 1}"', f'path = "{b.video}"',
                  "loop = true", "realtime = true", f"fps = {PACED_FPS:g}"]
    lines += ["[model]", f'weights = "{b.onnx}"', f'runtime = "{ORT}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def served(res: dict[str, Any], n: int, duration: float) -> dict[str, Any]:
    by_source: dict[str, list[float]] = {}
    for r in res["results"]:
        t = r["t"]
        by_source.setdefault(r["source"], []).append((t["inference_end"] - t["capture_start"]) / 1e6)
    want = PACED_FPS * duration
    shares = [len(by_source.get(f"cam{i + 1}", [])) / want for i in range(n)]
    p99s = [spread(v)["p99"] for v in by_source.values()] or [math.inf]
    worst_share, worst_p99 = min(shares), max(p99s)
    return {"sources": n, "worst_share": round(worst_share, 4), "worst_p99_ms": worst_p99,
            "fps": res["fps"], "cpu_pct": res["cpu_pct"],
            "full": worst_share >= SERVED_SHARE and worst_p99 <= SERVED_P99_MS}


def cameras(b: Any, loop_cpu_ms: float) -> dict[str, Any]:
    cores = len(b.all_cores)
    allowed = cores * 1000 / (loop_cpu_ms * PACED_FPS)  # cameras the loop's CPU per frame allows
    n = max(1, math.ceil(0.9 * math.floor(allowed)))
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-cameras-") as tmp:
        while n >= 1:
            progress(f"cost 4. {n} live {PACED_FPS:g} fps sources, the layout the pipeline picks ...")
            config = cameras_config(Path(tmp) / f"cameras{n}.toml", b, n)
            res = run_pipeline(config, list(b.args.set), b.args.duration)
            runs.append(served(res, n, b.args.duration))
            if runs[-1]["full"] or len(runs) >= 3:
                break
            n -= 1
    best = max((r["sources"] for r in runs if r["full"]), default=0)
    return {"allowed": round(allowed, 2), "allowed_whole": math.floor(allowed), "runs": runs,
            "served_in_full": best, "ratio": best / max(1, math.floor(allowed))}


def accuracy(b: Any) -> dict[str, Any]:
    progress("cost 5. top-1 on the labelled photos: the pipeline's preprocessing against "
             "torchvision's eval transform ...")
    images = Path(b.args.images)
    if not (images / "labels.csv").is_file():
        return {"skipped": f"no {images / 'labels.csv'}"}
    code = ACCURACY_CHILD.format(images=str(images), onnx=b.onnx)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit("bench: the accuracy run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ACCURACY_CHILD = """
import csv, json
import cv2, numpy as np
from pathlib import Path
from PIL import Image
from torchvision import transforms
from workers.inference.classifier import OnnxClassifier
from workers.preprocess.transform import Preprocessor
root = Path({images!r})
rows = list(csv.DictReader(open(root / "labels.csv")))
model = OnnxClassifier({onnx!r}, 1)
tv = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
prep = Preprocessor()
x = np.empty((1, 3, 224, 224), np.float32)
ours = theirs = agree = 0
for r in rows:
    label = int(r["class_index"])
    a = int(model.logits(tv(Image.open(root / r["file"]).convert("RGB")).numpy()[None]).argmax())
    prep(cv2.imread(str(root / r["file"])), x[0])
    b = int(model.logits(x).argmax())
    theirs += a == label; ours += b == label; agree += a == b
print(json.dumps({{"photos": len(rows), "pipeline": ours / len(rows),
                  "torchvision": theirs / len(rows), "same_top1": agree / len(rows)}}))
"""


def section(b: Any, main: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    out: dict[str, Any] = {"components": components(b)}
    out["paced"] = paced(b, b.args.cost_rounds)
    out["fast"] = fast_file(b)
    loop_cpu = statistics.median(lo["cpu_ms_per_frame"] for lo in out["paced"]["loop"])
    out["cameras"] = cameras(b, loop_cpu)
    out["accuracy"] = accuracy(b)
    return out, report(out)


ROWS = (("decode", "decode (the capture stage's source)", "work"),
        ("preprocess", "preprocess: PIL resize of the crop's box + normalise", "work"),
        ("preprocess_before", "  before: OpenCV area resize + normalise", "work"),
        ("model", "model (onnxruntime, 1 thread)", "work"),
        ("descriptors", "frame + tensor descriptors: pack + unpack", "plumbing"),
        ("hop", "one hop: send, wake-up, receive (x3 a frame)", "plumbing"),
        ("result", "result: top-5, build, pack", "plumbing"),
        ("hub", "results hub: unpack, check, stamp, pack", "plumbing"),
        ("stats", "stats: meters per frame + a message a second", "plumbing"))


def report(out: dict[str, Any]) -> list[str]:
    c, p, f, cam, acc = (out[k] for k in ("components", "paced", "fast", "cameras", "accuracy"))
    lines = ["Cost per frame, single-threaded on one core (CPU / wall us):"]
    lines += [f"  {label:<48} {c[key]['cpu_us']:8.1f} "
              + (f"{c[key]['wall_us']:8.1f}" if "wall_us" in c[key] else f"{'-':>8}")
              for key, label, _ in ROWS if key in c]
    loops, pipes = p["loop"], p["pipeline"]
    loop_cpu = statistics.median(lo["cpu_ms_per_frame"] for lo in loops)
    pipe_cpu = statistics.median(pi["cpu_ms_per_frame"] for pi in pipes)
    kinds: dict[str, list[float]] = {}
    for pi in pipes:
        per: dict[str, float] = {}
        for name, ms in pi["stage_cpu_ms"].items():
            per[stage_kind(name)] = per.get(stage_kind(name), 0.0) + ms
        for k, ms in per.items():
            kinds.setdefault(k, []).append(ms)
    work = {"capture": c["decode"]["cpu_us"] / 1000, "preprocess": c["preprocess"]["cpu_us"] / 1000,
            "inference": c["model"]["cpu_us"] / 1000, "supervisor": 0.0}
    lines += ["", f"30 fps, CPU per classified frame (median of {len(pipes)} rounds, in turns with the "
              f"single loop): pipeline {pipe_cpu:.2f} ms, single loop {loop_cpu:.2f} ms",
              f"  {'process':<12} {'CPU ms':>7} {'of it work':>10} {'the rest':>8}"]
    for k in ("capture", "preprocess", "inference", "supervisor"):
        if k in kinds:
            ms = statistics.median(kinds[k])
            lines.append(f"  {k:<12} {ms:7.2f} {work[k]:10.2f} {ms - work[k]:8.2f}")
    lp50 = statistics.median(lo["latency_ms"]["p50"] for lo in loops)
    pp50 = statistics.median(pi["latency_ms"]["p50"] for pi in pipes)
    pp99 = statistics.median(pi["latency_ms"]["p99"] for pi in pipes)
    fr = f["run"]
    lines += ["", "Targets (each a ratio of figures measured in this run):",
              f"  CPU per frame at 30 fps: pipeline / single loop = {p['cpu_ratio']:.3f} "
              f"(target <= 1.05; rounds {p['cpu_ratios']})",
              f"  a file as fast as possible: {fr['fps']:.0f} fps in the picked layout / 2-core limit "
              f"{f['limit_fps']:.0f} fps ({f['cores']} cores / {f['work_ms']:.2f} ms of decode + "
              f"preprocess + model) = {f['ratio']:.3f} (target >= 0.85)",
              f"  live 30 fps sources served in full: {cam['served_in_full']} / {cam['allowed_whole']} "
              f"the single loop's CPU allows ({cam['allowed']:.1f}) = {cam['ratio']:.2f} (target >= 0.9)"]
    lines += [f"      {r['sources']} sources: worst source {r['worst_share']:.1%} of its frames, "
              f"p99 {r['worst_p99_ms']:.1f} ms, {r['fps']:.0f} results/s, CPU {r['cpu_pct']:.0f}%"
              f"{'  (in full)' if r['full'] else ''}" for r in cam["runs"]]
    lines.append(f"  latency at 30 fps: pipeline p50 {pp50:.2f} ms vs single loop {lp50:.2f} ms "
                 f"(target <=), p99 {pp99:.2f} = p50 {pp99 - pp50:+.2f} ms (target <= +3)")
    if "skipped" in acc:
        lines.append(f"  accuracy: skipped ({acc['skipped']})")
    else:
        photos = acc["photos"]
        gap = round((acc["torchvision"] - acc["pipeline"]) * photos)
        lines.append(f"  top-1 on {photos} photos: pipeline {acc['pipeline']:.3f}, torchvision's eval "
                     f"transform {acc['torchvision']:.3f} ({gap:+d} photos; target within one), "
                     f"same top-1 on {acc['same_top1']:.1%}; preprocessing "
                     f"{c['preprocess']['cpu_us'] / c['preprocess_before']['cpu_us']:.2f}x the "
                     "area resize's time (target <= 1)")
    return lines

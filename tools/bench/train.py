"""pipeline-train on this machine: training time and peak memory for 50, 200 and 1000 images, and
accuracy against examples per class on two state tasks of the asset videos, trained on one part
of a video and evaluated on another.

    .venv/bin/python -m tools.bench.train [--sizes 50 200 1000] [--shots 5 10 20 50]

Time and memory are those of `pipeline-train` run as a process of its own (wall time; peak RSS
from wait4). The datasets are frames of the videos written as JPEG files named as the collect
consumer names them. Accuracy is measured on every second labelled frame of the evaluation part,
decoded from the video (not JPEG), preprocessed as the pipeline does, through the shipped int8
backbone and the trained file's own head: what the deployed file computes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np

from tests.support.video_truth import BOTTLE, PERSON, frames_in  # the tasks' truth, one place
from tools.assets import ROOT, VIDEOS


def collect_name(frame: int, fps: int) -> str:
    t = datetime(2025, 3, 1, 8, 0, tzinfo=timezone.utc) + timedelta(seconds=frame / fps)
    return f"cam-{t.strftime('%Y%m%d-%H%M%S.%f')}-f{frame}.jpg"


def read_frames(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out, i = {}, 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if i in wanted:
            out[i] = image
        i += 1
    cap.release()
    return out


def evenly(frames: list[int], n: int) -> list[int]:
    """n frames spread evenly over the list (all of them when there are fewer)."""
    if n >= len(frames):
        return list(frames)
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, n).round()]


def write_dataset(root: Path, chosen: dict[str, list[int]], images: dict[int, np.ndarray],
                  fps: int) -> Path:
    for cls, frames in chosen.items():
        (root / cls).mkdir(parents=True)
        for f in frames:
            cv2.imwrite(str(root / cls / collect_name(f, fps)), images[f], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return root


# Peak RSS is read in a small process that starts pipeline-train and waits for it: a child's
# maxrss also counts the memory of the process it was forked from (this one, holding the frames).
MEASURE = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, p.stderr.strip()[-300:])
"""


def run_training(data: Path, out: Path, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of pipeline-train as a process of its own."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "pipeline.cli.train",
                        str(data), "--out", str(out), "--quiet", *args],
                       cwd=ROOT, capture_output=True, text=True, check=True)
    seconds = time.monotonic() - t0
    rss, rc, err = p.stdout.split(" ", 2)
    if rc != "0":
        raise SystemExit(f"pipeline-train failed: {err}")
    return seconds, int(rss) / 1024


def head_of(model: Path) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    return inits["head.weight"], inits["head.bias"]


def bench_sizes(sizes: list[int], tmp: Path) -> None:
    task = BOTTLE
    pools = {c: frames_in(task["train"][c] + task["eval"][c]) for c in task["train"]}
    images = read_frames(VIDEOS / task["file"], {f for fs in pools.values() for f in fs})
    print(f"training time and peak memory (pipeline-train, default options: --augment 4 --epochs 30, "
          f"{len(os.sched_getaffinity(0))} cores), frames of {task['file']}")
    print(f"{'images':>7}  {'per class':>17}  {'seconds':>8}  {'peak RSS MB':>11}")
    for n in sizes:
        empty = min(n // 2, len(pools["empty"]))
        chosen = {"bottle": evenly(pools["bottle"], n - empty), "empty": evenly(pools["empty"], empty)}
        data = write_dataset(tmp / f"size{n}", chosen, images, task["fps"])
        seconds, rss = run_training(data, tmp / f"size{n}.onnx")
        per_class = "/".join(str(len(v)) for v in chosen.values())
        print(f"{n:>7}  {per_class:>17}  {seconds:>8.1f}  {rss:>11.0f}", flush=True)


def bench_shots(shots: list[int], augments: list[int], tmp: Path) -> None:
    from pipeline.train.features import FeatureExtractor, default_threads
    from pipeline.train.head import softmax

    extractor = FeatureExtractor("crop", default_threads())
    print("\naccuracy on the evaluation part against examples per class (trained on the other part; "
          "balanced = mean of the per-class recalls)")
    for name, task in (("bottle/empty", BOTTLE), ("person absent/present", PERSON)):
        classes = sorted(task["train"])
        train_pool = {c: frames_in(task["train"][c]) for c in classes}
        eval_frames = {c: frames_in(task["eval"][c])[::2] for c in classes}
        images = read_frames(VIDEOS / task["file"],
                             {f for fs in [*train_pool.values(), *eval_frames.values()] for f in fs})
        ev = [(f, k) for k, c in enumerate(classes) for f in eval_frames[c]]
        x = extractor.features([images[f] for f, _ in ev])
        y = np.array([k for _, k in ev])
        print(f"{name} ({task['file']}): evaluated on "
              + ", ".join(f"{len(eval_frames[c])} {c}" for c in classes))
        print(f"  {'per class':>9}  " + "  ".join(f"{'augment ' + str(a):>24}" for a in augments))
        for k in shots:
            cells = []
            for a in augments:
                chosen = {c: evenly(train_pool[c], k) for c in classes}
                data = write_dataset(tmp / f"{task['file']}-{k}-{a}", chosen, images, task["fps"])
                model = tmp / f"{task['file']}-{k}-{a}.onnx"
                seconds, _ = run_training(data, model, "--augment", str(a))
                w, b = head_of(model)
                predicted = softmax(x @ w.T + b).argmax(axis=1)
                accuracy = float(np.mean(predicted == y))
                balanced = float(np.mean([np.mean(predicted[y == i] == i) for i in range(len(classes))]))
                cells.append(f"{accuracy:6.1%} (bal. {balanced:6.1%}) {seconds:3.0f}s")
            print(f"  {k:>9}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 1000])
    ap.add_argument("--shots", type=int, nargs="*", default=[5, 10, 20, 50])
    ap.add_argument("--augments", type=int, nargs="*", default=[0, 4])
    args = ap.parse_args()
    for task in (BOTTLE, PERSON):
        if not (VIDEOS / task["file"]).exists():
            raise SystemExit(f"missing asset: {VIDEOS / task['file']}")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        if args.sizes:
            bench_sizes(args.sizes, Path(tmp))
        if args.shots:
            bench_shots(args.shots, args.augments, Path(tmp))


if __name__ == "__main__":
    main()

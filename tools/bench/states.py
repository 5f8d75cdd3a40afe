"""State events of a trained model against the truth on both asset videos: a model trained with
pipeline-train on the training part of a video, the pipeline run over the whole video with it, its
results made states as a consumer makes them, and compared with what the video shows.

    .venv/bin/python -m tools.bench.states [--step 3] [--states consecutive:3 majority:5] [--before 1]

Per video: every `--step`th frame of the training part (tests/support/video_truth.py) is written as JPEG,
named as the collect consumer names its files, and trained on with pipeline-train's defaults. The
pipeline then classifies every frame of the video once (realtime = false, both edges "block",
`--record`), and the recorded results go, in frame order, through `pipeline.client.states.Tracker`
with each state config. For each true transition: the frame where the state changed to the new
class (the first change to it from `--before` seconds of video (1) before the transition to the next
transition), its delay from the transition's first frame, or "missed"; spurious changes are the
other changes (the first decision after the start is none). State accuracy: the share of the
frames of the evaluation part (from its first frame to the end; frames during a transition left
out) whose state is the truth; raw top-1 accuracy is over the same frames.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tomli_w

from pipeline.client.result import Result
from pipeline.client.states import Tracker
from tests.support.video_truth import BOTTLE, PERSON, frames_in, label_at, transitions
from tools.assets import ROOT, VIDEOS
from tools.bench.train import read_frames, write_dataset

TASKS = {"bottle": BOTTLE, "person": PERSON}


def train(task: dict, step: int, tmp: Path) -> tuple[Path, dict[str, int]]:
    """pipeline-train on every `step`th frame of the task's training part: the model file and the
    images per class."""
    chosen = {cls: frames_in(ranges)[::step] for cls, ranges in task["train"].items()}
    images = read_frames(VIDEOS / task["file"], {f for fs in chosen.values() for f in fs})
    data = write_dataset(tmp / "data", chosen, images, task["fps"])
    model = tmp / f"{Path(task['file']).stem}.onnx"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.train", str(data), "--out", str(model),
                        "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"pipeline-train failed: {p.stderr.strip()}")
    return model, {cls: len(fs) for cls, fs in chosen.items()}


def classify_every_frame(task: dict, model: Path, tmp: Path) -> list[dict]:
    """The pipeline's results for every frame of the video, in frame order."""
    config = tmp / "run.toml"
    config.write_text(tomli_w.dumps({
        "name": "benchstates",
        "source": {"kind": "video", "path": str(VIDEOS / task["file"]), "realtime": False},
        "model": {"weights": str(model), "runtime": "onnxruntime"},
        "edges": {"frames": {"policy": "block"}, "tensors": {"policy": "block"}},
    }))
    record = tmp / "results.jsonl"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--quiet", "--record",
                        str(record)], cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"pipeline-up failed: {p.stderr.strip()[-500:]}")
    results = sorted((json.loads(line) for line in record.read_text().splitlines() if line.strip()),
                     key=lambda r: r["seq"])
    frames = [r["frame"] for r in results]
    if frames != list(range(len(frames))):
        raise SystemExit(f"the record does not hold every frame once ({len(frames)} results)")
    return results


def states(results: list[dict], smoothing: str, window: int) -> list[str]:
    """The source's state after each result, replayed through the Tracker with this config."""
    tracker = Tracker({"name": "benchstates", "source": {
        "kind": "video", "path": "video", "state": {"smoothing": smoothing, "window": window}}})
    out = []
    for message in results:
        r = Result.from_message(message)
        tracker.update(r)
        out.append(tracker.state(r.source).label)
    return out


def compare(task: dict, per_frame: list[str], before_s: float
            ) -> tuple[list[tuple], list[tuple[int, str, str]]]:
    """(each true transition with the frame the state changed, or None; the spurious changes)."""
    early = round(before_s * task["fps"])
    changes = [(f, old, new) for f, (old, new) in enumerate(zip(per_frame, per_frame[1:]), 1)
               if old != new and old != "none"]
    true = transitions(task)
    matched: set[int] = set()
    found = []
    for k, (a, c, old, new) in enumerate(true):
        until = true[k + 1][0] if k + 1 < len(true) else len(per_frame)
        hit = next((f for f, _, to in changes if to == new and a - early <= f < until and f not in matched),
                   None)
        if hit is not None:
            matched.add(hit)
        found.append((a, c, old, new, hit))
    spurious = [ch for ch in changes if ch[0] not in matched]
    return found, spurious


def evaluation_frames(task: dict, n: int) -> list[int]:
    start = min(a for ranges in task["eval"].values() for a, _ in ranges)
    return [f for f in range(start, n) if label_at(task, f) is not None]


def report(task: dict, results: list[dict], configs: list[tuple[str, int]], before_s: float) -> None:
    fps = task["fps"]
    evaluated = evaluation_frames(task, len(results))
    top1 = sum(results[f]["top"][0]["label"] == label_at(task, f) for f in evaluated) / len(evaluated)
    print(f"  raw top-1 on the evaluation part (frames {evaluated[0]}-{evaluated[-1]}, {len(evaluated)} "
          f"outside transitions): {top1:.1%}")
    for smoothing, window in configs:
        per_frame = states(results, smoothing, window)
        found, spurious = compare(task, per_frame, before_s)
        accuracy = sum(per_frame[f] == label_at(task, f) for f in evaluated) / len(evaluated)
        print(f"  state {smoothing} window {window}: state = truth on {accuracy:.1%} of the evaluation "
              f"part; missed {sum(hit is None for *_, hit in found)} of {len(found)} transitions; "
              f"spurious changes {len(spurious)}"
              + (f" ({', '.join(f'{f}: {old}->{new}' for f, old, new in spurious)})" if spurious else ""))
        print(f"    {'true transition':<28} {'frames':>9} {'changed at':>10} {'delay':>16}")
        for a, c, old, new, hit in found:
            where = f"{a}" if a == c else f"{a}-{c - 1}"
            delay = "missed" if hit is None else f"{hit - a:+d} fr {(hit - a) / fps:+.2f} s"
            print(f"    {old + ' -> ' + new:<28} {where:>9} {'-' if hit is None else hit:>10} {delay:>16}")


def parse_config(text: str) -> tuple[str, int]:
    smoothing, _, window = text.partition(":")
    if smoothing not in ("consecutive", "majority") or not window.isdigit() or int(window) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give SMOOTHING:WINDOW, e.g. consecutive:3 or majority:5")
    return smoothing, int(window)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step", type=int, default=3, help="train on every STEPth frame of the training part")
    ap.add_argument("--states", type=parse_config, nargs="+",
                    default=[("consecutive", 3), ("majority", 5)], metavar="SMOOTHING:WINDOW",
                    help="state configs to replay (default: consecutive:3 majority:5)")
    ap.add_argument("--before", type=float, default=1.0, metavar="S",
                    help="a change up to S seconds of video before a transition is its change (default 1)")
    ap.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    args = ap.parse_args()
    for name in args.tasks:
        if not (VIDEOS / TASKS[name]["file"]).exists():
            raise SystemExit(f"missing asset: {VIDEOS / TASKS[name]['file']}")
    for name in args.tasks:
        task = TASKS[name]
        with tempfile.TemporaryDirectory(prefix="bench-states-") as tmp:
            model, images = train(task, args.step, Path(tmp))
            results = classify_every_frame(task, model, Path(tmp))
        print(f"{name} ({task['file']}, {len(results)} frames at {task['fps']} fps): trained on "
              + ", ".join(f"{n} {cls}" for cls, n in images.items())
              + " (pipeline-train defaults)", flush=True)
        report(task, results, args.states, args.before)


if __name__ == "__main__":
    main()

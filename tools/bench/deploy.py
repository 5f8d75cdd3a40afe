"""What does switching a running pipeline's model cost? The longest gap between results around
each switch, against the gaps of the same run without a switch.

    .venv/bin/python -m tools.bench.deploy --model garage.onnx [--switches 6] [--set KEY=VALUE ...]

Plays the bottle clip as a 30 fps camera (configs/video.toml,
onnxruntime), then deploys `--model` and the shipped model in turn, a few seconds apart, with
`pipeline-deploy`, and reads the recorded results: for each switch, the gap between the last
result of the old model and the first of the new one (when they were finished, `inference_end`),
and the same for the two frames' capture times; beside them the median and p99 gap of the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.assets import CONFIGS, ROOT, default_video


def lines(path: Path) -> int:
    try:
        return sum(1 for _ in open(path))
    except FileNotFoundError:
        return 0


def wait_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while lines(path) < n:
        if time.monotonic() > deadline:
            sys.exit(f"tools.bench.deploy: fewer than {n} results after {timeout:.0f} s")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model file to switch to (e.g. from pipeline-train)")
    ap.add_argument("--switches", type=int, default=6)
    ap.add_argument("--every", type=int, default=90, help="results between switches")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    video = default_video()
    if not video.is_file():
        sys.exit(f"tools.bench.deploy: no video found ({video})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    record = tmp / "results.jsonl"
    name = "benchdeploy"
    sets = ["source.loop=true", f"source.path={video}", "model.runtime=onnxruntime", *args.overrides]
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"), "--name", name,
           "--quiet", "--record", str(record), *(a for s in sets for a in ("--set", s))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = []
    try:
        wait_lines(record, args.every)
        for i in range(args.switches):
            target = str(Path(args.model).resolve()) if i % 2 == 0 else "builtin"
            t = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "pipeline.cli.deploy", "--name", name, target],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                sys.exit(f"tools.bench.deploy: {p.stderr.strip()}")
            took.append(time.monotonic() - t)
            wait_lines(record, lines(record) + args.every)
    finally:
        proc.send_signal(2)
        proc.communicate(timeout=30)
    results = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    ends = [r["t"]["inference_end"] / 1e6 for r in results]
    caps = [r["t"]["capture"] / 1e6 for r in results]
    switch_at = [i for i in range(1, len(results)) if results[i]["model_id"] != results[i - 1]["model_id"]]
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    rest = [g for i, g in enumerate(gaps, 1) if i not in switch_at]
    q = statistics.quantiles(rest, n=100)
    print(f"{len(results)} results, {len(switch_at)} switches; pipeline-deploy took "
          f"{statistics.median(took):.2f} s (median, request to reply)")
    print(f"gap between results without a switch: median {statistics.median(rest):.1f} ms, "
          f"p99 {q[98]:.1f} ms, max {max(rest):.1f} ms")
    for i in switch_at:
        print(f"switch to {results[i]['model']:<20} result gap {ends[i] - ends[i - 1]:6.1f} ms, "
              f"capture gap {caps[i] - caps[i - 1]:6.1f} ms")
    worst = max(ends[i] - ends[i - 1] for i in switch_at)
    print(f"longest gap at a switch: {worst:.1f} ms = {worst / statistics.median(rest):.2f}x the median gap")
    return 0


if __name__ == "__main__":
    sys.exit(main())

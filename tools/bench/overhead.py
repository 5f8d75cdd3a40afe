"""What does watching cost? Pipeline throughput with status lines, the Prometheus endpoint
(scraped every second) and pipeline-trace all on, against the same run with them all off.

    .venv/bin/python -m tools.bench.overhead [--duration 15] [--pairs 2] [--json out.json]

Runs alternate off/on for `--pairs` pairs on the bottle clip decoded as fast as possible,
so slow drift of the shared machine hits both sides; the ratio on/off is printed (target >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tools.assets import CONFIGS, ROOT, WEIGHTS, default_video, missing

VIDEO = default_video()


def scrape_every_second(url_holder: list[str], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        if url_holder:
            try:
                urllib.request.urlopen(url_holder[0], timeout=2).read()
            except OSError:
                pass


def run(on: bool, duration: float, tmp: Path, i: int) -> float:
    name = f"overhead{i}"
    summary = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"), "--name", name,
           "--duration", str(duration), "--summary-json", str(summary),
           "--set", f"source.path={VIDEO}", "--set", f"model.weights={WEIGHTS}",
           "--set", "source.loop=true", "--set", "source.realtime=false"]
    cmd += ["--metrics-port", "0"] if on else ["--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url: list[str] = []
    stop = threading.Event()
    trace = None
    if on:
        threading.Thread(target=scrape_every_second, args=(url, stop), daemon=True).start()
        for line in proc.stderr:
            if line.startswith("metrics: "):
                url.append(line.split()[1])
            if line.startswith("running:"):
                break
        trace = subprocess.Popen([sys.executable, "-m", "pipeline.cli.trace", "--name", name,
                                  "--seconds", str(duration + 5), "--out", str(tmp / "t.json")],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.communicate()
    stop.set()
    if trace:
        trace.wait(timeout=60)
    return json.loads(summary.read_text())["fps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    for p in missing(VIDEO):
        print(f"tools.bench.overhead: missing asset {p}", file=sys.stderr)
        return 2
    fps: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for mode in ("off", "on"):
                print(f"pair {i + 1}: observability {mode} ...", file=sys.stderr, flush=True)
                fps[mode].append(run(mode == "on", args.duration, Path(tmp), 2 * i + (mode == "on")))
                time.sleep(1)
    off, on = statistics.mean(fps["off"]), statistics.mean(fps["on"])
    print(f"fps off: {', '.join(f'{v:.1f}' for v in fps['off'])}  (mean {off:.2f})")
    print(f"fps on:  {', '.join(f'{v:.1f}' for v in fps['on'])}  (mean {on:.2f})")
    print(f"on/off = {on / off:.3f}  (status lines + /metrics scraped each second + pipeline-trace)")
    if args.json:
        Path(args.json).write_text(json.dumps({"fps": fps, "ratio": on / off}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

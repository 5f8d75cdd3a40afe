"""How fast does the pipeline recover from a dead or hung stage, and what does it cost?

    .venv/bin/python -m tools.bench.recovery [--trials 3] [--json out.json] [--set KEY=VALUE ...]

Plays the bottle clip as a 30 fps camera (configs/video.toml with its built-in model and
model.runtime unless `--set` says otherwise, e.g. `--set model.runtime=onnxruntime`) with every
stage on restart = "always", a 3 s watchdog and trials spaced so every restart gets the first
back-off (0.5 s); then for each stage in turn and each fault (SIGKILL; SIGSTOP = a hang) injects
the fault and measures, from the result stream: recovery time (fault to the first result of a
frame captured after the fault) and frames lost (sequence numbers skipped between the last result
before and the first after).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.assets import CONFIGS, ROOT, default_video

VIDEO = default_video()
WATCHDOG_S = 3.0
WINDOW_S = 5.0  # trials are spaced wider than this, so each restart gets the first back-off


def stage_pid(supervisor: int, stage: str) -> int:
    out = subprocess.run(["pgrep", "-P", str(supervisor), "-f", f"workers.stage --stage {stage} "],
                         capture_output=True, text=True).stdout.split()
    return int(out[0])


def measure(sub, supervisor: int, stage: str, fault: str) -> dict:
    """Inject one fault; returns recovery seconds and frames lost."""
    last = None
    while (r := sub.receive(timeout=5)) is not None:  # drain to the newest result
        last = r
        if time.monotonic_ns() - r.timestamps["inference_end"] < 50e6:
            break
    pid = stage_pid(supervisor, stage)
    t_fault = time.time()
    os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    while True:
        r = sub.receive(timeout=60)
        if r is None:
            raise RuntimeError(f"no result within 60 s after {fault} of {stage}")
        if r.captured_at > t_fault:
            recovered = time.time() - t_fault
            lost = r.seq - last.seq - 1 if last else 0
            break
    if fault == "stop":
        try:
            os.kill(pid, signal.SIGCONT)  # normally already killed by the watchdog
        except ProcessLookupError:
            pass
    return {"stage": stage, "fault": fault, "recovery_s": round(recovered, 3), "frames_lost": lost,
            "label": r.label}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to the pipeline, after the tool's own (repeatable)")
    args = ap.parse_args()
    from pipeline import attach
    from pipeline.transport.rundir import NotRunning

    sets = [f"source.path={VIDEO}", "source.loop=true",
            "capture.restart=always", "preprocess.restart=always", "inference.restart=always",
            f"supervision.watchdog_s={WATCHDOG_S}", "supervision.max_restarts=100",
            f"supervision.restart_window_s={WINDOW_S}", *args.set]
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(CONFIGS / "video.toml"),
           "--name", "recovery", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: nothing can block
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
    rows = []
    try:
        while True:
            try:
                sub = attach("recovery")
                break
            except NotRunning:
                if proc.poll() is not None:  # e.g. a bad --set
                    log.seek(0)
                    raise SystemExit(f"tools.bench.recovery: pipeline-up exited with {proc.returncode}:\n"
                                     f"{log.read()[-3000:]}") from None
                time.sleep(0.2)
        with sub:
            sub.receive(timeout=60)
            for stage in ("capture", "preprocess", "inference"):
                for fault in ("kill", "stop"):
                    for _ in range(args.trials):
                        print(f"{fault} {stage} ...", file=sys.stderr, flush=True)
                        rows.append(measure(sub, proc.pid, stage, fault))
                        time.sleep(WINDOW_S + 1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print(f"{'stage':<11} {'fault':<6} {'recovery p50':>13} {'max':>7} {'frames lost p50':>16} {'max':>5}")
    for stage in ("capture", "preprocess", "inference"):
        for fault in ("kill", "stop"):
            mine = [r for r in rows if r["stage"] == stage and r["fault"] == fault]
            rec = [r["recovery_s"] for r in mine]
            lost = [r["frames_lost"] for r in mine]
            print(f"{stage:<11} {fault:<6} {statistics.median(rec):12.2f}s {max(rec):6.2f}s "
                  f"{statistics.median(lost):16.0f} {max(lost):5d}")
    print(f"(watchdog {WATCHDOG_S:g} s; a 'stop' is a hang: SIGSTOP until the watchdog kills it"
          + "".join(f"; --set {s}" for s in args.set) + ")")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

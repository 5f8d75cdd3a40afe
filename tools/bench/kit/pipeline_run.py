"""One run of our pipeline (`pipeline-up` in a subprocess), measured like the baselines: results
recorded by the supervisor, the first seconds skipped, CPU and memory of the whole process tree,
and the memory of the inference stage process alone (the largest, with several workers)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.assets import ROOT
from tools.bench.kit.baselines import WARMUP_S
from tools.bench.kit.common import child_env, cpu_seconds, rss_mb, spread

STARTUP_TIMEOUT_S = 240.0


def tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return [pid]


def stage_rss_mb(pids: list[int], stage: str = "inference") -> float:
    """Resident memory of one stage's process alone, in MB: the largest of its workers
    ("inference.1", ...), found by the `--stage` of their command lines."""
    import psutil

    found = [0.0]
    for pid in pids:
        try:
            if f"--stage {stage}" in " ".join(psutil.Process(pid).cmdline()):
                found.append(rss_mb([pid]))
        except psutil.Error:
            pass
    return max(found)


def run_pipeline(config: Path, overrides: list[str], duration: float,
                 during: Any = None, warmup: float = WARMUP_S) -> dict[str, Any]:
    """Start the pipeline, count `duration` seconds of results after `warmup` seconds, stop it.

    `during(pids)` is called when counting starts (to start a disturbance) and may return a
    callable that ends it."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        record, summary_path = Path(tmp) / "results.jsonl", Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "pipeline.cli.up", str(config), "--quiet",
               "--record", str(record), "--summary-json", str(summary_path)]
        for item in overrides:
            cmd += ["--set", item]
        log = open(Path(tmp) / "pipeline.log", "w+")  # a file, not a pipe: nothing can block
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=log,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not (record.exists() and record.stat().st_size > 0):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"bench: pipeline-up did not produce results:\n"
                                     f"{log.read()[-3000:]}")
                time.sleep(0.05)
            time.sleep(warmup)
            pids = tree(proc.pid)
            end_disturbance = during(pids) if during else None
            t0_ns, t0, cpu0 = time.monotonic_ns(), time.monotonic(), cpu_seconds(pids)
            time.sleep(duration)
            t1_ns, t1, cpu = time.monotonic_ns(), time.monotonic(), cpu_seconds(pids) - cpu0
            rss, inference_rss = rss_mb(pids), stage_rss_mb(pids)
            if end_disturbance:
                end_disturbance()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:  # interrupted: let the supervisor clean up, then insist
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log.seek(0)
        out = log.read()
        log.close()
        if proc.returncode != 0:
            raise SystemExit(f"bench: pipeline-up exited with {proc.returncode}:\n{out[-3000:]}")
        summary = json.loads(summary_path.read_text())
        results = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    window = [r for r in results if r.get("type") == "result"
              and t0_ns <= r["t"]["inference_end"] <= t1_ns]
    latency = [(r["t"]["inference_end"] - r["t"]["capture_start"]) / 1e6 for r in window]
    age = [(r["t"]["inference_start"] - r["t"]["capture_start"]) / 1e6 for r in window]
    service = [(r["t"]["inference_end"] - r["t"]["inference_start"]) / 1e6 for r in window]
    wall = t1 - t0
    return {"fps": round(len(window) / wall, 2), "frames": len(window),
            "latency_ms": spread(latency), "age_ms": spread(age), "model_ms": spread(service),
            "capture_interval_ms": summary.get("capture_interval_ms", {}),
            "cpu_pct": round(100 * cpu / wall, 1), "rss_mb": rss, "inference_rss_mb": inference_rss,
            "drops": summary["drops"],
            "restarts": summary.get("restarts", {}), "tcp": summary.get("tcp", {}), "results": window}


def run_to_end(config: Path, overrides: list[str], record: str) -> None:
    """A pipeline on a finite source, to its end (the accuracy runs)."""
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(config), "--quiet", "--record", record]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"bench: pipeline-up failed:\n{proc.stderr[-3000:]}")

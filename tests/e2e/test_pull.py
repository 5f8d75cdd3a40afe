"""Sources without a clock are read on demand: nothing decoded in vain, every frame classified,
frames fresh when the model sees them, and no stall when a stage holding frames dies."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

from tests.support.assets import BOTTLE, need
from tests.support.processes import (
    MODEL_CORE,
    WORKER_CORES,
    read_jsonl,
    run_pipeline,
    stage_pid,
    start,
    wait_running,
)

FRAMES = 1189  # bottle-detection.mp4


def test_a_fast_file_is_read_on_demand_and_every_frame_classified(tmp_path, clean_machine):
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    p = run_pipeline("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set", MODEL_CORE,
                     "--set", "source.realtime=false", "--quiet", "--record", str(record),
                     "--summary-json", str(summary), "--name", "pullfast")
    assert p.returncode == 0, p.stderr
    assert "ready: video source read on demand," in p.stderr
    s = json.loads(summary.read_text())
    assert s["frames"] == {"captured": FRAMES, "preprocessed": FRAMES, "classified": FRAMES}
    assert all(n == 0 for edge in s["drops"].values() for n in edge.values()), s["drops"]
    results = read_jsonl(record)
    assert [r["seq"] for r in results] == list(range(1, FRAMES + 1))
    # Decoded just in time: a frame waits for the model far less than a model time (greedy
    # decoding into in-order edges would queue a frame behind every other slot's).
    age = statistics.median(r["t"]["inference_start"] - r["t"]["preprocess_end"] for r in results)
    service = statistics.median(r["t"]["inference_end"] - r["t"]["inference_start"] for r in results)
    assert age < 0.5 * service + 1e6, (age / 1e6, service / 1e6)


def test_a_paced_file_is_not_pulled(tmp_path, clean_machine):
    """A source with a clock keeps the newest-frame behaviour (and its policies)."""
    proc = start("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set", MODEL_CORE,
                 "--set", "source.fps=30",
                 "--name", "paced")
    try:
        lines = wait_running(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    ready = next(line for line in lines if line.startswith("ready:"))
    assert "video source," in ready and "on demand" not in ready


def test_two_workers_share_an_on_demand_source_every_frame_once(tmp_path, clean_machine):
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    p = run_pipeline("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set",
                     "source.realtime=false", "--set", "inference.workers=2", "--set",
                     f"inference.cores={WORKER_CORES}", "--quiet", "--record", str(record),
                     "--summary-json", str(summary), "--name", "pulltwo")
    assert p.returncode == 0, p.stderr
    results = read_jsonl(record)
    assert sorted(r["seq"] for r in results) == list(range(1, FRAMES + 1))
    assert {r["worker"] for r in results} == {"inference.1", "inference.2"}
    s = json.loads(summary.read_text())
    assert all(n == 0 for edge in s["drops"].values() for n in edge.values()), s["drops"]


def test_credits_lost_with_a_killed_preprocess_do_not_stall_the_source(tmp_path, clean_machine):
    record = tmp_path / "r.jsonl"
    proc = start("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set", MODEL_CORE,
                 "--set", "source.realtime=false", "--set", "source.loop=true", "--set",
                 "preprocess.restart=always", "--set", "supervision.backoff_s=0.2",
                 "--name", "pullkill", "--quiet", "--record", str(record))
    try:
        wait_running(proc)
        time.sleep(2)
        killed_at = time.monotonic_ns()
        os.kill(stage_pid(proc.pid, "preprocess"), signal.SIGKILL)
        deadline = time.monotonic() + 120  # a generous bound: it ends at 100 results
        after: list[dict] = []
        while time.monotonic() < deadline and len(after) < 100:
            time.sleep(0.5)
            after = [r for r in read_jsonl(record) if r["t"]["capture"] > killed_at]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stage 'preprocess' died (killed by SIGKILL); restarting" in err
    assert len(after) >= 100, f"only {len(after)} results after the kill: the source stalled"

"""Performance features on real runs: the uint8 input ring and channels-last give the same
answers, spikes stay in their stage, and tools/bench/pipeline.py measures what it claims."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from tests.support.assets import BOTTLE, IMAGES, ROOT, WEIGHTS, need
from tests.support.processes import read_jsonl, run_pipeline

WEIGHTS_SET = f"model.weights={WEIGHTS}"


def classify_images(tmp_path, *overrides: str) -> dict[str, int]:
    record = tmp_path / f"r{len(list(tmp_path.iterdir()))}.jsonl"
    args = ["--set", f"source.path={need(IMAGES)}", "--set", WEIGHTS_SET, "--quiet",
            "--record", str(record)]
    for item in overrides:
        args += ["--set", item]
    p = run_pipeline("images.toml", *args)
    assert p.returncode == 0, p.stderr
    return {r["item"]: r["top"][0]["index"] for r in read_jsonl(record) if r.get("type") == "result"}


def test_uint8_ring_and_channels_last_classify_like_the_default(tmp_path, clean_machine):
    need(WEIGHTS)
    default = classify_images(tmp_path)
    variant = classify_images(tmp_path, "preprocess.dtype=uint8", "model.channels_last=true")
    assert len(default) == len(variant) == 200
    same = sum(default[k] == variant[k] for k in default)
    assert same >= 198, f"only {same} of 200 top-1 classes agree"


def paced_bottle(tmp_path, *overrides: str) -> tuple[list[dict], dict]:
    need(WEIGHTS)
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    args = ["--set", f"source.path={need(BOTTLE)}", "--set", WEIGHTS_SET, "--set",
            "source.loop=true", "--set", "source.fps=30", "--duration", "10", "--quiet",
            "--record", str(record), "--summary-json", str(summary)]
    for item in overrides:
        args += ["--set", item]
    p = run_pipeline("video.toml", *args)
    assert p.returncode == 0, p.stderr
    results = [r for r in read_jsonl(record) if r.get("type") == "result"]
    return results, json.loads(summary.read_text())


def age_ms(r: dict) -> float:
    return (r["t"]["inference_start"] - r["t"]["capture_start"]) / 1e6


STALL_MS = 300


def test_a_stalling_source_never_gets_stale_frames_classified(tmp_path, clean_machine):
    """source.stall_ms: 300 ms without frames every second; every frame classified is fresh
    and the pipeline resumes with the first frame after each stall."""
    results, summary = paced_bottle(tmp_path, f"source.stall_ms={STALL_MS}", "source.stall_every_s=1")
    assert summary["capture_interval_ms"]["max"] >= STALL_MS  # the stalls happened
    gaps = [(b["t"]["capture_start"] - a["t"]["capture_start"]) / 1e6
            for a, b in zip(results, results[1:])]
    assert sum(g > 250 for g in gaps) >= 5
    # A frame from before a stall classified after it would be a stall old; a fresh one is
    # younger by far, however slow or loaded the machine.
    assert max(age_ms(r) for r in results) < 0.8 * STALL_MS, "a stale frame was classified"
    # No burst after a stall: the pacer restarts its schedule instead of catching up. (Judged by
    # the median, since a machine's load can delay one frame and so shorten the next gap.)
    after_stall = [b for a, b in zip(gaps, gaps[1:]) if a > 250]
    assert after_stall and statistics.median(after_stall) > 10, after_stall


SLOW_MS = 100  # three frame intervals of the 30 fps source


def test_a_slow_model_frame_neither_delays_capture_nor_queues_frames(tmp_path, clean_machine):
    """inference.delay_ms=100 on every 10th frame: capture keeps its 33 ms rhythm, the frames
    that arrive meanwhile are dropped as stale instead of queueing, and the frame classified
    after a slow one is the newest."""
    results, summary = paced_bottle(tmp_path, f"inference.delay_ms={SLOW_MS}", "inference.delay_every=10")
    interval = summary["capture_interval_ms"]
    # Capture waiting for the model would make every 10th interval a slow frame long (the 1% a
    # loaded machine stalls capture itself for may be as long).
    assert 30 < interval["p50"] < 37 and interval["p90"] < SLOW_MS, interval
    assert summary["drops"]["tensors"].get("latest", 0) + summary["drops"]["frames"].get("latest", 0) > 20
    slow = [i for i, r in enumerate(results)
            if (r["t"]["inference_end"] - r["t"]["inference_start"]) / 1e6 > SLOW_MS]
    assert len(slow) >= 10
    # While a slow frame is classified, three more are captured: the next one classified is the
    # newest, so the frames in between are skipped (queued, they would follow one by one). By the
    # median: a loaded machine may hold capture up during a slow frame now and then.
    after = [results[i + 1]["seq"] - results[i]["seq"] for i in slow if i + 1 < len(results)]
    assert after and statistics.median(after) >= 2, after


def test_bench_tool_measures_all_four_runs(tmp_path):
    """A short run of tools.bench.pipeline: every run of both runtimes measured, the ratios computed
    from them."""
    need(BOTTLE)
    need(WEIGHTS)
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, "-m", "tools.bench.pipeline", "--duration", "1", "--warmup", "0.5",
                        "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(out.read_text())["main"]
    for key in ("model", "tutorial_fast", "mpqueue_fast", "pipeline_fast", "tutorial_paced",
                "mpqueue_paced", "pipeline_paced", "model_ort1", "model_ort2",
                "tutorial_ort1_fast", "tutorial_ort2_fast", "pipeline_ort1w_fast", "pipeline_ort2w_fast",
                "pipeline_ort1w_paced", "pipeline_ort2w_paced"):
        r = res[key]  # measured, whatever the machine's speed: no bound on how fast
        assert r["fps"] > 0 and r["frames"] >= 1, (key, r)
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert r["cpu_pct"] > 0 and r["rss_mb"] > 50
    for key in ("tutorial_paced", "mpqueue_paced", "pipeline_paced", "pipeline_ort1w_paced",
                "pipeline_ort2w_paced"):  # how near 30 fps they come is the machine's business
        assert res[key]["fps"] < 35, (key, res[key])  # never faster than the 30 fps source
    assert res["pipeline_ort1w_fast"]["inference_rss_mb"] < res["pipeline_fast"]["inference_rss_mb"]
    assert abs(res["ratios"]["d/a"] - res["pipeline_fast"]["fps"] / res["model"]["fps"]) < 1e-9
    assert "d/b" in p.stdout and "tutorial loop" in p.stdout


def test_bench_ab_runs_a_revision_and_this_tree_in_turns(tmp_path, clean_machine):
    """tools.bench.ab against HEAD: both trees run the paced config, their medians compared,
    and the base revision's worktree is gone afterwards."""
    need(BOTTLE)
    out = tmp_path / "ab.json"
    p = subprocess.run([sys.executable, "-m", "tools.bench.ab", "--base", "HEAD", "--rounds", "1",
                        "--duration", "2", "--warmup", "1", "--only", "onnxruntime, 30 fps", "--json",
                        str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    medians = json.loads(out.read_text())
    assert list(medians) == ["onnxruntime, 30 fps"]
    m = medians["onnxruntime, 30 fps"]
    for tree in ("before", "after"):
        assert 0 < m[tree]["fps"] < 35, m  # never faster than the 30 fps source
        assert 0 < m[tree]["p50"] <= m[tree]["p99"]
    assert m["fps after/before"] == round(m["after"]["fps"] / m["before"]["fps"], 3)
    assert p.stdout.count("round 1") == 2
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True)
    assert "bench-ab-base" not in worktrees.stdout


def test_bench_ab_refuses_an_unknown_revision():
    need(BOTTLE)
    p = subprocess.run([sys.executable, "-m", "tools.bench.ab", "--base", "no-such-revision"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--base no-such-revision" in p.stderr

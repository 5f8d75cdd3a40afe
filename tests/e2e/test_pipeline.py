"""The whole pipeline as a user runs it: real processes, sockets, shared memory, video and images."""

from __future__ import annotations

import collections
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.assets import ACCURACY_MARGIN, BOTTLE, IMAGES, ROOT, WEIGHTS, need
from tests.support.processes import (
    pipeline_cmd,
    read_jsonl,
    run_pipeline,
    shm_segments,
    stage_pid,
    start,
    wait_running,
)

WEIGHTS_SET = f"model.weights={WEIGHTS}"


def test_bottle_video_is_classified_as_water_bottle(tmp_path, clean_machine):
    need(WEIGHTS)
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    p = run_pipeline("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set", WEIGHTS_SET,
                     "--set", "source.realtime=false", "--quiet",
                     "--record", str(record), "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    results = read_jsonl(record)
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "end of stream"
    assert s["frames"]["captured"] == 1189
    assert s["frames"]["classified"] == len(results) == s["results_received"] >= 20
    top1 = collections.Counter(r["top"][0]["index"] for r in results)
    assert top1.most_common(1)[0][0] == 898 and top1[898] > 0.6 * len(results), top1
    # With `latest` edges and decoding far faster than the model, most frames are dropped,
    # and every drop is accounted for on its edge.
    lost_frames = sum(s["drops"]["frames"].values())
    assert s["frames"]["preprocessed"] + lost_frames == 1189
    r = results[0]
    assert r["schema"] == 1 and r["type"] == "result" and r["model"] == "mobilenet_v2"
    assert r["top"][0]["label"] in ("water bottle", "nipple", "pop bottle", "water jug")
    t = r["t"]
    assert t["capture"] <= t["preprocess_start"] <= t["preprocess_end"] <= t["inference_start"] \
        <= t["inference_end"]
    assert len(r["top"]) == 5 and sorted((x["prob"] for x in r["top"]), reverse=True) == \
        [x["prob"] for x in r["top"]]
    assert [r["seq"] for r in results] == sorted(r["seq"] for r in results)
    lat = s["latency_ms"]
    assert 1 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 5000


def test_every_image_classified_once_with_reference_accuracy(tmp_path, reference_accuracy,
                                                           clean_machine):
    need(WEIGHTS)
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    p = run_pipeline("images.toml", "--set", f"source.path={need(IMAGES)}", "--set", WEIGHTS_SET,
                     "--quiet", "--record", str(record), "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    with open(IMAGES / "labels.csv") as f:
        labels = {row["file"]: int(row["class_index"]) for row in csv.DictReader(f)}
    results = read_jsonl(record)
    items = [r["item"] for r in results]
    assert sorted(items) == sorted(labels), "every image exactly once"
    correct = sum(r["top"][0]["index"] == labels[r["item"]] for r in results)
    accuracy = correct / len(results)
    assert accuracy >= reference_accuracy - ACCURACY_MARGIN, (accuracy, reference_accuracy)
    s = json.loads(summary.read_text())
    assert all(n == 0 for edge in s["drops"].values() for n in edge.values()), s["drops"]


def test_synthetic_demo_runs_and_stops_cleanly_on_ctrl_c(tmp_path, clean_machine):
    proc = start("demo.toml", "--set", WEIGHTS_SET if WEIGHTS.exists() else "model.weights=none",
                 "--record", str(tmp_path / "r.jsonl"))
    wait_running(proc)
    record = tmp_path / "r.jsonl"
    deadline = time.monotonic() + 60  # ~1 s at the demo's 30 fps; longer on a slow machine
    while time.monotonic() < deadline and (not record.exists() or record.read_text().count("\n") < 30):
        time.sleep(0.1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 5.0, "stop took 5 s or more"
    assert proc.returncode == 0, err
    assert "stopped by SIGINT" in out and "latency" in out
    assert "Traceback" not in err
    status = [line for line in err.splitlines() if "inference" in line and "fps" in line]
    assert status, "no status lines"
    results = read_jsonl(tmp_path / "r.jsonl")
    assert len(results) >= 30
    # Nothing is captured before the model is warm: the first frames are not lost to a backlog.
    assert results[0]["seq"] <= 3


def test_a_closed_terminal_stops_the_pipeline_like_sigterm(tmp_path, clean_machine):
    """SIGHUP reaches the whole process group when the terminal closes: the supervisor stops as
    for SIGTERM (summary, clean-up), the stages wait to be told."""
    proc = subprocess.Popen(pipeline_cmd("demo.toml", "--set", "model.weights=none", "--quiet",
                                         "--summary-json", str(tmp_path / "s.json")),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_running(proc)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGHUP)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped by SIGHUP" in out and "Traceback" not in err
    assert json.loads((tmp_path / "s.json").read_text())["frames"]["classified"] > 10


def test_stages_are_pinned_and_sigterm_or_duration_stop_within_five_seconds(tmp_path, clean_machine):
    cores = sorted(os.sched_getaffinity(0))
    inference_cores = cores[1:] or cores[:1]
    proc = start("demo.toml", "--set", "model.weights=none", "--quiet")
    lines = wait_running(proc)
    assert f"with {len(inference_cores)} thread(s)" in "".join(lines)
    for stage, expected in (("capture", cores[:1]), ("preprocess", cores[:1]),
                            ("inference", inference_cores)):
        assert sorted(os.sched_getaffinity(stage_pid(proc.pid, stage))) == expected, stage
    time.sleep(1)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 5.0 and proc.returncode == 0 and "SIGTERM" in out
    p = run_pipeline("demo.toml", "--set", "model.weights=none", "--quiet", "--duration", "2",
                     "--summary-json", str(tmp_path / "s.json"))
    s = json.loads((tmp_path / "s.json").read_text())
    assert p.returncode == 0 and s["stopped_by"] == "duration" and 1.5 < s["duration_s"] < 3.5


@pytest.mark.parametrize("victim", ["capture", "preprocess", "inference"])
def test_sigkill_of_a_stage_stops_everything_and_leaves_nothing(victim, clean_machine):
    before = shm_segments()
    proc = start("demo.toml", "--set", "model.weights=none", "--quiet")
    wait_running(proc)
    time.sleep(1)
    try:
        mine = {s for s in shm_segments() - before if f"-{proc.pid}-" in s}
        assert len(mine) == 2  # the two rings exist while running
        os.kill(stage_pid(proc.pid, victim), signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert f"stage '{victim}' died (killed by SIGKILL)" in err.strip().splitlines()[-1]


def test_unreadable_video_fails_at_startup_with_one_clear_line(tmp_path, clean_machine):
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video")
    p = run_pipeline("video.toml", "--set", f"source.path={fake}", "--set", "model.weights=none",
                     "--quiet")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == \
        f"pipeline-up: stage 'capture' failed: source.path: OpenCV cannot open video {fake}"


def test_drop_new_edge_counts_drops_at_the_writer_and_never_tears(tmp_path, clean_machine):
    summary = tmp_path / "s.json"
    p = run_pipeline("video.toml", "--set", f"source.path={need(BOTTLE)}", "--set", "model.weights=none",
                     "--set", "source.realtime=false", "--set", "edges.pull=off",
                     "--set", "edges.frames.policy=drop_new",
                     "--set", "edges.frames.slots=2", "--quiet", "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    s = json.loads(summary.read_text())
    frames = s["drops"]["frames"]
    assert frames["drop_new"] > 0 and frames["torn"] == 0 and frames["latest"] == 0
    assert s["frames"]["captured"] == 1189 == s["frames"]["preprocessed"] + frames["drop_new"]


def test_one_name_started_three_times_at_once_runs_once(clean_machine):
    """The name is taken atomically: of three supervisors started together with one name,
    exactly one runs, the others refuse with one line."""
    cmd = pipeline_cmd("demo.toml", "--set", "model.weights=none", "--quiet", "--duration", "4",
                       "--name", "twin")
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 2, 2], outcomes
    for code, err in outcomes:
        if code == 2:
            assert "a pipeline named 'twin' is already running" in err and "Traceback" not in err



def test_a_name_is_held_until_its_supervisor_ends_however_it_ends(tmp_path, monkeypatch):
    """NameLock, across processes: a whole pipeline excludes every other of its name; halves on
    different hosts share it, one host's half excludes another on that host; SIGKILL frees it."""
    from pipeline.transport.rundir import NameLock

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))

    def holder(name: str, host: str | None) -> subprocess.Popen:
        code = ("import sys, time\nfrom pipeline.transport.rundir import NameLock\n"
                f"assert NameLock({name!r}, {host!r}).acquire()\nprint('held', flush=True)\n"
                "time.sleep(60)\n")
        p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "held\n"
        return p

    def free(name: str, host: str | None) -> bool:
        lock = NameLock(name, host)
        taken = lock.acquire()
        lock.release()
        return taken

    whole = holder("lab", None)
    assert not free("lab", None) and not free("lab", "cam") and free("other", None)
    whole.send_signal(signal.SIGKILL)
    whole.wait()
    assert free("lab", None)  # the kernel dropped the dead holder's lock
    half = holder("split", "cam")
    try:
        assert free("split", "box") and not free("split", "cam") and not free("split", None)
    finally:
        half.kill()
        half.wait()

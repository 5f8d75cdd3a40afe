"""Output files: checked before anything starts (never one of the run's inputs, in a folder that
exists), written whole, and a record that can no longer be written never stops the pipeline."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time

from .conftest import BOTTLE, ROOT, need, pipeline_cmd, run_pipeline


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_refusal(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert all(w in p.stderr for w in words), p.stderr


def test_an_output_that_is_an_input_is_refused_and_nothing_is_touched(tmp_path, clean_machine):
    video = tmp_path / "victim.mp4"
    shutil.copy(need(BOTTLE), video)
    config = tmp_path / "video.toml"
    shutil.copy(ROOT / "configs" / "video.toml", config)
    before = digest(video), digest(config)
    cmd = [sys.executable, "-m", "pipeline.cli.up", str(config), "--set", f"source.path={video}"]
    for extra, flag in ((["--record", str(video)], "--record"),
                        (["--summary-json", str(config)], "--summary-json"),
                        (["--record", str(tmp_path / "r.jsonl"), "--summary-json",
                          str(tmp_path / "r.jsonl")], "--summary-json")):
        p = subprocess.run(cmd + extra, cwd=ROOT, capture_output=True, text=True, timeout=60)
        one_line_refusal(p, flag)
    assert (digest(video), digest(config)) == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["victim.mp4", "video.toml"]


def test_outputs_nowhere_and_impossible_options_are_one_line_before_anything_starts(tmp_path):
    missing = tmp_path / "no-such-folder"
    for args, words in ((["--record", str(missing / "r.jsonl")], ("--record", "no such folder")),
                        (["--summary-json", str(missing / "s.json")], ("--summary-json",)),
                        (["--summary-json", str(tmp_path)], ("is a folder",)),
                        (["--duration", "nan"], ("--duration",)),
                        (["--duration", "inf"], ("--duration",))):
        one_line_refusal(run_pipeline("demo.toml", *args, timeout=60), *words)
    for tool, args, words in (
            ("trace", ["--out", str(missing / "t.json")], ("--out", "no such folder")),
            ("trace", ["--plot", str(missing / "t.png")], ("--plot",)),
            ("trace", ["--seconds", "nan"], ("--seconds",)),
            ("attach", ["--consumer", "video", "--out", str(missing / "v.mp4")], ("--out",)),
            ("attach", ["--port", "99999"], ("--port",)),
            ("attach", ["--duration", "nan"], ("--duration",))):
        p = subprocess.run([sys.executable, "-m", f"pipeline.cli.{tool}", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        one_line_refusal(p, *words)
    assert not missing.exists()


def test_a_summary_is_written_whole_and_a_record_into_a_closed_pipe_stops_alone(tmp_path,
                                                                                 clean_machine):
    summary = tmp_path / "s.json"
    summary.write_text("the previous run's summary")
    proc = subprocess.Popen(pipeline_cmd("demo.toml", "--set", "model.weights=none", "--quiet",
                                         "--duration", "6", "--record", "/dev/stdout",
                                         "--summary-json", str(summary)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = [proc.stdout.readline() for _ in range(3)]  # three recorded results, then hang up
    assert all(json.loads(line)["type"] == "result" for line in first)
    proc.stdout.close()
    t0 = time.monotonic()
    err = proc.stderr.read()
    proc.wait(timeout=30)
    assert proc.returncode == 0, err
    assert "recording stopped" in err and "Traceback" not in err
    assert time.monotonic() - t0 > 2  # it ran on after the record's reader left
    s = json.loads(summary.read_text())
    assert s["stopped_by"] == "duration" and s["frames"]["classified"] > 3
    assert [f.name for f in tmp_path.iterdir()] == ["s.json"]  # no temporary file left

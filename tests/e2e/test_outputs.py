"""Output files: checked before anything starts (never one of the run's inputs, in a folder that
exists), written whole, and a record that can no longer be written never stops the pipeline; a
full disk costs one line, never a traceback or a file that looks whole and is not."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import pipeline_cmd, run_pipeline, wait_running
from tests.support.topologies import finish, up, write_config


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_refusal(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert all(w in p.stderr for w in words), p.stderr


def test_an_output_that_is_an_input_is_refused_and_nothing_is_touched(tmp_path, clean_machine):
    video = tmp_path / "victim.mp4"
    shutil.copy(need(BOTTLE), video)
    config = tmp_path / "video.toml"  # no cores pinned: refused the same on any machine
    config.write_text('name = "victim"\n[source]\nkind = "video"\npath = "placeholder.mp4"\n')
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


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs of this test's own, to fill up; skipped where mounting is not permitted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk, leave: int) -> None:
    """Take all of `disk` but `leave` bytes."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A synthetic pipeline for consumers to attach to."""
    config = write_config(tmp_path_factory.mktemp("outputs") / "full.toml",
                          [{"kind": "synthetic", "width": 640, "height": 480, "fps": 30}],
                          name="diskfull", model={"weights": "none"})
    proc = up(config, "--quiet")
    wait_running(proc)
    yield "diskfull"
    finish(proc)


@pytest.mark.parametrize("leave, stop", [(300_000, ["--duration", "120"]), (16_000, ["--count", "15"])])
def test_a_video_on_a_full_disk_is_one_line_exit_1_and_no_file(running, small_disk, leave, stop):
    """The disk fills while the video is written (or only when it is finished): one line saying
    so, exit 1, and no file that looks written but does not play."""
    fill(small_disk, leave)
    out = small_disk / "v.mp4"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.attach", "--name", running,
                        "--consumer", "video", "--out", str(out), *stop],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 1, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"pipeline-attach: video: cannot write {out}: the disk is full; "
                               "stopped after "), p.stderr
    assert sorted(f.name for f in small_disk.iterdir()) == ["filler"]


def test_a_full_disk_under_jsonl_and_the_summary_costs_one_line_each(tmp_path, small_disk,
                                                                      clean_machine):
    """A jsonl consumer of the topology and --summary-json on a disk that fills: the consumer
    ends with one line, the pipeline runs on, the summary is printed though it cannot be
    written, exit 0, no traceback."""
    config = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240,
                                                 "fps": 30}], name="jsonlfull", model={"weights": "none"})
    config.write_text(config.read_text() + f'[[consumers]]\nkind = "jsonl"\nout = "{small_disk}/r.jsonl"\n')
    fill(small_disk, 20_000)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--quiet", "--duration", "8",
                        "--summary-json", str(small_disk / "s.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    said = p.stderr.splitlines()
    assert [line for line in said if "r.jsonl" in line] == [
        f"pipeline-attach: jsonl: cannot write {small_disk}/r.jsonl any more (No space left on device); "
        "stopped"], p.stderr
    assert any(line.startswith("consumer jsonl#1 ended (exit code 1)") for line in said), p.stderr
    assert [line for line in said if "s.json" in line] == [
        f"--summary-json: cannot write {small_disk}/s.json (No space left on device); the summary is "
        "only below"], p.stderr
    assert "stopped by" in p.stdout or "classified" in p.stdout, p.stdout
    assert sorted(f.name for f in small_disk.iterdir()) == ["filler", "r.jsonl"]

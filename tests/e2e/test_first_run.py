"""What a first run shows: photos get a line each on stdout with their label (the status and the
summary on stderr), the demo says its pattern's labels mean nothing, no rate is shown before one
is measured, pipeline-top --once is a snapshot, and the consumers a config starts name themselves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

from pipeline.supervisor.file_lines import NO_RESULT
from pipeline.transport.drops import REASONS
from tests.support.assets import IMAGES, ROOT, need
from tests.support.processes import (
    MODEL_CORE,
    TOP,
    read_jsonl,
    run_pipeline,
    start,
    wait_running,
)
from tests.support.topologies import finish

PHOTOS = ["n01440764_tench.JPEG", "n01530575_brambling.JPEG", "n02391049_zebra.JPEG",
          "n03841143_odometer.JPEG", "n04254680_soccer_ball.JPEG", "n02504013_Indian_elephant.JPEG"]


def photo_folder(tmp_path):
    """Six real photos and, sorted among them, a file that is no image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(need(IMAGES) / name, folder / name)
    (folder / "n02000000_broken.JPEG").write_bytes((IMAGES / PHOTOS[0]).read_bytes()[:300])
    return folder


def test_photos_get_a_line_each_on_stdout_in_the_folders_order(tmp_path, clean_machine):
    folder = photo_folder(tmp_path)
    record, summary = tmp_path / "record.jsonl", tmp_path / "summary.json"
    p = run_pipeline("images.toml", "--set", f"source.path={folder}", "--record", str(record),
                     "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    top1 = {r["item"]: r["top"][0] for r in read_jsonl(record)}
    assert len(top1) == len(PHOTOS)
    expected = [f"{folder / name}  {top1[name]['label']} {top1[name]['prob']:.2f}" if name in top1
                else f"{folder / name}  {NO_RESULT}" for name in sorted(os.listdir(folder))]
    assert p.stdout.splitlines() == expected, "stdout holds the lines per file and nothing else"
    assert "== images: stopped by end of stream" in p.stderr
    assert top1["n02391049_zebra.JPEG"]["label"] == "zebra"
    s = json.loads(summary.read_text())
    # Throughput: no faster than the workers classify (the results are taken in batches).
    can = sum(1000 / m["p50"] for stage, m in s["service_ms"].items() if stage.startswith("inference"))
    assert 0 < s["fps"] <= 2 * can, (s["fps"], s["service_ms"])
    drops = s["drops"]
    assert {reason for reasons in drops.values() for reason in reasons} <= set(REASONS)
    assert drops["source"]["corrupt"] == 1

    p = run_pipeline("images.toml", "--set", f"source.path={folder}", "--format", "jsonl", "--quiet")
    assert p.returncode == 0, p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        {"path": str(folder / name), "label": top1[name]["label"] if name in top1 else None,
         "probability": top1[name]["prob"] if name in top1 else None}
        for name in sorted(os.listdir(folder))]


def test_a_record_on_stdout_takes_the_place_of_the_lines_per_file(tmp_path, clean_machine):
    folder = photo_folder(tmp_path)
    p = run_pipeline("images.toml", "--set", f"source.path={folder}", "--record", "/dev/stdout", "--quiet")
    assert p.returncode == 0, p.stderr
    results = [json.loads(line) for line in p.stdout.splitlines()]  # (the summary: on stderr)
    assert sorted(r["item"] for r in results) == sorted(PHOTOS)
    assert "== images: stopped by end of stream" in p.stderr


def test_format_for_a_source_that_is_no_folder_of_images_is_refused_before_anything_starts(clean_machine):
    p = run_pipeline("demo.toml", "--format", "csv", timeout=60)
    assert p.returncode == 2
    assert p.stderr == ("pipeline-up: --format: the line per file is for an images source read once "
                        "(source.loop = false); this config's source is synthetic (--record FILE "
                        "writes every result)\n")
    assert p.stdout == ""  # (and nothing started: no "starting" line)


def test_the_demo_explains_itself_and_its_consumers_name_themselves(tmp_path, clean_machine):
    config = tmp_path / "demo-with-consumers.toml"
    consumers = "".join(f'\n[[consumers]]\nkind = "jsonl"\nout = "{tmp_path / f"c{i}.jsonl"}"\n'
                        for i in (1, 2))
    config.write_text((ROOT / "configs" / "demo.toml").read_text() + consumers)
    proc = start(str(config), "--name", "firstrun", "--set", MODEL_CORE)
    try:
        said = wait_running(proc)
        assert said[0] == ("synthetic source: a generated test pattern (colour bars and a moving "
                           "box), not a camera, so the labels it gets mean nothing; on a real clip "
                           "(the one shipped, or yours with --set source.path=CLIP.mp4): "
                           "pipeline-up configs/video.toml\n"), said
        top = subprocess.run([*TOP, "--name", "firstrun", "--once"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert top.returncode == 0, top.stderr
        assert "firstrun  up" in top.stdout and "q quits" not in top.stdout, top.stdout
        time.sleep(3.5)  # the first status (rates not measured yet), and some with rates
    finally:
        _, err = finish(proc, signal.SIGINT)
    assert proc.returncode == 0, err
    first = err.split("[   1.0s] ")[1].split("\n[")[0].splitlines()
    assert len(first) == 3 and all(" — fps " in line for line in first), first
    assert "0.0 fps" not in err.split("[   2.0s] ")[0]
    assert re.search(r"^\[ +\d+\.\ds\] capture +\d+\.\d fps", err, re.M), "a rate, once measured"
    closing = sorted(line.split(":")[0] for line in err.splitlines() if line.startswith("consumer jsonl#"))
    assert closing == ["consumer jsonl#1", "consumer jsonl#2"], err

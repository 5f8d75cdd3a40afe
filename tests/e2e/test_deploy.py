"""Switching a running pipeline to another model (`pipeline-deploy`, `systemctl reload`): results
keep coming without a gap longer than the pipeline's own, no stage restarts, every result from the
switch on carries the new model's names and id, states end the old class and start from the new
model's results, and a file that cannot serve leaves the old model running with one line."""

from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.client.result import Result
from pipeline.client.states import Tracker
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import MODEL_CORE, launch, pipeline_cmd, read_jsonl
from tests.support.subset_model import feature_map_model, subset_model
from tests.support.topologies import finish, lines, wait_for

pytestmark = pytest.mark.timeout(300)


def deploy(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.deploy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def top(name: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.top", "--name", name, "--once", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    broken = d / "broken.onnx"
    broken.write_bytes(subset_model(d / "whole.onnx", {"a": [1], "b": [2]}).read_bytes()[:5000])
    (d / "three.txt").write_text("one\ntwo\nthree\n")
    return {"two": subset_model(d / "bottle-or-table.onnx", {"bottle": [898], "table": [532]}),
            "features": feature_map_model(d / "features.onnx"), "broken": broken,
            "three_labels": d / "three.txt"}


def test_a_running_pipeline_switches_model_between_two_frames(models, tmp_path, clean_machine):
    name = "deploylive"
    record = tmp_path / "results.jsonl"
    proc = launch(pipeline_cmd("video.toml", "--name", name, "--quiet", "--record", str(record),
                               "--set", f"source.path={need(BOTTLE)}", "--set", "source.loop=true",
                               "--set", "model.runtime=onnxruntime", "--set", MODEL_CORE))
    try:
        wait_for(lambda: lines(record) >= 60, 60, "results of the first model")
        before = top(name)
        p = deploy("--name", name, str(models["two"]))
        assert p.returncode == 0, p.stderr
        assert "now running bottle-or-table" in p.stdout and "2 classes: bottle, table" in p.stdout
        switched_at = lines(record)
        wait_for(lambda: lines(record) >= switched_at + 60, 60, "results of the new model")

        # Files that cannot serve: one line each, and the running model stays.
        for args, message in [
            ([str(models["broken"])], "is not an ONNX model"),
            ([str(models["features"])], "is not a classifier: its output is 1 x 1280 x ? x ?"),
            ([str(models["two"]), "--labels", str(models["three_labels"])],
             "names 3 classes, the model has 2 outputs"),
        ]:
            p = deploy("--name", name, *args)
            assert p.returncode == 1 and message in p.stderr, p.stderr
            assert len(p.stderr.strip().splitlines()) == 1 and "the running model stays" in p.stderr
        p = deploy("--name", name, str(tmp_path / "missing.onnx"))
        assert p.returncode == 2 and "no such model file" in p.stderr
        refused_at = lines(record)
        wait_for(lambda: lines(record) >= refused_at + 30, 60, "results after the refusals")
        after = top(name)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err

    # No stage restarted: the same worker process, before and after, and no restart counted.
    assert after["stages"]["inference"]["pid"] == before["stages"]["inference"]["pid"]
    assert not any(m.get("restarts") for m in after["stages"].values())
    assert before["model"]["name"] == "mobilenet_v2"
    assert after["model"] == {"name": "bottle-or-table", "id": after["model"]["id"],
                              "runtime": "onnxruntime"} and after["model"]["id"] != before["model"]["id"]

    results = read_jsonl(record)
    ids = [r["model_id"] for r in results]
    first_new = ids.index(after["model"]["id"])
    assert set(ids[:first_new]) == {before["model"]["id"]}
    assert set(ids[first_new:]) == {after["model"]["id"]}, "a result of the old model after the switch"
    assert all(c["label"] in ("bottle", "table") for r in results[first_new:] for c in r["top"])
    assert all(r["model"] == "bottle-or-table" for r in results[first_new:])
    # No gap at the switch beyond the pipeline's own rhythm, measured in this run.
    ends = [r["t"]["inference_end"] for r in results]
    gaps = [(b - a) / 1e6 for a, b in zip(ends, ends[1:])]
    switch_gap = gaps[first_new - 1]
    others = gaps[:first_new - 1] + gaps[first_new:]
    assert switch_gap <= max(2 * statistics.median(others), max(others)), (switch_gap, others)

    # States: the old model's class ends at the switch, and the new model's results decide anew.
    tracker = Tracker()
    events = [(i, e) for i, r in enumerate(results) for e in tracker.update(Result.from_message(r))]
    at_switch = [e for i, e in events if i == first_new]
    assert [e.event for e in at_switch] == ["end"] and at_switch[0].label not in ("bottle", "table")
    later = [e for i, e in events if i > first_new]
    assert later and later[0].event == "start" and later[0].label in ("bottle", "table")


def test_a_model_without_a_watched_class_is_refused_and_the_old_one_runs_on(models, tmp_path,
                                                                           clean_machine):
    name = "deploywatch"
    record = tmp_path / "results.jsonl"
    proc = launch(pipeline_cmd("demo.toml", "--name", name, "--quiet", "--record", str(record),
                               "--set", "model.runtime=onnxruntime", "--set", MODEL_CORE,
                               "--set", 'source.state.watch=["water bottle"]'))
    try:
        wait_for(lambda: lines(record) >= 10, 60, "results")
        p = deploy("--name", name, str(models["two"]))
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1
        assert ("source.state.watch: 'water bottle' is not a class of bottle-or-table (its classes: "
                "'bottle', 'table')") in p.stderr
        n = lines(record)
        wait_for(lambda: lines(record) >= n + 10, 60, "results after the refusal")
    finally:
        _, err = finish(proc)
    assert proc.returncode == 0, err
    assert {r["model"] for r in read_jsonl(record)} == {"mobilenet_v2"}


def test_systemctl_reload_deploys_the_model_the_config_names_now(models, tmp_path, clean_machine):
    """The unit's ExecReload=, run as systemd runs it after the config was edited."""
    name = "deployunit"
    config = tmp_path / "door.toml"
    text = (ROOT / "configs" / "demo.toml").read_text()
    config.write_text(text)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), "--name", name,
                        "--set", "model.runtime=onnxruntime", "--set", MODEL_CORE, "--quiet",
                        "--systemd-unit"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    unit = {}
    for line in p.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            unit.setdefault(key, []).append(value)
    start = shlex.split(unit["ExecStart"][0].replace("%%", "%"))
    reload = shlex.split(unit["ExecReload"][0].replace("%%", "%"))
    assert reload[:3] == [sys.executable, "-m", "pipeline.cli.deploy"] and str(config) in reload
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    record = tmp_path / "results.jsonl"
    proc = launch(start + ["--record", str(record)], env=env)
    try:
        wait_for(lambda: lines(record) >= 10, 60, "results")
        config.write_text(text.replace('weights = "builtin"', f'weights = "{models["two"]}"'))
        p = subprocess.run(reload, cwd=unit["WorkingDirectory"][0], env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        n = lines(record)
        wait_for(lambda: lines(record) >= n + 10, 60, "results after the reload")
    finally:
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert read_jsonl(record)[-1]["model"] == "bottle-or-table"

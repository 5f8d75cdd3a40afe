"""The teach page's back end on real processes: a training job (pipeline-train in a subprocess) on
frames of bottle-detection.mp4 reports its progress up to a report; deploy switches a running
pipeline to the trained model and rollback back to the one before; a region of interest drawn on
the page changes what the running pipeline classifies, without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from pipeline.client.model import running_model
from pipeline.client.teach.jobs import TrainingJobs
from pipeline.client.teach.roi import apply_roi
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import MODEL_CORE, launch, pipeline_cmd
from tests.support.subset_model import subset_model
from tests.support.topologies import finish, wait_for
from tests.support.video_truth import collect_name, label_of

pytestmark = pytest.mark.timeout(240)

PER_CLASS = 12  # training images of each class: enough for pipeline-train, quick to train


def video_frames(wanted: set[int]) -> dict[int, bytes]:
    """The `wanted` frames of the bottle video, as JPEG."""
    cap = cv2.VideoCapture(str(need(BOTTLE)))
    out, i = {}, 0
    while len(out) < len(wanted):
        ok, image = cap.read()
        assert ok, f"the video ended before frame {i}"
        if i in wanted:
            out[i] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        i += 1
    cap.release()
    return out


def follow(jobs: TrainingJobs, timeout: float = 180) -> list[dict]:
    """The job's states, polled until it is no longer running."""
    seen = [jobs.status()]
    deadline = time.monotonic() + timeout
    while seen[-1]["state"] == "running":
        assert time.monotonic() < deadline, f"training still running after {timeout:.0f} s: {seen[-1]}"
        time.sleep(0.05)
        seen.append(jobs.status())
    return seen


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainingJobs, list[dict]]:
    """A training job run to its end on a dataset of both states: the jobs and what it said."""
    root = tmp_path_factory.mktemp("teach") / "shelf"
    every = {c: [f for f in range(660) if label_of(f) == c] for c in ("bottle", "empty")}
    chosen = {c: fs[::len(fs) // PER_CLASS][:PER_CLASS] for c, fs in every.items()}
    frames = video_frames({f for fs in chosen.values() for f in fs})
    for cls, fs in chosen.items():
        (root / cls).mkdir(parents=True)
        for f in fs:
            (root / cls / collect_name(f)).write_bytes(frames[f])
    (root / "unlabelled").mkdir()
    jobs = TrainingJobs(root, root.parent / "shelf-models", None)
    assert jobs.status() == {"state": "idle", "progress": 0.0, "message": "", "model": None, "report": None}
    first = jobs.start()
    assert first["state"] == "running"
    with pytest.raises(ValueError, match="a training is running already"):
        jobs.start()
    return jobs, follow(jobs)


def test_a_training_job_reports_progress_to_done_with_its_report(trained):
    jobs, seen = trained
    job = seen[-1]
    assert job["state"] == "done", job
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress), "progress went backwards"
    assert any(0 < p < 1 for p in progress), f"no progress between start and end: {set(progress)}"
    assert job["progress"] == 1.0
    assert any(s["message"].startswith("features: ") for s in seen)
    model = Path(job["model"])
    assert model.is_file() and model.parent == jobs.models_dir and model.name.startswith("shelf-")
    report = job["report"]
    assert report["model"] == "shelf" and report["classes"] == ["bottle", "empty"]
    assert report["images"] == {"bottle": PER_CLASS, "empty": PER_CLASS}
    accuracy = report["accuracy_deployed"]
    assert 0 <= accuracy <= 1 and f"{100 * accuracy:.1f}%" in job["message"]
    assert report == json.loads(model.with_suffix(".report.json").read_text())
    confusion = jobs.report_image("confusion")
    assert confusion == model.with_suffix(".confusion.png") and confusion.read_bytes()[:4] == b"\x89PNG"
    assert jobs.report_image("../../etc/passwd") is None


def test_a_training_that_cannot_run_fails_with_one_line(tmp_path):
    root = tmp_path / "one"
    (root / "bottle").mkdir(parents=True)
    for f, jpeg in video_frames(set(range(0, 30, 3))).items():
        (root / "bottle" / collect_name(f)).write_bytes(jpeg)
    jobs = TrainingJobs(root, tmp_path / "models", None)
    jobs.start()
    job = follow(jobs)[-1]
    assert job["state"] == "failed" and job["model"] is None and job["report"] is None
    assert job["message"] == f"DATASET: {root} needs at least 2 class folders, found only 'bottle'"
    assert not list((tmp_path / "models").iterdir()), "a failed training left files behind"
    assert jobs.deploy() == (False, "no trained model to deploy yet: train one first")


def top(name: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.top", "--name", name, "--once", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def results_since(record: Path, start: int) -> list[dict]:
    """The recorded results from line `start` on (a line being written is left for later)."""
    out = []
    for line in record.read_text().splitlines()[start:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def count(record: Path) -> int:
    return len(results_since(record, 0))


def top1_after(record: Path, start: int, n: int) -> list[str]:
    """The top-1 labels of `n` results recorded after line `start`."""
    wait_for(lambda: count(record) >= start + n, 60, f"{n} more results")
    return [r["top"][0]["label"] for r in results_since(record, start)[:n]]


def test_deploy_rollback_and_a_region_of_interest_on_a_running_pipeline(trained, tmp_path, clean_machine):
    jobs, _ = trained
    still = tmp_path / "still"  # the first frame, three bottles on a table, shown again and again
    still.mkdir()
    (still / "f0.jpg").write_bytes(video_frames({0})[0])
    two = subset_model(jobs.models_dir / "bottle-or-table.onnx", {"bottle": [898], "table": [532]})
    name = "teachjobs"
    record = tmp_path / "results.jsonl"
    proc = launch(pipeline_cmd("images.toml", "--name", name, "--quiet", "--record", str(record),
                               "--set", f"source.path={still}", "--set", "source.loop=true",
                               "--set", "source.fps=15", "--set", "model.runtime=onnxruntime",
                               "--set", "preprocess.restart=always", "--set", MODEL_CORE))
    try:
        wait_for(lambda: count(record) >= 10, 60, "results of the shipped model")
        builtin = running_model(name)
        pipeline = TrainingJobs(jobs.dataset, jobs.models_dir, name)
        pipeline.job = jobs.status()  # the trained model of the module's job
        assert pipeline.rollback()[0] is False  # nothing deployed from here yet

        # deploy: results switch to the trained model; rollback: back to the shipped one
        ok, message = pipeline.deploy()
        assert ok, message
        shelf = running_model(name)
        assert shelf["name"] == "shelf" and f"now running shelf (id {shelf['id']})" in message
        at = count(record)
        wait_for(lambda: any(r["model_id"] == shelf["id"] for r in results_since(record, at)), 60,
                 "results of the deployed model")
        ok, message = pipeline.rollback()
        assert ok and f"now running mobilenet_v2 (id {builtin['id']})" in message, message
        at = count(record)
        wait_for(lambda: any(r["model_id"] == builtin["id"] for r in results_since(record, at)), 60,
                 "results of the shipped model again")
        ok, message = pipeline.rollback()  # rollback of the rollback: the trained model again
        assert ok and "now running shelf" in message, message
        assert pipeline.deploy(str(tmp_path / "f0.jpg"))[0] is False  # only models of the models folder

        # a region of interest: the middle bottle, then the bare table beside it
        assert pipeline.deploy(str(two))[0]
        ok, line, message = apply_roi(name, "images", [0.4, 0.25, 0.2, 0.65])
        assert ok and line == "roi = [0.4, 0.25, 0.2, 0.65]", message
        assert "roi = [0.4, 0.25, 0.2, 0.65]` under [source]" in message
        assert top1_after(record, count(record) + 8, 20).count("bottle") == 20
        ok, line, message = apply_roi(name, "images", [0.2, 0.65, 0.22, 0.35])
        assert ok and line == "roi = [0.2, 0.65, 0.22, 0.35]", message
        at = count(record) + 8  # frames already past preprocessing
        assert top1_after(record, at, 20).count("table") >= 15

        # refused: nothing changes
        for roi, why in [([0.5, 0, 0.7, 1], "as fractions must lie within the frame"),
                         ([0.1, 0.1], "must be [x, y, width, height]"),
                         ("0.1,0.1,0.5,0.5", "must be [x, y, width, height]")]:
            ok, line, message = apply_roi(name, "images", roi)
            assert not ok and line == "" and why in message and "\n" not in message, message
        ok, line, message = apply_roi(name, "camera", [0.0, 0.0, 0.5, 0.5])
        assert not ok and line == "roi = [0.0, 0.0, 0.5, 0.5]" and "no source 'camera'" in message, message
        # too few pixels of this frame: the stage keeps the region it has, and says so
        ok, line, message = apply_roi(name, "images", [0.0, 0.0, 0.01, 0.01])
        assert not ok and "pixels of the 640x360 frame" in message and "the old region stays" in message
        assert top1_after(record, count(record) + 8, 20).count("table") >= 15

        # a restarted preprocess stage keeps the region in force
        killed = top(name)["stages"]["preprocess"]["pid"]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: top(name)["stages"]["preprocess"].get("pid") not in (None, killed), 60,
                 "the restarted preprocess stage")
        assert top1_after(record, count(record) + 8, 20).count("table") >= 15
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "roi: source 'images' classifies [0.2, 0.65, 0.22, 0.35] of its frames now" in err
    assert "stage 'preprocess' is back" in err

"""Your own classes, the whole loop on real processes: bottle-detection.mp4 plays as a camera (in a
loop, at three times its own rate), the collect consumer attached to the running pipeline saves
examples during one pass, they are labelled by the frame in their names ("bottle": the middle
bottle stands there, "empty": it is away), pipeline-train trains a model on them, pipeline-deploy
switches the running pipeline to it, and the source's state that the mqtt consumer publishes to a
real broker (mosquitto) follows what the video shows.

Where a state changed is read from the pipeline's own recording: the state's `since` is the capture
time of the result that decided it. Margins are in frames of the video: the smoothing's own span,
measured in the run (the frames between the first and the last of the votes that decided), and
the truth's (a hand reaching for the bottle hides it a little before it is lifted)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import tomli_w

from pipeline.train.dataset import COLLECTED, UNLABELLED
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.mqtt_broker import Broker, Watcher
from tests.support.processes import MODEL_CORE, launch, pipeline_cmd, read_jsonl
from tests.support.topologies import finish
from tests.support.video_truth import BOTTLE as TRUTH
from tests.support.video_truth import frames_in, label_at, transitions
from workers.inference.model_meta import model_id

pytestmark = pytest.mark.timeout(300)

NAME = "ownclasses"
SOURCE = "shelf"
PREFIX = "own-classes/test"
FPS = 90  # the camera's rate: a pass over the 1189 frames in 13 s
FRAMES = 1189
PASS_S = FRAMES / FPS
WINDOW = 5  # [source.state]: five results in a row agree
SLACK = 15  # frames (half a second of the video): the bottle is hidden by the hand that lifts it
CLASSES = ("bottle", "empty")


def write_config(path: Path, broker: str) -> Path:
    config = {
        "name": NAME,
        "source": {"kind": "video", "id": SOURCE, "path": str(need(BOTTLE)), "loop": True,
                   "realtime": True, "fps": FPS, "state": {"window": WINDOW}},
        "model": {"weights": "builtin", "runtime": "onnxruntime"},
        "consumers": [{"kind": "mqtt", "broker": broker, "topic_prefix": PREFIX, "stats_interval": 2.0}],
    }
    path.write_text(tomli_w.dumps(config))
    return path


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def examples(folder: Path) -> list[tuple[Path, float, int]]:
    """The collected files in a folder: (path, UTC capture time, frame), by time."""
    out = []
    for path in folder.glob("*.jpg"):
        m = COLLECTED.match(path.name)
        assert m and m["source"] == SOURCE, path.name
        when = datetime.strptime(m["time"], "%Y%m%d-%H%M%S.%f").replace(tzinfo=timezone.utc)
        out.append((path, when.timestamp(), int(m["n"])))
    return sorted(out, key=lambda e: e[1])


def collect_one_pass(out: Path) -> str:
    """`pipeline-attach --consumer collect` until its examples span one pass of the video (by
    their capture times); its summary line."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.attach", "--name", NAME, "--consumer",
                             "collect", "--out", str(out), "--min-interval", "0.05",
                             "--min-difference", "0.02"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20 * PASS_S + 60
        while time.monotonic() < deadline and proc.poll() is None:
            got = examples(out / UNLABELLED) if (out / UNLABELLED).is_dir() else []
            if got and got[-1][1] - got[0][1] >= PASS_S:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"collect did not cover a pass of the video: {proc.poll()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err
    return err


def label_by_frame(data: Path) -> dict[str, int]:
    """Move each collected file whose frame shows a class clearly into that class's folder;
    frames near a transition stay unlabelled."""
    clear = {f: cls for cls in CLASSES for f in frames_in(TRUTH["train"][cls] + TRUTH["eval"][cls])}
    counts = dict.fromkeys(CLASSES, 0)
    for cls in CLASSES:
        (data / cls).mkdir()
    for path, _, frame in examples(data / UNLABELLED):
        cls = clear.get(frame)
        if cls:
            shutil.move(path, data / cls / path.name)
            counts[cls] += 1
    return counts


def state_changes(watcher: Watcher) -> list[dict]:
    """The states published, each once (a refresh repeats the state it follows)."""
    out: list[dict] = []
    for s in watcher.json_on(f"{PREFIX}/{SOURCE}/state"):
        if not out or (s["label"], s["since"]) != (out[-1]["label"], out[-1]["since"]):
            out.append(s)
    return out


def classes_seen(watcher: Watcher) -> list[str]:
    labels = [s["label"] for s in state_changes(watcher) if s["label"] in CLASSES]
    return [x for i, x in enumerate(labels) if i == 0 or labels[i - 1] != x]


def back_after_away(labels: list[str]) -> bool:
    """bottle, empty, bottle, in this order, among the labels."""
    want = ["bottle", "empty", "bottle"]
    for x in labels:
        if want and x == want[0]:
            want.pop(0)
    return not want


def test_collect_label_train_deploy_and_the_mqtt_state_follows_the_bottle(tmp_path, clean_machine):
    broker = Broker(tmp_path / "mosquitto")
    watcher = Watcher(broker.port, f"{PREFIX}/#")
    record = tmp_path / "results.jsonl"
    config = write_config(tmp_path / "shelf.toml", broker.url)
    proc = launch(pipeline_cmd(str(config), "--quiet", "--record", str(record), "--set", MODEL_CORE))
    try:
        data = tmp_path / "data"
        summary = collect_one_pass(data)
        counts = label_by_frame(data)
        # Both states were collected, and near-copies were not.
        assert counts["bottle"] >= 5 and counts["empty"] >= 5, (counts, summary)
        assert "near-duplicates" in summary

        model = tmp_path / "shelf.onnx"
        p = run("pipeline.cli.train", str(data), "--out", str(model), "--epochs", "10", "--augment", "1",
                "--quiet")
        assert p.returncode == 0, p.stderr
        for cls in CLASSES:  # the report counts the labelled files
            assert re.search(rf"^{cls} +{counts[cls]} ", p.stdout, re.M), p.stdout

        p = run("pipeline.cli.deploy", "--name", NAME, str(model))
        assert p.returncode == 0, p.stderr
        assert f"now running shelf (id {model_id(model)})" in p.stdout, p.stdout
        assert "2 classes: bottle, empty" in p.stdout, p.stdout
        # The bottle there, taken away and back, as the state the broker delivers.
        watcher.wait_for(lambda: back_after_away(classes_seen(watcher)), 10 * PASS_S + 60,
                         "the state bottle, empty, bottle after the switch")
        retained = Watcher(broker.port, f"{PREFIX}/{SOURCE}/state")
        try:
            kept = retained.wait_for(lambda: retained.json_on(f"{PREFIX}/{SOURCE}/state"), 10,
                                     "the retained state")[-1]
        finally:
            retained.close()
    finally:
        _, err = finish(proc)
        watcher.close()
        broker.stop()
    assert proc.returncode == 0, err
    assert kept["label"] in CLASSES

    # Each state of the new model, decided where the video shows it.
    results = read_jsonl(record)
    first_new = next(i for i, r in enumerate(results) if r["model_id"] == model_id(model))
    assert {r["model"] for r in results[first_new:]} == {"shelf"}
    at = {r["captured_at"]: i for i, r in enumerate(results)}
    decided = []
    for s in state_changes(watcher):
        if s["label"] not in CLASSES:
            continue  # the old model's states, and `none` at the switch
        i = at.get(s["since"])
        assert i is not None and i >= first_new, s
        assert i - WINDOW + 1 >= first_new, "a state decided by the new model's results alone"
        span = results[i]["seq"] - results[i - WINDOW + 1]["seq"]  # frames its votes took
        decided.append((s["label"], results[i]["frame"], span + SLACK))
    assert back_after_away([d[0] for d in decided]), decided
    for (before, _, _), (label, frame, margin) in zip([(None, 0, 0), *decided], decided):
        if before is None:  # the first decision: what the video shows there
            near = {label_at(TRUTH, g % FRAMES) for g in range(frame - margin, frame + margin + 1)}
            assert label in near, (label, frame, margin, decided)
        else:  # a change: at a true change between those two states
            assert any(old == before and new == label and a - margin <= frame <= c + margin
                       for a, c, old, new in transitions(TRUTH)), (before, label, frame, margin, decided)
    assert kept["label"] == decided[-1][0]

"""`pipeline-train` on real frames of bottle-detection.mp4: three water bottles on a table; the
middle one (in the centre crop the model sees) is lifted away at frames 527-536 and put back at
660-680, hands moving the other two bottles at other times. "bottle": the middle bottle stands
there, "empty": it does not. Frames labelled by range (10 frames around each transition left out)
make a two-class dataset named as the collect consumer names its files, so the time split
applies. Trained without torch into one .onnx file that the pipeline then runs with its class
names."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.train import dataset
from pipeline.train.run import Options, train
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import MODEL_CORE, read_jsonl, run_pipeline
from tests.support.video_truth import collect_name, label_of
from workers.inference.model_meta import read_model

pytestmark = pytest.mark.timeout(300)

STEP = 5  # frames kept from the video; each class's frames leave those near a transition out
# (tests/support/video_truth.py)


@pytest.fixture(scope="module")
def frames() -> dict[int, bytes]:
    """Every STEP-th labelled frame of the video, as JPEG."""
    cap = cv2.VideoCapture(str(need(BOTTLE)))
    out, i = {}, 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if i % STEP == 0 and label_of(i):
            out[i] = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        i += 1
    cap.release()
    assert len(out) > 200
    return out


def make_dataset(root: Path, frames: dict[int, bytes], every: dict[str, int],
                 limit: dict[str, int] | None = None) -> Path:
    """root/<class>/ with every `every[class]`-th kept frame of that class (at most limit)."""
    for cls, step in every.items():
        (root / cls).mkdir(parents=True)
        chosen = [f for f in sorted(frames) if label_of(f) == cls][::step]
        for f in chosen[:(limit or {}).get(cls)]:
            (root / cls / collect_name(f)).write_bytes(frames[f])
    (root / "unlabelled").mkdir()
    (root / "unlabelled" / collect_name(3)).write_bytes(frames[0])  # never a class
    return root


def head_weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("head.")}


TRAIN_AND_LIST_TORCH = """
import json, sys
from pipeline.cli.train import main
rc = main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))),
      file=sys.stderr)
sys.exit(rc)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, frames) -> dict:
    """One training run through the command line, in a process of its own."""
    d = tmp_path_factory.mktemp("trained")
    data = make_dataset(d / "data", frames, {"bottle": 4, "empty": 1})
    out = d / "models" / "bottle-state.onnx"
    out.parent.mkdir()
    p = subprocess.run([sys.executable, "-c", TRAIN_AND_LIST_TORCH, str(data), "--out", str(out),
                        "--augment", "2", "--epochs", "20"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    return {"data": data, "out": out, "stdout": p.stdout, "stderr": p.stderr}


def test_training_writes_one_model_file_with_its_metadata_and_report(trained):
    out, data = trained["out"], trained["data"]
    assert json.loads(trained["stderr"].strip().splitlines()[-1]) == []  # no torch on the way
    assert "features: " in trained["stderr"]  # progress, plain when not on a terminal

    import onnxruntime as ort

    meta = read_model(out)[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("logits", [1, 2])]
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", [1, 3, "height", "width"])]
    assert meta["edge_pipeline.format"] == "1" and meta["model"] == "bottle-state"
    assert json.loads(meta["categories"]) == ["bottle", "empty"]  # unlabelled/ is no class
    assert meta["resize"] == "crop" and meta["input_size"] == "224" and meta["resize_size"] == "256"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert meta["base_model"] == "mobilenet_v2" and len(meta["base_weights"]) == 64
    assert datetime.strptime(meta["trained_at"], "%Y-%m-%dT%H:%M:%SZ")
    source = json.loads(meta["trained_from"])
    counts = {c: len(list((data / c).iterdir())) for c in ("bottle", "empty")}
    assert source["dataset"] == str(data.resolve()) and source["images"] == counts
    assert source["split"] == "time" and source["train"] + source["validation"] == sum(counts.values())
    assert json.loads(meta["training"])["augment"] == 2

    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["accuracy_deployed"] >= 0.9 and report["accuracy_float"] >= 0.9, report
    assert meta["validation_accuracy"] == f"{report['accuracy_deployed']:.4f}"
    assert report["classes"] == ["bottle", "empty"]
    assert sum(map(sum, report["confusion"])) == report["validation"] == source["validation"]
    assert set(report["per_class"]) == {"bottle", "empty"}
    assert report["per_class"]["empty"]["support"] == round(counts["empty"] * 0.2)
    text = out.with_suffix(".report.txt").read_text()
    assert trained["stdout"] == text
    assert "confusion matrix" in text and "validation accuracy" in text
    png = cv2.imread(str(out.with_suffix(".confusion.png")))
    assert png is not None and png.shape[0] > 100
    # Nothing else beside the model: no temporary files left.
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        Path(f).name for f in report["files"].values())


@pytest.mark.parametrize("runtime", ["onnxruntime", "litert"])
def test_the_trained_model_runs_in_the_pipeline_with_its_class_names(trained, tmp_path, clean_machine,
                                                                     runtime, monkeypatch):
    """In LiteRT the .onnx is converted to TFLite at start-up (once, cached), torch-free."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    record = tmp_path / "r.jsonl"
    p = run_pipeline("video.toml", "--set", f"source.path={need(BOTTLE)}",
                     "--set", f"model.weights={trained['out']}", "--set", f"model.runtime={runtime}",
                     "--set", "source.realtime=false", "--set", MODEL_CORE, "--quiet",
                     "--name", f"trained-{runtime}", "--record", str(record))
    assert p.returncode == 0, p.stderr
    if runtime == "litert":
        assert "converting bottle-state.onnx to TFLite for LiteRT" in p.stderr
        assert len(list((tmp_path / "cache" / "edge-pipeline" / "tflite").glob("bottle-state-*.tflite"))) == 1
    results = read_jsonl(record)
    assert {r["runtime"] for r in results} == {runtime}
    assert len(results) > 500
    assert {r["model"] for r in results} == {"bottle-state"}
    assert {t["label"] for r in results for t in r["top"]} == {"bottle", "empty"}
    judged = [(r["top"][0]["label"], label_of(r["frame"])) for r in results if label_of(r["frame"])]
    right = sum(said == truth for said, truth in judged)
    assert right >= 0.9 * len(judged), (right, len(judged))
    assert any(said == "empty" for said, truth in judged if truth == "empty")


EXPORT_AND_LIST_TORCH = TRAIN_AND_LIST_TORCH.replace("pipeline.cli.train", "pipeline.cli.export")


def test_the_trained_model_converts_to_tflite_without_torch_and_classifies_alike(trained, tmp_path):
    """A model trained on a Pi converts on the Pi: pipeline-export imports no torch, and LiteRT
    gives onnxruntime's top-1 on the training photos (95%: another CPU's kernels may round a
    borderline photo otherwise)."""
    out = tmp_path / "bottle-state.tflite"
    p = subprocess.run([sys.executable, "-c", EXPORT_AND_LIST_TORCH, "--weights", str(trained["out"]),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stderr.strip().splitlines()[-1]) == [], "no torch on the way"
    assert "2 classes" in p.stderr
    from workers.inference.classifier import LiteRTClassifier, OnnxClassifier
    from workers.preprocess.transform import Preprocessor

    litert, onnx = LiteRTClassifier(str(out), 1), OnnxClassifier(str(trained["out"]), 1)
    assert litert.labels == onnx.labels == ["bottle", "empty"]
    assert litert.engine == "xnnpack" and litert.meta["model"] == "bottle-state"
    photos = sorted(trained["data"].glob("*/*.jpg"))
    photos = [f for f in photos if f.parent.name != "unlabelled"]
    x = np.empty((1, 3, 224, 224), np.float32)
    agree = 0
    for f in photos:
        Preprocessor()(cv2.imread(str(f)), x[0])
        agree += int(np.argmax(litert.logits(x))) == int(np.argmax(onnx.logits(x)))
    assert agree >= 0.95 * len(photos), (agree, len(photos))


def test_same_seed_same_weights_another_seed_others(tmp_path, frames):
    data = make_dataset(tmp_path / "data", frames, {"bottle": 8, "empty": 3})
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / f"{name}.onnx"
        train(Options(str(data), str(out), augment=1, epochs=5, seed=seed))
        runs[name] = head_weights(out)
    assert set(runs["a"]) == {"head.weight", "head.bias"} and runs["a"]["head.weight"].shape == (2, 1280)
    assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not np.array_equal(runs["a"]["head.weight"], runs["c"]["head.weight"])


def test_wrong_validation_images_are_listed_and_shown(tmp_path, frames):
    """Three frames of the empty table filed as "bottle", the latest of that class: validated,
    and taken for what they show."""
    data = make_dataset(tmp_path / "data", frames, {"bottle": 8, "empty": 3})
    wrong = [f for f in sorted(frames) if label_of(f) == "empty"][1::9][:3]
    for k, f in enumerate(wrong):
        (data / "bottle" / collect_name(5000 + k)).write_bytes(frames[f])
    out = tmp_path / "m.onnx"
    report = train(Options(str(data), str(out), augment=1, epochs=10))
    errors = {Path(e["file"]).name: (e["true"], e["predicted"]) for e in report.errors}
    assert errors == {collect_name(5000 + k): ("bottle", "empty") for k in range(3)}
    bottle = report.per_class["bottle"]
    assert bottle["precision"] == 1.0 and bottle["recall"] == 1 - 3 / bottle["support"]
    assert report.confusion[0][1] == 3
    sheet = cv2.imread(report.files["errors_png"])
    assert sheet is not None and sheet.shape[1] == 3 * 200  # a tile per wrong image
    assert json.loads(out.with_suffix(".report.json").read_text())["errors"] == report.errors
    assert "3 validation images wrong" in out.with_suffix(".report.txt").read_text()


def test_the_time_split_holds_out_each_class_latest_images(tmp_path):
    """Two sources: names sort by source, the split goes by the capture time in them."""
    for cls in ("open", "shut"):
        (tmp_path / cls).mkdir()
        for frame in range(10):
            source = "yard" if frame % 2 else "door"  # interleaved in time
            (tmp_path / cls / collect_name(frame * 30, source)).write_bytes(b"")
    (tmp_path / "shut" / "a-photo.jpg").write_bytes(b"")  # no capture time: first
    (tmp_path / ".hidden").mkdir()
    ds = dataset.scan(tmp_path)
    assert ds.classes == ["open", "shut"]
    assert ds.counts() == {"open": 10, "shut": 11}
    train_idx, val_idx = dataset.split(ds, 0.2, "time")
    held = {(ds.classes[ds.examples[i].label], ds.examples[i].order[1]) for i in val_idx}
    assert held == {("open", 240), ("open", 270), ("shut", 240), ("shut", 270)}
    assert sorted(train_idx + val_idx) == list(range(21))
    random_a = dataset.split(ds, 0.2, "random", seed=1)
    assert random_a == dataset.split(ds, 0.2, "random", seed=1)
    assert len(random_a[1]) == 4 and random_a[1] != val_idx


def test_warnings_for_few_images_imbalance_near_copies_and_unreadable_files(tmp_path, frames):
    data = make_dataset(tmp_path / "data", frames, {"bottle": 4, "empty": 1}, {"empty": 6})
    for path in sorted((data / "bottle").iterdir()):  # each photo twice, saved again: near copies
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        (path.parent / f"again-{path.name}").write_bytes(
            cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    (data / "bottle" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "m.onnx"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.train", str(data), "--out", str(out),
                        "--augment", "1", "--epochs", "5", "--split", "random"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    warnings = json.loads(out.with_suffix(".report.json").read_text())["warnings"]
    assert any(w.startswith("class 'empty' has only 6 images") for w in warnings), warnings
    assert any(w.startswith("class 'bottle' has ") and "as many as 'empty'" for w in warnings), warnings
    assert any("near copies of training images" in w for w in warnings), warnings
    assert any(w.startswith("1 images were skipped") for w in warnings), warnings
    assert "skipped 1 images that do not decode" in p.stderr
    assert all(f"warning: {w}" in p.stdout for w in warnings)


@pytest.mark.parametrize("layout, args, message", [
    ({}, [], "DATASET: no such folder"),
    ({"bottle": 3}, [], "needs at least 2 class folders, found only 'bottle'"),
    ({"bottle": 3, "empty": 1}, [], "every class needs at least 2 images: 'empty' has 1"),
    ({"bottle": 0, "empty": 0}, [], "holds no images"),
    ({"bottle": 3, "empty": 3}, ["--out-folder-missing"], "--out"),
    ({"bottle": 3, "empty": 3}, ["--out-not-onnx"], "must end in .onnx"),
    ({"bottle": 3, "empty": 3}, ["--val-fraction", "1.5"], "--val-fraction: 1.5 must be between 0 and 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, frames, layout, args, message):
    data = tmp_path / "data"
    out = tmp_path / "m.onnx"
    if layout:
        for cls, n in layout.items():
            (data / cls).mkdir(parents=True)
            for f in sorted(frames)[:n]:
                (data / cls / collect_name(f)).write_bytes(frames[f])
    if args == ["--out-folder-missing"]:
        out, args = tmp_path / "no" / "m.onnx", []
    elif args == ["--out-not-onnx"]:
        out, args = tmp_path / "m.txt", []
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.train", str(data), "--out", str(out), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("pipeline-train: ") and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part-*"))

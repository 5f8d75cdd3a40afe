"""Classification as a state: the region of interest classified on real photographs, the state
options' one-line errors, the state machine's smoothing on a real video's results and on any
sequence of results, and a watched group of ImageNet classes on the real video."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.client.result import Prediction, Result
from pipeline.client.states import StateMachine, Tracker
from pipeline.config import ConfigError, StateConfig, load_config
from pipeline.config.classes import CLASSES_FILE, imagenet_classes, imagenet_groups
from tests.support.assets import BOTTLE, IMAGES, ROOT, need
from tests.support.processes import MODEL_CORE, read_jsonl, run_pipeline
from workers.preprocess.transform import Preprocessor

LEFT, RIGHT = "n01820546_lorikeet.JPEG", "n03841143_odometer.JPEG"


def class_of(file: str) -> int:
    with open(need(IMAGES / "labels.csv")) as f:
        return next(int(r["class_index"]) for r in csv.DictReader(f) if r["file"] == file)


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """A lorikeet and an odometer, two real photos, side by side in one 600x300 image."""
    folder = tmp_path_factory.mktemp("composite")
    halves = [cv2.resize(cv2.imread(str(need(IMAGES / f))), (300, 300)) for f in (LEFT, RIGHT)]
    cv2.imwrite(str(folder / "pair.png"), np.hstack(halves))
    return folder


@pytest.mark.parametrize("roi, photo", [("[0.0, 0.0, 0.5, 1.0]", LEFT), ("[300, 0, 300, 300]", RIGHT)])
def test_the_region_of_interest_is_what_gets_classified(side_by_side, tmp_path, roi, photo,
                                                        clean_machine):
    out = tmp_path / "r.jsonl"
    p = run_pipeline("images.toml", "--quiet", "--set", f"source.path={side_by_side}",
                     "--set", f"source.roi={roi}", "--set", "model.runtime=onnxruntime",
                     "--record", str(out))
    assert p.returncode == 0, p.stderr
    (result,) = read_jsonl(out)
    assert result["top"][0]["index"] == class_of(photo)
    assert result["frame_shape"] == [300, 600, 3]  # consumers still get the whole frame


def test_the_region_is_cropped_before_the_usual_transform(side_by_side):
    """Preprocessing a region equals preprocessing that region cut out as an image of its own."""
    frame = cv2.imread(str(side_by_side / "pair.png"))
    config = load_config(None, ["source.kind=\"images\"", f"source.path=\"{side_by_side}\"",
                                "source.roi=[0.5, 0.0, 0.5, 1.0]"])
    x0, y0, x1, y1 = config.source.roi_box(600, 300)
    assert (x0, y0, x1, y1) == (300, 0, 600, 300)
    prep, a, b = Preprocessor(), np.empty((3, 224, 224), np.float32), np.empty((3, 224, 224), np.float32)
    prep(frame[y0:y1, x0:x1], a)
    prep(np.ascontiguousarray(frame[:, 300:]), b)
    assert np.array_equal(a, b)


def test_a_pixel_region_outside_the_video_stops_the_pipeline_with_one_line(clean_machine):
    p = run_pipeline("video.toml", "--quiet", "--set", f"source.path={need(BOTTLE)}",
                     "--set", "source.roi=[600, 0, 100, 100]", "--set", "model.runtime=onnxruntime",
                     "--set", MODEL_CORE,
                     "--duration", "30")
    assert p.returncode == 1
    assert "source.roi: [600, 0, 100, 100] does not fit in the 640x360 frame" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("setting, message", [
    ("source.state.watch=[-1]", "source.state.watch: -1 is neither a class name nor a class index"),
    ("source.state.window=0", "source.state.window: Input should be greater than or equal to 1"),
    ("source.state.smoothing=\"mean\"", "source.state.smoothing: Input should be 'consecutive' or"),
    ("source.roi=[0.0, 0.0, 0.5]", "source.roi: [0.0, 0.0, 0.5] must be [x, y, width, height]"),
    ("source.roi=[0.6, 0.0, 0.5, 1.0]", "source.roi: [0.6, 0.0, 0.5, 1.0] as fractions must lie"),
    ("source.roi=[0, 0, 1, 1]", "for fractions write decimals"),
    ("source.roi=[0, 0, 700, 100]", "source.roi: [0, 0, 700, 100] does not fit in the 640x480 frame"),
    ("consumers=[{kind=\"mqtt\", broker=\"mqtt://u:p@host\"}]",
     "broker: credentials do not belong in the URL"),
])
def test_state_and_region_mistakes_are_one_line_before_anything_starts(setting, message):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "demo.toml", [setting])
    assert message in str(e.value) and "\n" not in str(e.value)
    p = subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / "demo.toml"),
                        "--set", setting], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("setting, message", [
    ("source.state.watch=[\"water botle\"]",
     "source.state.watch: 'water botle' is not an ImageNet class or group (closest: 'water bottle'"),
    ("source.state.watch=[1000]", "source.state.watch: class index 1000 is not an ImageNet class"),
])
def test_a_watched_class_the_model_lacks_is_one_line_before_anything_starts(setting, message):
    """Watched classes are checked against the model's own names, once the model is known: by
    pipeline-up before any stage starts, and by --check."""
    base = [sys.executable, "-m", "pipeline.cli.up", str(ROOT / "configs" / "demo.toml"),
            "--set", setting, "--set", "model.runtime=onnxruntime"]
    p = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr
    p = subprocess.run(base + ["--check"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and message in p.stdout + p.stderr


def test_watched_names_are_the_models_own_labels():
    """The names a config may watch are the labels the shipped model's results carry."""
    import onnxruntime

    model = ROOT / "workers" / "inference" / "model_files" / "mobilenet_v2_qnnpack_imagenet1k.onnx"
    meta = onnxruntime.InferenceSession(str(model)).get_modelmeta().custom_metadata_map
    assert list(imagenet_classes()) == json.loads(meta["categories"])
    assert CLASSES_FILE.read_text().count("\n") == 1000
    assert StateConfig(watch=["Water Bottle", 3]).watch_indices(imagenet_classes(), "m") == {898, 3}


@pytest.fixture(scope="module")
def bottle_results(tmp_path_factory):
    """Every frame of bottle-detection.mp4 classified once, in frame order."""
    out = tmp_path_factory.mktemp("bottle") / "r.jsonl"
    p = run_pipeline("video.toml", "--quiet", "--set", f"source.path={need(BOTTLE)}",
                     "--set", "source.realtime=false", "--set", "edges.frames.policy=block",
                     "--set", "edges.tensors.policy=block", "--set", "model.runtime=onnxruntime",
                     "--set", MODEL_CORE, "--record", str(out))
    assert p.returncode == 0, p.stderr
    return [Result.from_message(r) for r in sorted(read_jsonl(out), key=lambda r: r["seq"])]


def run_machine(results: list[Result], **options) -> tuple[list, list[int | None]]:
    """The events, and the state after each result."""
    m = StateMachine("video", StateConfig(**options))
    events, states = [], []
    for r in results:
        events += m.update(r)
        states.append(m.state.index)
    return events, states


def changes(states: list[int | None]) -> list[int]:
    """The results at which the state changed (it starts as `none`)."""
    return [t for t, s in enumerate(states) if s != (states[t - 1] if t else None)]


def needed(window: int, smoothing: str) -> int:
    """How many votes of the window a class needs to become the state."""
    return window if smoothing == "consecutive" else window // 2 + 1


def check_smoothing(votes: list[int | None], states: list[int | None], window: int,
                    smoothing: str) -> None:
    """What smoothing promises for any sequence of votes, checked against the raw votes."""
    changed, raw = changes(states), changes(votes)
    # A state just entered holds for a whole window: never two changes within `window` results.
    assert all(b - a >= window for a, b in zip(changed, changed[1:])), (changed, votes)
    # Each change is the rule's verdict on the last `window` votes.
    for t in changed:
        assert votes[max(0, t + 1 - window):t + 1].count(states[t]) >= needed(window, smoothing)
    # Never more changes than the votes themselves make, and fewer when they flicker: a run of
    # votes between two of their changes shorter than the rule needs is smoothed away.
    assert len(changed) <= len(raw)
    if any(b - a < needed(window, smoothing) for a, b in zip(raw, raw[1:])):
        assert len(changed) < len(raw)
    # It follows the votes: after 2 windows of one class, that class is the state.
    for t in range(2 * window - 1, len(votes)):
        if len(set(votes[t + 1 - 2 * window:t + 1])) == 1:
            assert states[t] == votes[t]


@pytest.mark.parametrize("smoothing", ["consecutive", "majority"])
def test_smoothing_removes_flickers_on_real_frames(bottle_results, smoothing):
    """Checked against this run's own top-1 sequence, whatever this CPU's kernels made of it."""
    raw_events, raw_states = run_machine(bottle_results, window=1)
    events, states = run_machine(bottle_results, window=7, smoothing=smoothing)
    # Unsmoothed, the state is each result's top-1.
    votes = [r.top[0].index for r in bottle_results]
    assert raw_states == votes
    check_smoothing(votes, states, 7, smoothing)
    assert 0 < len(events) <= len(raw_events)
    # Each change is an end of the old class and a start of the new one, at the same frame.
    assert events[0].event == "start"
    for end, start in zip(events[1::2], events[2::2]):
        assert (end.event, start.event, end.frame) == ("end", "start", start.frame)
        assert end.index != start.index


X, Y = 1, 2  # two classes of synthetic results


def synthetic(votes: list[int | None]) -> list[Result]:
    """A result per vote, one per frame at 30 fps: the class at probability 0.9, or for None a
    class at 0.1 (below a `min_prob` of 0.5: a vote for `none`)."""
    return [Result(pipeline="p", seq=i, result_seq=i, source="s", frame_index=i, item=None,
                   captured_at=1e9 + i / 30, latency_ms=1.0, model="m",
                   top=[Prediction(3 if v is None else v, f"class {v}", 0.1 if v is None else 0.9)],
                   timestamps={}) for i, v in enumerate(votes, 1)]


def test_a_majority_just_reached_does_not_flip_back_on_one_vote():
    """[X,Y,Y,Y,X,X,X] makes X the state; one more Y is again 4 of 7 for Y, but X holds until Y
    has won from seven votes all cast after X began."""
    _, states = run_machine(synthetic([X, Y, Y, Y, X, X, X, Y]), window=7, smoothing="majority")
    assert states == [None] * 6 + [X, X]
    events, states = run_machine(synthetic([X, Y, Y, Y, X, X, X] + [Y] * 7), window=7,
                                 smoothing="majority")
    assert states == [None] * 6 + [X] * 7 + [Y]
    assert [(e.event, e.index, e.frame) for e in events] == [("start", X, 7), ("end", X, 14),
                                                             ("start", Y, 14)]
    # The first state is not held back: four votes of seven decide it, as before.
    _, states = run_machine(synthetic([X] * 4), window=7, smoothing="majority")
    assert states == [None] * 3 + [X]


@settings(max_examples=400, deadline=None)
@given(votes=st.lists(st.sampled_from([X, Y, 3, None]), max_size=80), window=st.integers(1, 9),
       smoothing=st.sampled_from(["consecutive", "majority"]))
def test_smoothing_keeps_its_promises_on_any_sequence(votes, window, smoothing):
    _, states = run_machine(synthetic(votes), window=window, smoothing=smoothing, min_prob=0.5)
    check_smoothing(votes, states, window, smoothing)


def test_watching_one_class_turns_everything_else_into_none(bottle_results):
    events, states = run_machine(bottle_results, watch=["water bottle"], min_prob=0.5, window=3)
    assert set(states) == {None, 898}
    assert [e.event for e in events] == ["start", "end"] * (len(events) // 2) + ["start"] * (len(events) % 2)
    for e in events:
        assert e.label == "water bottle" and e.probability >= 0.5
        r = next(r for r in bottle_results if r.seq == e.seq)
        assert (e.time, e.frame) == (r.captured_at, r.frame_index)
    ends = [e for e in events if e.event == "end"]
    assert all(e.to_dict()["duration_s"] >= 0 for e in ends)
    # A higher bar, fewer frames qualify: the state is on for fewer results.
    _, strict = run_machine(bottle_results, watch=[898], min_prob=0.95, window=3)
    assert strict.count(898) < states.count(898)


def test_a_tracker_keeps_one_state_per_source(bottle_results):
    tracker = Tracker({"sources": [{"kind": "synthetic", "id": "a", "state": {"window": 2}},
                                   {"kind": "synthetic", "id": "b"}]})
    assert tracker.declared("a") and not tracker.declared("b")
    first, second = bottle_results[:2]
    assert first.top[0].index == second.top[0].index
    for r in (first, second):
        for source in ("a", "b"):
            tracker.update(Result.from_message({**r.raw, "source": source}))
    # Two agreeing results: enough for a's window of 2, not yet for b's default of 3.
    assert tracker.state("a").index == first.top[0].index and tracker.state("b").index is None
    assert tracker.machines["a"].config.window == 2 and tracker.machines["b"].config.window == 3


def test_a_late_result_of_an_older_frame_does_not_vote(bottle_results):
    """Several workers finish out of order: the newest frame wins, as everywhere else."""
    older, newer = next((a, b) for a, b in zip(bottle_results, bottle_results[1:])
                        if a.top[0].index != b.top[0].index)
    machine = StateMachine("video", StateConfig(window=1))
    assert [e.event for e in machine.update(newer)] == ["start"]
    assert machine.update(older) == []  # it came late: no vote, no flicker
    assert machine.state.index == newer.top[0].index


def test_a_watched_group_is_on_whenever_its_class_alone_would_be(bottle_results):
    """Unsmoothed, `bottle` (water bottle 898 and six other bottles and jugs, their probabilities
    summed) is the state at every result where `water bottle` alone is, and at some more."""
    alone = StateMachine("video", StateConfig(watch=["water bottle"], min_prob=0.5, window=1))
    group = StateMachine("video", StateConfig(watch=["bottle"], min_prob=0.5, window=1))
    on_alone = on_group = 0
    for r in bottle_results:
        alone.update(r)
        group.update(r)
        if alone.state.index == 898:
            on_alone += 1
            assert group.state.to_dict()["group"] == "bottle", r.top
        if group.state.group == "bottle":
            on_group += 1
            assert group.state.label == "bottle" and group.state.index in imagenet_groups()["bottle"]
    assert 0 < on_alone <= on_group


def test_a_pipeline_watching_a_group_reports_the_group(tmp_path, clean_machine):
    """watch = ["bottle"] on the shipped clip: the jsonl consumer's events name the group, each
    with the group's most probable class (the water bottle, ImageNet 898, where it stands)."""
    out = tmp_path / "events.jsonl"
    p = run_pipeline("video.toml", "--quiet", "--set", f"source.path={need(BOTTLE)}",
                     "--set", "source.realtime=false", "--set", "edges.frames.policy=block",
                     "--set", "edges.tensors.policy=block", "--set", "model.runtime=onnxruntime",
                     "--set", MODEL_CORE,
                     "--set", 'source.state={watch=["bottle"], min_prob=0.3, window=5}',
                     "--set", f'consumers=[{{kind="jsonl", out="{out}"}}]')
    assert p.returncode == 0, p.stderr
    events = [line for line in read_jsonl(out) if line.get("type") == "event"]
    assert events and events[0]["event"] == "start", events
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "end"] * (len(events) // 2) + ["start"] * (len(events) % 2)
    for e in events:
        assert (e["label"], e["group"]) == ("bottle", "bottle"), e
        assert e["index"] in imagenet_groups()["bottle"] and e["probability"] >= 0.3, e
    assert 898 in {e["index"] for e in events}

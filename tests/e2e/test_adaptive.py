"""Adaptive input resolution: the controller's hysteresis, and the live pipeline switching size."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipeline.supervisor.adaptive import SizeController
from tests.support.assets import BOTTLE, need
from tests.support.processes import read_jsonl, run_pipeline

SIZES = [224, 192, 160]


def feed(ctl: SizeController, service_ms: float, seconds: int, start: float = 0.0) -> list[int]:
    changes = []
    for t in range(seconds):
        size = ctl.update(start + t, service_ms)
        if size is not None:
            changes.append(size)
    return changes


def test_steps_down_only_after_the_hold_time():
    ctl = SizeController(SIZES, target_fps=30, hold_s=2)
    assert feed(ctl, 40.0, 2) == []  # 25 fps capacity for 1 s: not yet
    assert ctl.update(2.0, 40.0) == 192
    assert ctl.size == 192


def test_steps_down_to_the_smallest_and_no_further():
    ctl = SizeController(SIZES, target_fps=30, hold_s=1)
    assert feed(ctl, 60.0, 20) == [192, 160]
    assert ctl.size == 160


def test_steps_up_only_with_headroom_at_the_larger_size():
    ctl = SizeController(SIZES, target_fps=30, hold_s=1)
    feed(ctl, 40.0, 3)
    assert ctl.size == 192
    # 25 ms at 192 is 40 fps, but 224 would take 25 * (224/192)^2 = 34 ms: 29 fps, too slow.
    assert feed(ctl, 25.0, 10, start=10) == []
    # 20 ms at 192 predicts 27 ms (36.7 fps) at 224: above 1.15 x 30, so back up.
    assert feed(ctl, 20.0, 5, start=30) == [224]


def test_a_condition_must_hold_without_interruption():
    """At 192, one second asks for a smaller size and the next for a larger one: with a 2 s
    hold neither ever wins, so the size does not flap."""
    ctl = SizeController(SIZES, target_fps=30, hold_s=2)
    feed(ctl, 40.0, 3)
    assert ctl.size == 192
    changes = [ctl.update(10.0 + t, 36.0 if t % 2 else 20.0) for t in range(60)]
    assert changes == [None] * 60 and ctl.size == 192


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_pipeline_lowers_the_input_size_when_the_model_is_too_slow(runtime, tmp_path, clean_machine):
    """The model's own time per frame is measured first, in this pipeline on this machine; the
    target frame rate is then set well above what it reaches at 224 (1/0.6: the step down holds
    even if the machine gets up to 1.5x faster after the measurement, a load that ends, and the
    step back up would need it 1.9x faster). The supervisor lowers the input to 192 after the
    hold time, never raises it again (224 would be too slow), results say so, and the bottle is
    still recognised at the smaller size."""
    need(BOTTLE)
    common = ["--set", f"source.path={BOTTLE}", "--set", "source.loop=true",
              "--set", "source.realtime=false", "--set", f"model.runtime={runtime}", "--quiet",
              "--set", "inference.workers=1"]  # one worker on its own core: its rate is the model's
    summary = tmp_path / "s.json"
    p = run_pipeline("video.toml", *common, "--duration", "4", "--summary-json", str(summary))
    assert p.returncode == 0, p.stderr
    service_ms = json.loads(summary.read_text())["service_ms"]["inference"]["p50"]
    target = 1000 / service_ms / 0.6
    record = tmp_path / "r.jsonl"
    p = run_pipeline("video.toml", *common, "--set", "adaptive.enabled=true",
                     "--set", "adaptive.hold_s=1", "--set", f"adaptive.target_fps={target:.1f}",
                     "--set", "adaptive.sizes=[224, 192]",
                     "--duration", "10", "--record", str(record))
    assert p.returncode == 0, p.stderr
    steps = [line for line in p.stderr.splitlines() if line.startswith("adaptive: input")]
    assert steps and steps[0].startswith("adaptive: input 224 -> 192"), (service_ms, p.stderr)
    results = [r for r in read_jsonl(record) if r.get("type") == "result"]
    sizes = [r["input_size"] for r in results]
    assert sizes[0] == 224 and all(a >= b for a, b in zip(sizes, sizes[1:])), "never back up"
    small = [r for r in results if r["input_size"] < 224]
    assert len(small) > len(results) - len(small), Counter(sizes)
    assert sum(r["top"][0]["index"] == 898 for r in small) > 0.5 * len(small)

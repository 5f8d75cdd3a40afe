"""Consumers cannot slow the pipeline: ten at once, one SIGSTOPped, measured against none.

Kept apart from test_attach.py so no other pipeline shares the cores while throughput is compared.
The model runs in torch here: isolation means a consumer never makes the pipeline wait, which is
only measurable where the consumers have CPU time to run on. With onnxruntime this pipeline keeps
both cores busy by itself, and ten consumers reading 250 results a second each take their CPU
time from capture's core (tools/bench/consumers.py measures that case).
Throughput with consumers is compared with the same run's throughput without them just before and
after, so a machine that is slow or loaded (by anything) is so on both sides of the comparison.
The two throughput tests share one pipeline, started after the crash test's own has ended.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.assets import BOTTLE, ROOT, WEIGHTS, need
from tests.support.processes import pipeline_cmd, read_jsonl

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]


# Throughput with consumers is compared with the same run's throughput without them in the
# windows just before and after. A machine shared with other work changes speed by itself, so a
# comparison counts only where those two agree, and one that fails is measured again, a few times:
# consumers that slow the pipeline do so every time, a burst of load elsewhere does not.
# The consumers receive at the lowest priority (nice 19): what is measured is whether the pipeline
# waits for them, not the CPU time they take on a machine that has none to spare.
WARMUP_S, WINDOW_S, ATTEMPTS = 2.0, 5.0, 5
RECORDED_S = 30.0  # the record is written in blocks: at most this long to hold a window's results
STEADY = 0.8  # the slower of the two windows without consumers has at least this share of the faster
HOLDS = 0.8  # the share of that throughput kept with consumers


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A pipeline classifying as fast as this machine can, recorded, warmed up: its name and its
    record. The throughput tests share it, each measuring its own windows; it exits cleanly."""
    record = tmp_path_factory.mktemp("fast") / "fast.jsonl"
    args = ["--name", "fastiso", "--quiet", "--record", str(record),
            "--set", f"source.path={need(BOTTLE)}", "--set", f"model.weights={need(WEIGHTS)}",
            "--set", "source.loop=true", "--set", "source.realtime=false",
            "--set", "model.runtime=torch"]
    proc = subprocess.Popen(pipeline_cmd("video.toml", *args), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (record.exists() and record.stat().st_size > 0):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        time.sleep(WARMUP_S)
        yield "fastiso", record
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def _fast_run(fast, measure, key: str) -> tuple[list[dict], list[dict]]:
    """`measure(name, before)` run beside the fast pipeline until the throughput in its window
    `key` holds (see _until_held). All the recorded results and the attempts."""
    name, record = fast
    recorded = functools.partial(_results_so_far, record)
    attempts = _until_held(recorded, functools.partial(measure, name), key)
    return _results_so_far(record), attempts


def _results_so_far(path) -> list[dict]:
    lines = path.read_text().split("\n")[:-1]  # the last one may be half written
    return [r for r in map(json.loads, filter(None, lines)) if r.get("type") == "result"]


def _done_between(results: list[dict], t0: int, t1: int) -> list[dict]:
    return [r for r in results if t0 <= r["t"]["inference_end"] < t1]


def _fps(results: list[dict], window: tuple[int, int]) -> float:
    return len(_done_between(results, *window)) / ((window[1] - window[0]) / 1e9)


def _window(seconds: float) -> tuple[int, int]:
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    return t0, time.monotonic_ns()


def _steady(fps: dict[str, float]) -> bool:
    return min(fps["before"], fps["after"]) >= STEADY * max(fps["before"], fps["after"])


def _holds(fps: dict[str, float], key: str) -> bool:
    return fps[key] > HOLDS * min(fps["before"], fps["after"])


def _until_held(recorded, measure, key: str) -> list[dict]:
    """Runs `measure(before)` (a window without consumers; it returns its windows, `key` the one
    with consumers and "after" the last, and anything else) until the windows before and after
    show the same speed and the throughput in `key` holds, at most ATTEMPTS times. Every
    attempt's windows with their fps, the last one last."""
    attempts, before = [], _window(WINDOW_S)
    for _ in range(ATTEMPTS):
        windows, extra = measure(before)
        results = _recorded_past(recorded, windows["after"][1])
        fps = {k: _fps(results, w) for k, w in windows.items()}
        attempts.append({"windows": windows, "fps": fps, "extra": extra})
        if _steady(fps) and _holds(fps, key):
            break
        before = windows["after"]
    return attempts


def _recorded_past(recorded, t: int) -> list[dict]:
    """The recorded results once they include one classified 0.2 s after `t` (a result of another
    worker finished before `t` is not written after it)."""
    deadline = time.monotonic() + RECORDED_S
    while not (results := recorded()) or results[-1]["t"]["inference_end"] < t + 200_000_000:
        assert time.monotonic() < deadline, f"nothing recorded past the window in {RECORDED_S:.0f} s"
        time.sleep(0.1)
    return results


def _assert_held(attempts: list[dict], key: str) -> dict:
    last = attempts[-1]["fps"]
    assert _steady(last) and _holds(last, key), [a["fps"] for a in attempts]
    return attempts[-1]


def test_supervised_consumer_that_crashes_is_reported_and_the_pipeline_runs_on(tmp_path):
    crasher = tmp_path / "crasher.py"
    crasher.write_text("n = 0\n\ndef on_result(result):\n    global n\n    n += 1\n"
                       "    if n == 5:\n        raise RuntimeError('consumer bug')\n")
    record = tmp_path / "all.jsonl"
    p = subprocess.run(pipeline_cmd(
        "demo.toml", "--set", "model.weights=none", "--duration", "4", "--quiet",
        "--name", "crashy", "--set",
        f'consumers=[{{kind="{crasher}:on_result"}}, {{kind="jsonl", out="{record}"}}]',
        "--summary-json", str(tmp_path / "s.json")), cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert p.returncode == 0, p.stderr
    assert "consumer " in p.stderr and "ended (exit code 1); the pipeline runs on" in p.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["stopped_by"] == "duration" and s["results_received"] > 60
    assert len(read_jsonl(record)) == s["results_received"]  # the other consumer saw everything


def test_ten_consumers_all_receive_and_throughput_holds(fast, tmp_path):
    def ten_consumers(name: str, before: tuple[int, int]) -> tuple[dict, list]:
        outs = [tmp_path / f"c{len(list(tmp_path.glob('c*')))}-{i}.jsonl" for i in range(10)]
        consumers = [subprocess.Popen([*ATTACH, "--name", name, "--consumer", "jsonl", "--out", str(o)],
                                      cwd=ROOT, text=True, stderr=subprocess.PIPE) for o in outs]
        deadline = time.monotonic() + 60
        while not all(o.exists() and o.stat().st_size > 0 for o in outs):
            assert time.monotonic() < deadline, "a consumer received nothing"
            time.sleep(0.1)
        for c in consumers:
            os.setpriority(os.PRIO_PROCESS, c.pid, 19)
        during = _window(WINDOW_S)
        deadline = time.monotonic() + 30  # the last result of the window: each one has read it
        while not all(_done_between(_results_so_far(o), during[1], 2**63) for o in outs):
            assert time.monotonic() < deadline, "a consumer stopped receiving"
            time.sleep(0.2)
        for c in consumers:
            os.setpriority(os.PRIO_PROCESS, c.pid, 0)
            c.send_signal(signal.SIGINT)
        for c in consumers:
            c.communicate(timeout=30)
        return {"before": before, "during": during, "after": _window(WINDOW_S)}, outs

    results, attempts = _fast_run(fast, ten_consumers, "during")
    steady = _assert_held(attempts, "during")
    print(f"fps without consumers, with 10, without again: {[a['fps'] for a in attempts]}")
    published = {r["t"]["inference_end"] for r in _done_between(results, *steady["windows"]["during"])}
    for o in steady["extra"]:  # every consumer received what the pipeline published meanwhile
        received = {r["t"]["inference_end"] for r in read_jsonl(o)}
        assert len(published & received) >= 0.9 * len(published), (o.name, len(published))


def _caught_up(text: str) -> bool:
    """The text consumer has said what it missed and printed 20 results after that."""
    after = text.rpartition("\n... missed ")[2]
    return after != text and after.count("\n") > 20


def test_sigstopped_consumer_reports_its_gap_and_slows_nothing(fast, tmp_path):
    def stall_a_consumer(name: str, before: tuple[int, int]) -> tuple[dict, tuple[str, str]]:
        out = tmp_path / f"stalled{len(list(tmp_path.glob('stalled*')))}.txt"
        consumer = subprocess.Popen([*ATTACH, "--name", name, "--format", "text"], cwd=ROOT,
                                    text=True, stdout=open(out, "w"), stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while out.read_text().count("\n") < 20:
            assert time.monotonic() < deadline, "the consumer received nothing"
            time.sleep(0.1)  # until results flow to the consumer
        consumer.send_signal(signal.SIGSTOP)
        stopped = _window(5.0)
        consumer.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _caught_up(out.read_text()):
            time.sleep(0.1)
        consumer.send_signal(signal.SIGINT)
        _, err = consumer.communicate(timeout=60)
        return {"before": before, "stopped": stopped, "after": _window(WINDOW_S)}, (out.read_text(), err)

    results, attempts = _fast_run(fast, stall_a_consumer, "stopped")
    steady = _assert_held(attempts, "stopped")  # the stopped consumer held nothing up
    text, err = steady["extra"]
    report = err.strip().splitlines()[-1]
    missed = int(report.split(" results, ")[1].split()[0])
    gaps = [int(line.split()[2]) for line in text.splitlines() if line.startswith("... missed")]
    assert gaps and sum(gaps) == missed, report
    # The text consumer skips results older than 2 s: whatever the pipeline classified from the
    # stop until 2 s before the consumer went on (a margin of 0.5 s each side) is lost to it.
    t_stop, t_cont = steady["windows"]["stopped"]
    lost = _done_between(results, t_stop + 500_000_000, t_cont - 2_500_000_000)
    assert len(lost) > 0 and missed >= len(lost), (missed, len(lost))

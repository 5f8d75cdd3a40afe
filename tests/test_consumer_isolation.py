"""Consumers cannot slow the pipeline: ten at once, one SIGSTOPped, measured against none.

Kept apart from test_attach.py so no other pipeline shares the cores while throughput is compared.
The model runs in torch here: isolation means a consumer never makes the pipeline wait, which is
only measurable where the consumers have CPU time to run on. With onnxruntime this pipeline keeps
both cores busy by itself, and ten consumers reading 250 results a second each take their CPU
time from capture's core (tools/bench_consumers.py measures that case).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pipeline.transport.rundir import NotRunning, find_pipeline

from .conftest import BOTTLE, ROOT, WEIGHTS, need, pipeline_cmd, read_jsonl

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]


def _fast_run(tmp_path, tag: str, *sets: str, during=None) -> dict:
    summary = tmp_path / f"{tag}.json"
    args = ["--name", f"fast{tag}", "--quiet", "--summary-json", str(summary), "--duration", "10",
            "--set", f"source.path={need(BOTTLE)}", "--set", f"model.weights={need(WEIGHTS)}",
            "--set", "source.loop=true", "--set", "source.realtime=false",
            "--set", "model.runtime=torch"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(pipeline_cmd("video.toml", *args), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    extra = during(f"fast{tag}") if during else None
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    s["extra"] = extra
    return s


@pytest.fixture(scope="module")
def baseline_fps(tmp_path_factory):
    return _fast_run(tmp_path_factory.mktemp("base"), "base")["fps"]


def test_ten_consumers_all_receive_and_throughput_holds(tmp_path, baseline_fps):
    outs = [tmp_path / f"c{i}.jsonl" for i in range(10)]
    consumers = ",".join(f'{{kind="jsonl", out="{o}"}}' for o in outs)
    s = _fast_run(tmp_path, "ten", f"consumers=[{consumers}]")
    counts = [len(read_jsonl(o)) for o in outs]
    assert all(c > 0.9 * s["frames"]["classified"] for c in counts), counts
    assert s["fps"] > 0.8 * baseline_fps, (s["fps"], baseline_fps)
    print(f"fps with 0 consumers {baseline_fps}, with 10: {s['fps']}")


def test_sigstopped_consumer_reports_its_gap_and_slows_nothing(tmp_path, baseline_fps):
    def stall_a_consumer(name: str):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                find_pipeline(name)
                break
            except NotRunning:
                time.sleep(0.2)
        consumer = subprocess.Popen([*ATTACH, "--name", name, "--format", "text"], cwd=ROOT,
                                    text=True, stdout=open(tmp_path / "stalled.txt", "w"),
                                    stderr=subprocess.PIPE)
        out = tmp_path / "stalled.txt"
        while time.monotonic() < deadline and out.read_text().count("\n") < 20:
            time.sleep(0.1)  # until results flow to the consumer
        consumer.send_signal(signal.SIGSTOP)
        time.sleep(5)
        consumer.send_signal(signal.SIGCONT)
        _, err = consumer.communicate(timeout=60)  # ends with the pipeline
        return err

    s = _fast_run(tmp_path, "stop", during=stall_a_consumer)
    report = s["extra"].strip().splitlines()[-1]
    missed = int(report.split(" results, ")[1].split()[0])
    assert missed > 0, report
    lines = (tmp_path / "stalled.txt").read_text().splitlines()
    gaps = [int(line.split()[2]) for line in lines if line.startswith("... missed")]
    assert gaps and sum(gaps) == missed
    # 5 s behind at ~40 results/s: the results older than 2 s were dropped, fresh ones kept.
    assert missed >= 2 * baseline_fps, (missed, baseline_fps)
    assert s["fps"] > 0.8 * baseline_fps, (s["fps"], baseline_fps)


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

"""docs/protocol.md is what a client in another language is written from: the keys its tables
document must be exactly the keys a running pipeline sends (status, results, run.json), no more
and no fewer, present when it says they are, and the counts it defines must behave as it says."""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from pipeline import attach
from pipeline.observe.format import format_status
from pipeline.observe.report import RunReport
from pipeline.supervisor import results_hub
from pipeline.supervisor.results_hub import ResultsHub
from pipeline.transport.rundir import NotRunning, find_pipeline
from pipeline.transport.workqueue import SharedCounter
from tests.support.assets import ROOT
from tests.support.drop_reasons import reasons_in_code
from tests.support.processes import launch, pipeline_cmd
from tests.support.topologies import finish, up, wait_for, write_config

DOC = ROOT / "docs" / "protocol.md"


def documented(heading: str) -> set[str]:
    """The keys in the first column of the table under `heading` (`a`, `b` rows give both)."""
    lines = DOC.read_text().splitlines()
    start = lines.index(heading)
    keys: set[str] = set()
    table: list[str] = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    assert table, f"no table under {heading!r}"
    for row in table[2:]:  # after the header and the rule
        first = row.split("|")[1]
        keys |= set(re.findall(r"`([^`]+)`", first))
    return keys


def _settled(status: dict | None) -> bool:
    """Every stage has sent its own stats (not only the harness's heartbeat), and a result has
    come."""
    return bool(status and status["sources"] and all(
        m["state"] == "running" and m["threads"] is not None for m in status["stages"].values()))


def test_the_documented_keys_are_the_ones_sent(clean_machine):
    proc = launch(pipeline_cmd("demo.toml", "--quiet", "--name", "doclab", "--set",
                               "model.runtime=onnxruntime"))
    try:
        info = find_pipeline("doclab")
        on_disk = json.loads((Path(info["dir"]) / "run.json").read_text())  # what a client reads
        with attach("doclab", status=True) as sub:
            result = sub.receive(timeout=10)
            deadline = time.monotonic() + 10
            while not _settled(sub.last_status) and time.monotonic() < deadline:
                sub.receive(timeout=1)
            status = sub.last_status
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert result is not None and status is not None

    assert set(status) == documented("### Status: the message")
    stage_keys = set().union(*(set(m) for m in status["stages"].values()))
    # stall_reason is sent only while a stage is stalled by an edge (tests/e2e/test_edge_admission.py)
    assert stage_keys | {"stall_reason"} == documented("### Status: per stage (`stages.<name>`)")
    assert set().union(*map(set, status["sources"].values())) == \
        documented("### Status: per source (`sources.<id>`)")
    assert set(status["totals"]) == documented("### Status: totals (`totals`)")
    assert set(status["health"]) <= documented("### Status: health (`health`)")  # what it tells

    # `item` comes with an image folder's results only; the timestamps are listed in `t`'s row.
    assert set(result.raw) | {"item"} == documented('### `type = "result"`')
    t_row = next(line for line in DOC.read_text().splitlines() if line.startswith("| `t` |"))
    assert set(result.raw["t"]) <= set(re.findall(r"`(\w+)`", t_row))

    sent = {k for k, v in on_disk.items() if not isinstance(v, dict) or k == "config"} | {
        f"{k}.{sub}" for k, v in on_disk.items() if isinstance(v, dict) and k != "config" for sub in v}
    assert sent == documented("## Finding a pipeline")
    assert on_disk["dir"] == info["dir"] and Path(on_disk["dir"]).is_absolute()
    assert 1 <= on_disk["token"] < 2**53  # exact in a JavaScript number
    assert on_disk["stages"] == ["inference", "preprocess", "capture"]
    # the config's layout: the config file's sections, defaults filled in
    assert {"name", "source", "sources", "capture", "preprocess", "inference", "model", "edges",
            "supervision", "adaptive", "curve", "consumers"} <= set(on_disk["config"])
    assert on_disk["config"]["sources"] == [] and on_disk["config"]["source"]["kind"] == "synthetic"
    assert on_disk["config"]["edges"]["frames"]["policy"] == "latest"


def test_every_drop_reason_the_code_counts_is_documented():
    in_code = reasons_in_code()
    assert {"latest", "drop_new", "torn", "malformed", "restart", "stalled", "oversize",
            "corrupt", "decode"} <= in_code  # the reading of the code finds them
    assert documented("### Status: drop reasons") == in_code


# -- the results hub: `dropped` counts losses only, never decreases, and covers every gap ------

def _result(rseq: int, inference_s: float = 0.0) -> bytes:
    """A result as docs/protocol.md defines it, numbered `rseq`, its model run `inference_s` long."""
    return msgpack.packb({
        "schema": 1, "type": "result", "pipeline": "hubdoc", "source": "synthetic",
        "result_seq": rseq, "worker": "inference", "seq": rseq, "frame": rseq - 1, "frame_slot": 0,
        "frame_shape": [240, 320, 3], "captured_at": time.time(),
        "t": {"capture": 1, "preprocess_start": 2, "preprocess_end": 3, "inference_start": 4,
              "inference_end": 5 + int(inference_s * 1e9)},
        "queue": {"preprocess": 0, "inference": 0}, "latency_ms": 4.2, "model": "mobilenet_v2",
        "input_size": 224, "runtime": "onnxruntime",
        "top": [{"index": 898, "label": "water bottle", "prob": 0.9}]}, use_bin_type=True)


def test_dropped_counts_only_losses_and_never_decreases_with_two_workers():
    """Two workers' results arrive out of order (one overtakes the other's), one number is
    drawn and never sent (a worker died mid-result), one comes far too late: published in
    order, `dropped` rises by exactly the numbers lost, never falls, and a result merely
    overtaken is not counted."""
    rejected: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        zctx = zmq.Context()
        hub = ResultsHub(zctx, f"ipc://{tmp}/in.sock", f"ipc://{tmp}/out.sock",
                         Path(tmp) / "result_seq", rejected.append)
        taken = zctx.socket(zmq.PULL)  # what the supervisor records: every published message
        taken.connect(hub.record_endpoint)
        workers = []
        for _ in range(2):
            w = zctx.socket(zmq.XPUB)  # hears the hub subscribe: connected once that arrives
            w.connect(f"ipc://{tmp}/in.sock")
            assert w.poll(30000), "the hub never subscribed"
            w.recv()
            workers.append(w)
        one, two = workers
        counter = SharedCounter(str(Path(tmp) / "result_seq"))
        got: list[dict[str, Any]] = []

        def receive(until_seq: int) -> None:
            while not got or got[-1].get("result_seq", 0) < until_seq:
                assert taken.poll(30000), f"no result {until_seq}: {got}"
                got.append(msgpack.unpackb(taken.recv()))

        try:
            a, b = counter.next(), counter.next()
            two.send(_result(b))  # overtakes `a`, still on its way
            time.sleep(0.05)  # a moment, well within the second an overtaken result is awaited
            one.send(_result(a))
            receive(b)
            counter.next()  # drawn by a worker that died before sending it
            one.send(_result(counter.next()))
            late, e = counter.next(), counter.next()
            two.send(_result(e))
            receive(e)  # published once `late` was given up
            one.send(_result(late))  # too late: counted already, not published
            f = counter.next()
            one.send(_result(f))
            receive(f)
            hub.publish_end("hubdoc", "stopped")
            assert taken.poll(30000)
            got.append(msgpack.unpackb(taken.recv()))
        finally:
            counter.close()
            hub.close()
            for sock in (*workers, taken):
                sock.close(0)
            zctx.term()
    results, end = got[:-1], got[-1]
    assert [r["result_seq"] for r in results] == [1, 2, 4, 6, 7]
    assert [r["dropped"] for r in results] == [0, 0, 1, 2, 2]
    assert end["type"] == "eos" and end["result_seq"] == 7 and end["dropped"] == 2
    assert rejected == []  # the late one is a loss already counted, not a forgery


def test_a_slow_models_result_overtaken_by_another_workers_is_awaited_longer():
    """A worker draws its number before its model runs: with a model taking longer than the
    hub's usual wait (a second a frame on a small board), a result may come that long after a
    later one of another worker. The hub waits twice the slowest recent inference, so it is
    published, in order, not counted lost."""
    slow = 2 * results_hub.LATE_S  # each model run; a result may come this much behind
    with tempfile.TemporaryDirectory() as tmp:
        zctx = zmq.Context()
        hub = ResultsHub(zctx, f"ipc://{tmp}/in.sock", f"ipc://{tmp}/out.sock",
                         Path(tmp) / "result_seq", lambda kind: None)
        taken = zctx.socket(zmq.PULL)
        taken.connect(hub.record_endpoint)
        worker = zctx.socket(zmq.XPUB)
        worker.connect(f"ipc://{tmp}/in.sock")
        assert worker.poll(30000), "the hub never subscribed"
        worker.recv()
        counter = SharedCounter(str(Path(tmp) / "result_seq"))
        try:
            worker.send(_result(counter.next(), slow))  # the hub learns how slow the model is
            assert taken.poll(30000)
            first = msgpack.unpackb(taken.recv())
            a, b = counter.next(), counter.next()
            worker.send(_result(b, slow))  # overtakes `a` ...
            time.sleep(1.5 * results_hub.LATE_S)  # ... by longer than the usual wait
            worker.send(_result(a, slow))
            got = []
            for _ in range(2):
                assert taken.poll(30000)
                got.append(msgpack.unpackb(taken.recv()))
        finally:
            counter.close()
            hub.close()
            worker.close(0)
            taken.close(0)
            zctx.term()
    assert first["dropped"] == 0
    assert [(r["result_seq"], r["dropped"]) for r in got] == [(a, 0), (b, 0)]


# -- presence rules against a running pipeline: two workers, a stage restart -------------------

def _check_status(status: dict[str, Any], stages: list[str], message: set[str],
                  per_stage: set[str], per_source: set[str], totals: set[str]) -> None:
    """One status against the doc's presence rules."""
    assert set(status) == message
    assert set(status["stages"]) == set(stages)
    for name, m in status["stages"].items():
        kind = name.split(".")[0]
        expect = per_stage - {"stall_reason", "runtime", "on_demand", "source"}
        expect |= {"runtime"} if kind == "inference" else set()
        expect |= {"on_demand"} if kind == "capture" else set()
        expect |= {"source"} if kind != "inference" else set()
        if m["state"] == "stalled" and "stall_reason" in m:
            expect |= {"stall_reason"}
        assert set(m) == expect, (name, m)
        assert (m["heartbeat_age_s"] is None) == (m["threads"] is None), (name, m)
        assert (m["last_failure"] is not None) == (m["state"] == "restarting"), (name, m)
        if m["state"] == "restarting":
            assert m["heartbeat_age_s"] is None and m["cpu_percent"] is None, (name, m)
        if kind == "inference":
            assert m["runtime"] in ("torch", "onnxruntime", "litert"), (name, m)
    for per in status["sources"].values():
        assert set(per) == per_source
    assert set(status["totals"]) == totals
    measured = [m["interval_ms"] for n, m in status["stages"].items() if n.startswith("capture")]
    assert (status["capture_jitter_ms"] is None) == (not any(measured)), status


def _stage_pid(status: dict[str, Any], stage: str) -> int:
    return status["stages"][stage]["pid"]


@pytest.mark.parametrize("policy", ["latest", "block"])
def test_presence_rules_hold_in_every_status_with_two_workers_and_a_restart(tmp_path, clean_machine,
                                                                            policy):
    """From the very first status on, through a worker's and the capture's restarts and a
    stopped preprocess, every status has the keys the doc says, the nulls it says (with `block`
    edges the capture waits while preprocess is stopped: no jitter measured); results come in
    result_seq order with `dropped` covering every gap, and a `latest` edge's `queue` counts the
    frames passed over."""
    name = f"docrules-{policy}"
    # backoff: a restarted stage is down for several status periods, whatever this machine's speed
    cfg = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240}],
                       name=name, model={"name": "mobilenet_v2", "weights": "none"},
                       inference={"workers": 2, "restart": "on-failure"},
                       capture={"restart": "on-failure"},
                       supervision={"backoff_s": 3.0},
                       edges__frames={"policy": policy}, edges__tensors={"policy": policy})
    proc = up(cfg, "--quiet")
    statuses: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    ctx = zmq.Context()
    try:
        info = None

        def listed() -> bool:
            nonlocal info
            try:
                info = find_pipeline(name)
            except NotRunning:
                return False
            return True

        # run.json exists before the stages load: subscribed in time for the very first status
        wait_for(lambda: listed() or proc.poll() is not None, 120, "the run directory")
        assert proc.poll() is None, finish(proc)
        socks = {}
        poller = zmq.Poller()
        for what in ("status", "results"):
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(info["endpoints"][what])
            poller.register(sock, zmq.POLLIN)
            socks[what] = sock

        def pump(until, timeout: float, what: str) -> None:
            deadline = time.monotonic() + timeout
            while not until():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                assert proc.poll() is None, finish(proc)
                for sock in dict(poller.poll(100)):
                    into = statuses if sock is socks["status"] else results
                    into.append(msgpack.unpackb(sock.recv()))

        pump(lambda: _settled(statuses[-1] if statuses else None), 120, "every stage's stats")
        for victim in ("inference.1", "capture"):  # killed: restarted after the backoff
            os.kill(_stage_pid(statuses[-1], victim), signal.SIGKILL)
            pump(lambda v=victim: statuses[-1]["stages"][v]["state"] == "restarting", 30,
                 f"{victim} restarting")
            pump(lambda v=victim: _settled(statuses[-1]) and statuses[-1]["stages"][v]["restarts"],
                 120, f"{victim} back")
        # preprocess stopped for a while: frames pile up on its `latest` frames edge
        before = statuses[-1]["stages"]["preprocess"]["drops"]["frames"]["latest"]
        stopped_at = len(results)
        prep = _stage_pid(statuses[-1], "preprocess")
        os.kill(prep, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(prep, signal.SIGCONT)
        resumed = len(statuses)  # its stats after the frames it passed over: within 2 statuses
        pump(lambda: len(results) > stopped_at + 10 and len(statuses) > resumed + 2
             and _settled(statuses[-1]), 60, "results again")
    finally:
        out, err = finish(proc)
        ctx.destroy(0)
    assert proc.returncode == 0, err

    # statuses come once a second from the start: the second one is 2 s in at the earliest
    assert statuses[0]["elapsed_s"] < 2.0, "not the first status"
    message = documented("### Status: the message")
    per_stage = documented("### Status: per stage (`stages.<name>`)")
    per_source = documented("### Status: per source (`sources.<id>`)")
    totals = documented("### Status: totals (`totals`)")
    for status in statuses:
        _check_status(status, info["stages"], message, per_stage, per_source, totals)
    for victim in ("inference.1", "capture"):
        assert any(s["stages"][victim]["state"] == "restarting" for s in statuses)

    seqs = [r["result_seq"] for r in results]
    dropped = [r["dropped"] for r in results]
    assert seqs == sorted(set(seqs)), "published in result_seq order"
    assert all(b >= a for a, b in zip(dropped, dropped[1:])), "dropped never decreases"
    for prev, r in zip(results, results[1:]):  # this subscriber kept up: every gap is the pipeline's
        assert r["result_seq"] - prev["result_seq"] - 1 == r["dropped"] - prev["dropped"], (prev, r)

    if policy == "latest":
        passed_over = max(r["queue"]["preprocess"] for r in results[stopped_at:])
        after = statuses[-1]["stages"]["preprocess"]["drops"]["frames"]["latest"]
        assert passed_over > 0 and after - before >= passed_over


def test_a_stage_silent_since_it_started_is_stalled_with_no_heartbeat_age():
    """A stage whose process became ready and never sent stats: `stalled` after 3 s, with
    `heartbeat_age_s` null (no stats from this process), and the status lines say so."""
    report = RunReport("silent", {"capture": ("capture", "synthetic")})
    report.on_ready("capture", {"pid": os.getpid(), "cores": [0], "on_demand": False})
    report.seen["capture"] -= RunReport.STALLED_AFTER_S + 1  # ready that long ago, silent since
    m = report.status()["stages"]["capture"]
    assert m["state"] == "stalled" and m["heartbeat_age_s"] is None and m["threads"] is None
    assert "STALLED (no report since it started)" in format_status(report.status())[0]

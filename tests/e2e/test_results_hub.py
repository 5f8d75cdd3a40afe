"""The results hub: hostile subscribers and forged messages on results-in.sock stop neither the
supervisor nor a consumer and reach neither a consumer nor the record; a stopped supervisor loses
no result unaccounted, and a consumer blames itself only for its own losses."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from pipeline.client.result import Result
from pipeline.client.subscription import Subscription
from pipeline.transport.rundir import (
    RESULTS_IN,
    NotRunning,
    find_pipeline,
    process_start,
    runtime_root,
)
from pipeline.transport.workqueue import SharedCounter
from tests.support.processes import read_jsonl
from tests.support.topologies import finish, up, wait_for, write_config

MARK = "FORGED"

# A subscriber with a 256 KiB subscription prefix, then the empty one (so it hears results once
# the publisher has taken both, unless it is refused). It exits without closing: its own libzmq
# may not survive tearing such a subscription down.
HOSTILE_SUBSCRIBER = """
import os, sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.connect(sys.argv[1])
s.setsockopt(zmq.SUBSCRIBE, b"a" * 262144)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.poll(3000)
os._exit(0)
"""


def start(tmp_path: Path, name: str, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """A synthetic pipeline with random weights (no asset needed), recording."""
    cfg = write_config(tmp_path / "c.toml", [{"kind": "synthetic", "width": 320, "height": 240}],
                       name=name, model={"name": "mobilenet_v2", "weights": "none"})
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = up(cfg, "--record", str(record), "--summary-json", str(summary), *args)
    wait_for(lambda: _listed(name) or proc.poll() is not None, 120, "the pipeline to start")
    assert proc.poll() is None, finish(proc)
    return proc, record, summary


def _listed(name: str) -> bool:
    try:
        find_pipeline(name)
    except NotRunning:
        return False
    return True


def after(sub: Subscription, since_ns: int, n: int = 10, statuses: int = 2) -> list[Result]:
    """`n` results made after `since_ns`, and at least `statuses` status messages (the supervisor
    formats the latest result into each); fewer if the stream ends or stalls for 30 s."""
    got: list[Result] = []
    seen, last = 0, sub.last_status
    while len(got) < n or seen < statuses:
        r = sub.receive(timeout=30)
        if sub.last_status is not last:
            seen, last = seen + 1, sub.last_status
        if r is None:
            break
        assert MARK not in repr(r.raw)
        if r.timestamps["inference_end"] > since_ns:
            got.append(r)
    return got


def forge(name: str, *payloads: bytes) -> None:
    """Send `payloads` into the pipeline's results-in socket, as a worker would."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)  # hears the hub subscribe: connected once that arrives
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(f"ipc://{find_pipeline(name)['dir']}/{RESULTS_IN}.sock")
    assert sock.poll(30000), "the results hub never subscribed"
    sock.recv()
    for p in payloads:
        sock.send(p)
    sock.close()
    ctx.term()


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def forged(kind: str, real: dict, name: str) -> bytes:
    """One forged message of `kind`, made from a real result (marked, where it has room)."""
    bad = {**real, "item": MARK}
    if kind == "map as key":  # {"schema": 1, "type": "result", {"item": MARK}: MARK}
        return b"\x83" + pack("schema") + pack(1) + pack("type") + pack("result") + \
            pack({"item": MARK}) + pack(MARK)
    if kind == "not msgpack":
        return b"\xc1" + MARK.encode()
    return pack({
        "inf latency": {**bad, "latency_ms": math.inf},
        "top abc": {**bad, "top": "abc"},
        "missing keys": {"schema": 1, "type": "result", "pipeline": name, "item": MARK},
        "bytes value": {**bad, "source": MARK.encode()},
        "forged eos": {"schema": 1, "type": "eos", "pipeline": name, "reason": MARK},
        "2 MB": {**bad, "item": MARK * (2 * 2**20 // len(MARK))},
        "result_seq never drawn": {**bad, "result_seq": real["result_seq"] + 10**6},
        "repeated result_seq": bad,
    }[kind])


# kind -> part of the rejection's name in the summary (None: libzmq drops it unseen)
KINDS = {"inf latency": "(latency_ms)", "top abc": "(top)", "missing keys": "malformed result",
         "map as key": "not a msgpack map", "bytes value": "(source)", "not msgpack": "not a msgpack map",
         "forged eos": "forged end-of-stream", "2 MB": None,
         "result_seq never drawn": "no worker drew", "repeated result_seq": "repeated"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_forged_message_reaches_no_one_and_stops_nothing(tmp_path, clean_machine, kind):
    name = f"forge{list(KINDS).index(kind)}"
    proc, record, summary = start(tmp_path, name)  # not quiet: status lines show the top result
    try:
        with Subscription(name, status=True) as sub:
            first = sub.receive(timeout=60)
            assert first is not None, "no result before forging"
            since = time.monotonic_ns()
            forge(name, forged(kind, first.raw, name))
            got = after(sub, since)
            assert len(got) >= 10 and sub.ended is None, (len(got), sub.ended)
        assert proc.poll() is None, "the supervisor died"
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert MARK not in record.read_text()
    expect = KINDS[kind]
    if expect:
        rejected = json.loads(summary.read_text())["rejected_messages"]
        assert any(expect in k for k in rejected), rejected
        assert "rejected" in out and "dropped a " in err  # counted in the summary, logged once


def test_a_huge_subscription_prefix_is_refused(tmp_path, clean_machine):
    proc, _, _ = start(tmp_path, "hubprefix", "--quiet")
    try:
        info = find_pipeline("hubprefix")
        with Subscription("hubprefix", status=True) as sub:
            assert sub.receive(timeout=60) is not None
            for endpoint in (info["endpoints"]["results"], info["endpoints"]["status"]):
                subprocess.run([sys.executable, "-c", HOSTILE_SUBSCRIBER, endpoint], timeout=60)
            got = after(sub, time.monotonic_ns())
            assert len(got) >= 10 and sub.ended is None, (len(got), sub.ended)
        assert proc.poll() is None, "the supervisor died"
    finally:
        _, err = finish(proc)
    assert proc.returncode == 0, err


def _read_all(sub: Subscription, into: list[Result]) -> None:
    for r in sub:
        into.append(r)


def test_a_stopped_supervisor_loses_no_result_unaccounted(tmp_path, clean_machine):
    """Results that pile up while the supervisor is stopped reach the record and a subscriber
    that keeps up; a result_seq drawn and never published (a worker dying mid-result) counts as
    dropped by the pipeline, not as the subscriber's loss."""
    name = "hubpause"
    proc, record, summary = start(tmp_path, name, "--quiet")
    got: list[Result] = []
    try:
        sub = Subscription(name)
        reader = threading.Thread(target=_read_all, args=(sub, got), daemon=True)
        reader.start()
        wait_for(lambda: len(got) > 0, 60, "the first result")
        t0, n0 = time.monotonic(), len(got)
        wait_for(lambda: len(got) >= n0 + 30, 60, "30 results")
        rate = (len(got) - n0) / (time.monotonic() - t0)
        lost = SharedCounter(str(Path(find_pipeline(name)["dir"]) / "result_seq"))
        for _ in range(3):  # drawn, never published
            lost.next()
        lost.close()
        pause = 300 / rate  # a backlog of about 300 results
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(pause)
        os.kill(proc.pid, signal.SIGCONT)
        resumed = time.monotonic_ns()
        wait_for(lambda: got[-1].timestamps["capture"] > resumed, 60, "results made after the pause")
    finally:
        finish(proc)
    reader.join(30)
    sub.close()
    assert proc.returncode == 0
    s = json.loads(summary.read_text())
    recorded = [r["result_seq"] for r in read_jsonl(record)]
    assert len(recorded) == len(set(recorded)) == s["results_received"]
    assert set(recorded) <= set(range(1, s["results_issued"] + 1))
    assert s["results_issued"] == len(recorded) + s["results_dropped"] + s["results_unrecorded"]
    assert s["results_dropped"] >= 3 and s["results_unrecorded"] == 0, s
    print(f"{rate:.0f} results/s, stopped {pause:.1f} s; dropped {s['results_dropped']}")
    # The subscriber got every published result from its first on, and blames no loss on itself.
    assert sub.ended == "stopped" and sub.missed == 0 and sub.malformed == 0
    mine = [r.result_seq for r in got]
    assert set(mine) == {q for q in recorded if q >= mine[0]}
    assert sub.dropped == s["results_issued"] - mine[0] + 1 - len(mine) >= 3
    assert sum(r.dropped_before for r in got) >= 3 and not any(r.missed_before for r in got)


# A result as docs/protocol.md defines it.
VALID = {"schema": 1, "type": "result", "pipeline": "fakehub", "source": "synthetic",
         "result_seq": 1, "worker": "inference", "seq": 1, "frame": 0, "frame_slot": 0,
         "frame_shape": [240, 320, 3], "captured_at": 1.7e9,
         "t": {"capture": 1, "preprocess_start": 2, "preprocess_end": 3, "inference_start": 4,
               "inference_end": 5},
         "latency_ms": 4.2, "model": "mobilenet_v2", "input_size": 224, "runtime": "onnxruntime",
         "top": [{"index": 898, "label": "water bottle", "prob": 0.9}]}


def test_a_subscription_survives_any_bytes(tmp_path):
    """Whatever reaches a subscriber (a publisher that is not our hub), it never raises and
    yields only well-formed results; keys it does not know are kept if plain."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    run = runtime_root(create=True) / f"fakehub-{holder.pid}"  # its "supervisor": `holder`
    run.mkdir(mode=0o700)
    endpoint = f"ipc://{run}/results.sock"
    (run / "run.json").write_text(json.dumps({
        "name": "fakehub", "pid": holder.pid, "start": process_start(holder.pid),
        "started_at": time.time(), "host": None,
        "endpoints": {"results": endpoint, "status": f"ipc://{run}/status.sock"},
        "rings": {}, "stages": [], "config": {}}))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind(endpoint)
    hostile = [forged(k, VALID, "fakehub") for k in KINDS  # what only the hub can tell apart:
               if k not in ("forged eos", "2 MB", "result_seq never drawn", "repeated result_seq")]
    hostile += [pack({**VALID, "t": {**VALID["t"], "capture": "x"}}),
                pack({**VALID, "top": [{"index": 1, "label": {}, "prob": 0.5}]}),
                pack({**VALID, "top": []}), pack({**VALID, "frame_shape": [1, -2, 3]}),
                pack({**VALID, "extra": b"\x00"}), pack({**VALID, "extra": math.nan}),
                pack({**VALID, "result_seq": True}), pack([1, 2, 3]), b""]
    try:
        with Subscription("fakehub") as sub:
            assert pub.poll(30000)
            pub.recv()  # subscribed
            for p in hostile:
                pub.send(p)
            pub.send(pack({**VALID, "result_seq": 2, "future": {"a": [1, 2.5, None]}}))
            pub.send(pack({"schema": 1, "type": "eos", "pipeline": "fakehub", "reason": "stopped"}))
            results = list(sub)
        assert [r.result_seq for r in results] == [2] and results[0].raw["future"]["a"][1] == 2.5
        assert sub.malformed == len(hostile) and sub.ended == "stopped"
    finally:
        ctx.destroy(0)
        holder.kill()
        holder.wait()
        shutil.rmtree(run, ignore_errors=True)

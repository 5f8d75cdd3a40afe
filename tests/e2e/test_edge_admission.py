"""Who may read an edge, and what happens when a reader stops releasing frames: a stray process
connecting to an edge socket gets nothing, and a reader that hangs holding frames is reported and
its frames taken back, so in-order (`block`) pipelines keep running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import zmq

from pipeline.transport.edge import STALL_FLOOR_S, EdgeReader, EdgeWriter
from pipeline.transport.ring import Ring
from pipeline.transport.rundir import RunPaths, find_pipeline
from tests.support.assets import ROOT
from tests.support.processes import WORKER_CORES
from tests.support.topologies import wait_for, write_config

# Connects the readers a confused or hostile process of the same user could connect to a
# running pipeline's edges, says so, counts what reaches them until stdin closes, prints counts.
STRAY = """
import json, sys, zmq
ctx = zmq.Context()
socks = {}
for name, kind, endpoint in json.loads(sys.argv[1]):
    s = ctx.socket(getattr(zmq, kind))
    if kind == "SUB":
        s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    socks[s] = name
got = dict.fromkeys(socks.values(), 0)
poller = zmq.Poller()
for s in socks:
    poller.register(s, zmq.POLLIN)
poller.register(sys.stdin, zmq.POLLIN)
print("connected", flush=True)
while True:
    events = dict(poller.poll())
    if sys.stdin.fileno() in events:
        break
    for s in socks:
        if s in events:
            s.recv()
            got[socks[s]] += 1
print(json.dumps(got), flush=True)
"""


def _start(cfg: Path, log: Path, *args: str) -> subprocess.Popen:
    """pipeline-up with its log in a file the test can watch while it runs."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli.up", str(cfg), "--quiet", *args],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=f)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=30)


def _results(record: Path) -> list[dict]:
    """The results recorded so far (complete lines only: the file is still being written)."""
    try:
        text = record.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def _results_after(record: Path, t: float, worker: str | None = None) -> int:
    return sum(1 for r in _results(record)
               if r["captured_at"] > t and (worker is None or r["worker"] == worker))


def test_a_stray_reader_on_a_block_pipeline_gets_nothing_and_frames_keep_flowing(tmp_path,
                                                                                 clean_machine):
    cfg = write_config(tmp_path / "strays.toml",
                       [{"kind": "synthetic", "fps": 30, "width": 320, "height": 240}],
                       name="strays", model={"weights": "none"},
                       edges__frames={"policy": "block"}, edges__tensors={"policy": "block"})
    record, summary, log = tmp_path / "r.jsonl", tmp_path / "s.json", tmp_path / "log"
    proc = _start(cfg, log, "--record", str(record), "--summary-json", str(summary))
    stray = None
    try:
        wait_for(lambda: _results_after(record, 0) > 10, 120, "the first results")
        run = RunPaths.load(find_pipeline("strays")["dir"])
        readers = [("frames", "PULL", run.endpoint("frames")),  # the PULL preprocess uses
                   ("tensors", "SUB", run.endpoint("tensors")),  # the SUB the workers use
                   ("tensors-pull", "PULL", run.endpoint("tensors"))]
        stray = subprocess.Popen([sys.executable, "-c", STRAY, json.dumps(readers)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert stray.stdout.readline().strip() == "connected"
        refused = ("frames: refused a connection from pid", "tensors: refused a connection from pid")
        wait_for(lambda: all(f"{line} {stray.pid} " in log.read_text() for line in refused), 60,
                 "both edges to refuse the stray")
        t_refused = time.time()
        # Frames keep flowing: had the stray been let in, a block edge would stop within 4 frames.
        wait_for(lambda: _results_after(record, t_refused) >= 30, 60, "results after the stray came")
        got = json.loads(stray.communicate("", timeout=30)[0])
        assert got == {"frames": 0, "tensors": 0, "tensors-pull": 0}, got
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait()
        code = _stop(proc)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "stalled" not in text
    for line in refused:  # logged once each, however often the stray's socket retried
        assert text.count(line) == 1, text
    s = json.loads(summary.read_text())
    assert s["drops"]["frames"]["stalled"] == s["drops"]["tensors"]["stalled"] == 0, s["drops"]


def _stage_of(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return argv[argv.index(b"--stage") + 1].decode()


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] == b"T"


def _stop_the_holder(ring: Ring, workers: set[int]) -> int:
    """SIGSTOP the worker that holds a frame of the ring, at a moment it holds one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = ring.holder
        if pid in workers:
            os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: _stopped(pid), 10, "the worker to stop", step=0.01)
            if ring.holder == pid:  # stopped while holding: no other worker may take a frame now
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("no worker was ever seen holding a frame")


def test_a_worker_that_hangs_holding_a_frame_is_reported_and_its_frames_taken_back(tmp_path,
                                                                                  clean_machine):
    """Two workers share one in-order ring, one frame at a time; one is stopped while it holds a
    frame and the watchdog is off. The other must go on: only the edge's stall recovery can
    free the ring."""
    cfg = write_config(tmp_path / "hang.toml",
                       [{"kind": "synthetic", "fps": 30, "width": 320, "height": 240}],
                       name="hang", model={"weights": "none"},
                       # 100 ms a frame: a worker holds a frame most of the time, at any speed
                       inference={"workers": 2, "cores": WORKER_CORES, "threads": 1, "delay_ms": 100},
                       supervision={"watchdog_s": 0},
                       edges__frames={"policy": "block"}, edges__tensors={"policy": "block"})
    record, summary, log = tmp_path / "r.jsonl", tmp_path / "s.json", tmp_path / "log"
    proc = _start(cfg, log, "--record", str(record), "--summary-json", str(summary))
    victim = None
    try:
        wait_for(lambda: {r["worker"] for r in _results(record)} == {"inference.1", "inference.2"},
                 120, "results from both workers")
        run = RunPaths.load(find_pipeline("hang")["dir"])
        ring = Ring.attach(run.shm_name("tensors"), readonly=True)
        workers = {int(p) for p in subprocess.run(
            ["pgrep", "-P", str(proc.pid), "-f", "workers.stage --stage inference"],
            capture_output=True, text=True).stdout.split()}
        assert len(workers) == 2
        victim = _stop_the_holder(ring, workers)
        t_stop, stage = time.time(), _stage_of(victim)
        other = ({"inference.1", "inference.2"} - {stage}).pop()
        warning = f"preprocess: tensors edge stalled: {stage} released no frame for "
        wait_for(lambda: warning in log.read_text(), 60, "the stall to be reported")
        wait_for(lambda: _results_after(record, t_stop, other) >= 20, 60,
                 f"{other} to classify new frames while {stage} hangs")
        assert _stopped(victim) and _results_after(record, t_stop, stage) == 0
        ring.close()
    finally:
        if victim is not None:
            os.kill(victim, signal.SIGCONT)  # it finds its frame taken back and carries on
        code = _stop(proc)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and text.count(warning) == 1, text
    stalled_for = float(text.split(warning)[1].split()[0])
    assert stalled_for >= STALL_FLOOR_S
    s = json.loads(summary.read_text())
    assert s["drops"]["tensors"]["stalled"] >= 1, s["drops"]  # the frames taken back
    assert s["restarts"] == {"capture": 0, "preprocess": 0, "inference.1": 0, "inference.2": 0}


def test_a_frame_taken_back_is_not_released_twice(tmp_path):
    """In one process, real socket and ring: after the writer takes the frames of a reader that
    stopped releasing, the reader's late release of them does not free slots twice (which would
    let the writer overwrite frames still queued), and the counters meet again."""
    name = f"edge-admission-test-{os.getpid()}"
    ring = Ring.create(name, 4, 64)
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/e.sock"
    writer = EdgeWriter(ctx, endpoint, ring, "block", name="e", judge=True)
    reader = EdgeReader(ctx, endpoint, name, "block")
    alive = lambda: True  # noqa: E731
    seq = 0

    def publish(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            slot = writer.acquire(alive)
            writer.begin(slot, seq)
            writer.publish(slot, seq, {"shape": [8], "dtype": "uint8"}, alive)

    try:
        assert writer.wait_for_readers(1, alive, timeout_s=30)
        for _ in range(8):  # the reader's pace is learnt from frames that flow
            publish(1)
            desc = reader.take(5000)
            assert reader.intact(desc)
            reader.release()
            assert writer.watch() == {}
        publish(4)  # the ring is full ...
        held = reader.take(5000)  # ... and the reader takes one and stops
        t0 = time.monotonic()
        watched: dict = {}

        def stalled() -> bool:
            watched.update(writer.watch())
            return "stalled" in watched

        wait_for(stalled, 60, "the stall", step=0.05)
        assert watched["stalled"]["e"]["readers"] == []  # an edge whose readers are not stages
        assert "its reader released no frame for " in watched["stalled"]["e"]["reason"]
        assert time.monotonic() - t0 >= STALL_FLOOR_S - 1.0  # watched from when it was seen
        assert writer.drops["stalled"] == 4 and writer.in_use == 0
        assert not reader.intact(held)  # the reader wakes: its frame was taken back
        reader.release()  # ... so this frees nothing
        publish(4)  # four new frames fit without waiting
        taken = []
        for _ in range(7):  # three stale descriptors, then the four new frames
            desc = reader.take(5000)
            if reader.intact(desc):
                taken.append(desc["seq"])
            reader.release()
        assert taken == [13, 14, 15, 16]
        assert ring.released == ring.written == 16  # no slot freed twice, none lost
        assert reader.drops["torn"] == 0  # counted once, by the writer, as `stalled`
        assert writer.watch() == {}  # frames move again: no longer stalled
    finally:
        reader.close()
        writer.close()
        ctx.term()
        Ring.unlink(name)

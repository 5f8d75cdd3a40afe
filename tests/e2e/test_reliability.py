"""Shared-memory hygiene and hostile input: preflight, orphans of a SIGKILLed supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pipeline.config import load_config
from pipeline.supervisor.shm import free_bytes, preflight
from tests.support.assets import ROOT
from tests.support.processes import pipeline_cmd, run_pipeline, shm_segments, start, wait_running


def test_preflight_names_what_is_needed_what_is_free_and_what_to_shrink():
    cfg = load_config(None, ["model.weights=none", "edges.frames.slots=8"])
    assert preflight(cfg, [640 * 480 * 3], free=10 * 2**30) is None
    msg = preflight(cfg, [640 * 480 * 3], free=5 * 2**20)
    assert msg.startswith("not enough shared memory: the rings need 9.3 MiB")
    assert "frames ring 8 x 0.9 MiB" in msg and "has 5.0 MiB free" in msg
    assert "edges.frames.slots" in msg and "source.width/height" in msg


def test_pipeline_up_refuses_rings_larger_than_dev_shm():
    slot = 7680 * 4320 * 3
    if 256 * slot < free_bytes():
        import pytest

        pytest.skip("/dev/shm is larger than the biggest ring the config allows")
    before = shm_segments()
    p = run_pipeline("demo.toml", "--set", "model.weights=none", "--set", "edges.frames.slots=256",
                     "--set", "source.width=7680", "--set", "source.height=4320")
    assert p.returncode == 2 and "not enough shared memory" in p.stderr
    assert "Traceback" not in p.stderr and shm_segments() == before


def test_orphans_of_a_killed_supervisor_are_cleaned_and_live_pipelines_untouched():
    live = start("demo.toml", "--name", "survivor", "--set", "model.weights=none", "--quiet")
    victim = start("demo.toml", "--name", "victim", "--set", "model.weights=none", "--quiet")
    try:
        wait_running(live)
        wait_running(victim)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        deadline = time.monotonic() + 10  # its stages die with it (parent-death signal)
        while time.monotonic() < deadline and subprocess.run(
                ["pgrep", "-f", f"workers.stage .*--parent {victim.pid}"]).returncode == 0:
            time.sleep(0.2)
        orphans = {s for s in shm_segments() if f"-{victim.pid}-" in s}
        kept = {s for s in shm_segments() if f"-{live.pid}-" in s}
        assert len(orphans) == 2 and len(kept) == 2
        assert subprocess.run(["pgrep", "-f", f"workers.stage .*--parent {victim.pid}"]).returncode == 1
        p = subprocess.run([sys.executable, "-m", "pipeline.cli.clean"], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0
        assert all(f"/dev/shm/{os.path.basename(o)}" in p.stdout for o in orphans)
        assert not orphans & shm_segments() and kept <= shm_segments()
        assert live.poll() is None
    finally:
        for proc in (live, victim):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=15)


def test_next_start_removes_orphans_itself():
    victim = start("demo.toml", "--name", "victim2", "--set", "model.weights=none", "--quiet")
    wait_running(victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    time.sleep(3)
    assert {s for s in shm_segments() if f"-{victim.pid}-" in s}
    p = subprocess.run(pipeline_cmd("demo.toml", "--set", "model.weights=none", "--quiet",
                                    "--duration", "1"), cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "left by a killed pipeline" in p.stderr
    assert not {s for s in shm_segments() if f"-{victim.pid}-" in s}


def _hostile_sender(run_dir: str, metrics_url: str, impostor: bytes = b"inference") -> None:
    """Everything a confused or malicious local process could throw at the pipeline's sockets."""
    import glob
    import random
    import socket
    import urllib.request

    import msgpack
    import zmq

    rng = random.Random(7)
    for path in glob.glob(f"{run_dir}/*.sock"):  # raw bytes, no ZeroMQ handshake
        for size in (1, 100, 100_000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                s.sendall(rng.randbytes(size))
            except OSError:
                pass
            finally:
                s.close()
    ctx = zmq.Context()
    control = f"ipc://{run_dir}/control.sock"
    payloads = [rng.randbytes(50), msgpack.packb({"type": "stats", "stage": "x"})[:-3],
                msgpack.packb([1, 2, 3]), msgpack.packb({"type": "nonsense"}),
                msgpack.packb({"schema": 999, "type": "eos", "stage": "inference"}),
                rng.randbytes(1 << 20)]  # over the size limit: the peer is cut off
    for ident in (b"intruder", b"inference", impostor):  # a stranger, and ones posing as a stage
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.IDENTITY, ident)
        d.setsockopt(zmq.LINGER, 500)
        d.setsockopt(zmq.SNDTIMEO, 200)  # once cut off for an oversized message, give up
        d.connect(control)
        try:
            for p in [*payloads[:-1], *[b"x"] * 5000, payloads[-1]]:  # garbage, a flood, too big
                d.send(p)
            d.send_multipart([b"a", b"b", b"c"])
        except zmq.Again:
            pass
        d.close()
    for what in ("results", "status"):  # a subscriber that sends garbage subscriptions
        x = ctx.socket(zmq.XSUB)
        x.setsockopt(zmq.LINGER, 0)
        x.connect(f"ipc://{run_dir}/{what}.sock")
        for _ in range(100):
            x.send(rng.randbytes(30))
        x.close()
    for stage_socket in ("frames", "tensors"):  # pushing fake frame descriptors upstream
        p = ctx.socket(zmq.PUSH)
        p.setsockopt(zmq.LINGER, 0)
        p.connect(f"ipc://{run_dir}/{stage_socket}.sock")  # a PUSH to a PUSH is refused
        p.close()
    ctx.term()
    for body in (b"GET /metrics HTTP/1.1\r\n\r\n", rng.randbytes(5000)):
        host, port = metrics_url.split("//")[1].split("/")[0].split(":")
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(body)
        s.close()
    urllib.request.urlopen(metrics_url, timeout=5).read()


def test_hostile_messages_to_every_socket_are_dropped_counted_and_logged_once(tmp_path):
    import json

    from pipeline import attach
    from pipeline.transport.rundir import find_pipeline

    summary = tmp_path / "s.json"
    proc = start("demo.toml", "--name", "hostile", "--set", "model.weights=none", "--quiet",
                 "--metrics-port", "0", "--summary-json", str(summary))
    try:
        lines = wait_running(proc)
        url = next(line.split()[1] for line in lines if line.startswith("metrics: "))
        run_dir = find_pipeline("hostile")["dir"]
        assert os.stat(run_dir).st_mode & 0o777 == 0o700  # only the owner reaches the sockets
        assert os.stat(os.path.dirname(run_dir)).st_mode & 0o777 == 0o700
        assert url.startswith("http://127.0.0.1:")  # nothing on the network unless asked
        from tests.support.processes import stage_pid

        _hostile_sender(run_dir, url, f"inference:{stage_pid(proc.pid, 'inference')}".encode())
        with attach("hostile") as sub:  # still classifying
            assert all(sub.receive(timeout=5) is not None for _ in range(30))
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "stopped by SIGINT" in out, err
    assert "Traceback" not in err
    s = json.loads(summary.read_text())
    rejected = s["rejected_messages"]
    assert sum(rejected.values()) >= 10, rejected
    for kind in rejected:  # logged once per kind
        assert err.count(f"dropped a {kind} ") == 1, (kind, err)


def test_a_source_whose_file_breaks_mid_run_reconnects(tmp_path):
    import shutil

    from pipeline import attach
    from tests.support.assets import BOTTLE, need
    from tests.support.processes import snapshot

    clip = tmp_path / "clip.mp4"
    shutil.copy(need(BOTTLE), clip)
    proc = start("video.toml", "--name", "flaky", "--set", "model.weights=none", "--quiet",
                 "--set", f"source.path={clip}", "--set", "source.loop=true",
                 "--set", "source.realtime=false", "--summary-json", str(tmp_path / "s.json"))
    try:
        wait_running(proc)
        time.sleep(1)
        clip.write_bytes(b"")  # truncated under the reader: reads fail, reopening fails
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if snapshot("flaky")["stages"]["capture"]["state"] == "reconnecting":
                break
        else:
            raise AssertionError("capture never reported reconnecting")
        assert proc.poll() is None  # the pipeline stays up meanwhile
        shutil.copy(BOTTLE, tmp_path / "whole.mp4")
        os.replace(tmp_path / "whole.mp4", clip)  # the file comes back, whole at once
        with attach("flaky") as sub:
            assert all(sub.receive(timeout=20) is not None for _ in range(10))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = snapshot("flaky")["stages"]["capture"]
            if st["state"] == "running":
                break
        assert st["state"] == "running" and st["reconnects"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "source back after" in err


def test_each_stage_killed_or_hung_in_turn_recovers_and_keeps_classifying(tmp_path):
    """SIGKILL, then SIGSTOP (a hang the watchdog must catch), of every stage while the bottle
    video plays: the pipeline restarts just that stage and goes on classifying correctly."""
    import json

    from pipeline import attach
    from tests.support.assets import BOTTLE, WEIGHTS, need
    from tests.support.processes import stage_pid

    need(WEIGHTS)
    summary = tmp_path / "s.json"
    proc = start("video.toml", "--name", "phoenix", "--quiet", "--summary-json", str(summary),
                 "--set", f"source.path={need(BOTTLE)}", "--set", f"model.weights={WEIGHTS}",
                 "--set", "source.loop=true", "--set", "supervision.watchdog_s=3",
                 "--set", "capture.restart=always", "--set", "preprocess.restart=on-failure",
                 "--set", "inference.restart=always")
    recoveries, after_faults = [], []
    try:
        wait_running(proc)
        with attach("phoenix") as sub:
            assert sub.receive(timeout=30) is not None
            for stage in ("capture", "preprocess", "inference"):
                for sig in (signal.SIGKILL, signal.SIGSTOP):
                    pid = stage_pid(proc.pid, stage)
                    t_fault = time.time()
                    os.kill(pid, sig)
                    labels = []
                    while len(labels) < 10:
                        r = sub.receive(timeout=30)
                        assert r is not None, f"no results after {sig.name} of {stage}"
                        if r.captured_at > t_fault:
                            if not labels:
                                recoveries.append(time.time() - t_fault)
                            labels.append(r.top[0].index)
                    after_faults.extend(labels)
                    assert stage_pid(proc.pid, stage) != pid  # it is a new process
                    if sig == signal.SIGSTOP:
                        assert not os.path.exists(f"/proc/{pid}")  # the hung one was killed
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    # Still classifying correctly: water bottles dominate (some stretches of the clip are not).
    assert after_faults.count(898) > 0.5 * len(after_faults), after_faults
    s = json.loads(summary.read_text())
    assert s["restarts"] == {"capture": 2, "preprocess": 2, "inference": 2}
    assert err.count("sent no heartbeat") == 3
    assert max(recoveries) < 3 + 1 + 15  # watchdog + back-off + model start, generously
    print("recovery seconds:", [round(r, 2) for r in recoveries])


def test_restart_budget_exhausted_stops_with_the_stage_and_its_last_error():
    from tests.support.processes import stage_pid

    proc = start("demo.toml", "--name", "flapper", "--set", "model.weights=none", "--quiet",
                 "--set", "preprocess.restart=always", "--set", "supervision.max_restarts=2",
                 "--set", "supervision.backoff_s=0.1")
    wait_running(proc)
    for _ in range(3):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                pid = stage_pid(proc.pid, "preprocess")
                break
            except AssertionError:
                time.sleep(0.2)
        time.sleep(1.5)  # let it rejoin
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert "stage 'preprocess' died (killed by SIGKILL)" in last
    assert "restarted 2 times in the last 60 s" in last


def test_bounded_soak_shows_no_growth():
    """Forty seconds of the soak tool: memory, descriptors and shared memory stay flat (the tool
    itself runs for hours: tools.bench.soak)."""
    from tests.support.assets import BOTTLE, WEIGHTS, need
    from tools.bench import soak

    need(BOTTLE), need(WEIGHTS)
    rows = soak.run(minutes=0.66, every=4.0, warmup=14.0, name="minisoak")
    g = soak.growth(rows, 14.0)
    assert all(v < 25 for v in g["rss_mb"].values()), g  # MiB over ~25 s, consumers coming and going
    assert all(v <= 3 for v in g["fds"].values()), g
    assert g["shm_mine_mb"] == 0 and g["restarts"] == 0
    assert g["results"] > 500  # of about 1200 at 30 fps


def test_a_paused_supervisor_does_not_blame_its_stages(tmp_path):
    """The whole pipeline frozen for longer than the watchdog allows (a machine suspended), the
    supervisor thawed first: it must not kill its stages for a silence that was also its own.
    Results go on and the run ends cleanly."""
    from pipeline import attach

    proc = start("demo.toml", "--name", "paused", "--set", "supervision.watchdog_s=2",
                 "--set", "model.weights=none", "--set", "model.runtime=onnxruntime")
    try:
        wait_running(proc)
        stages = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                 text=True).stdout.split()]
        with attach("paused") as sub:
            assert sub.receive(timeout=30) is not None
            for pid in [proc.pid, *stages]:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(5.0)  # more than twice the watchdog's limit
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.5)  # the supervisor looks before any stage can report
            for pid in stages:
                os.kill(pid, signal.SIGCONT)
            resumed = time.monotonic_ns()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = sub.receive(timeout=1)
                if r is not None and r.timestamps["capture"] > resumed:
                    break
            else:
                raise AssertionError("no result made after the pipeline resumed")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "killing it" not in err and "restart" not in err.lower(), err


def test_a_stage_restarts_with_dev_shm_full(tmp_path):
    """/dev/shm filled to less than one ring's size, then capture and preprocess SIGKILLed in
    turn: each takes its old ring over (no new space needed), results resume, and no segment is
    left after the stop. (A private, small /dev/shm: the machine's is RAM shared by everyone.)"""
    import pytest

    from pipeline import attach
    from tests.support.processes import stage_pid
    from tools.bench.private_mounts import PrivateMounts, fill

    try:
        ns = PrivateMounts(shm_bytes=64 * 2**20)
    except PermissionError as e:
        pytest.skip(str(e))
    with ns:
        shm = ns.path("/dev/shm")
        proc = subprocess.Popen(
            ns.prefix(str(ROOT)) + pipeline_cmd(
                "demo.toml", "--name", "shmfull", "--set", "model.weights=none", "--quiet",
                "--set", "capture.restart=always", "--set", "preprocess.restart=always"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_running(proc)
            rings = {n: os.stat(os.path.join(shm, n)).st_size for n in os.listdir(shm)
                     if n.startswith("edge-pipeline-")}
            assert len(rings) == 2, rings
            filler = fill(shm, leave=min(rings.values()) // 2)
            try:
                with attach("shmfull") as sub:
                    assert sub.receive(timeout=30) is not None
                    for stage in ("capture", "preprocess"):
                        pid = stage_pid(proc.pid, stage)
                        t_fault = time.time()
                        os.kill(pid, signal.SIGKILL)
                        deadline = time.monotonic() + 60
                        while time.monotonic() < deadline:
                            r = sub.receive(timeout=1)
                            if r is not None and r.captured_at > t_fault:
                                break
                            assert proc.poll() is None, proc.communicate()[1]
                        else:
                            raise AssertionError(f"no results after {stage} was killed")
                        assert stage_pid(proc.pid, stage) != pid
                assert {n for n in os.listdir(shm) if n.startswith("edge-pipeline-")} == set(rings)
            finally:
                os.unlink(filler)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "No space left" not in err and "cannot reserve" not in err, err
        assert err.count("is back after") == 2, err
        assert not [n for n in os.listdir(shm) if n.startswith("edge-pipeline-")]


def test_a_worker_killed_while_its_model_runs_leaves_a_counted_gap(tmp_path):
    """The inference worker SIGKILLed three times while frames come faster than the model takes
    them (rate from a measurement), so it is nearly always running the model, its frame already
    let go: each result lost that way is a gap in `result_seq` counted in `dropped`, and every
    number issued is recorded or counted."""
    import json

    from pipeline import attach
    from tests.support.processes import read_jsonl, stage_pid

    sets = ["--set", "model.weights=none", "--set", "model.name=resnet18", "--set",
            "model.runtime=onnxruntime", "--set", "inference.restart=always", "--quiet"]
    fps = min(1000.0, max(30.0, 3000 / _model_ms(tmp_path, sets)))  # three frames a model run
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = start("demo.toml", "--name", "busykill", *sets, "--set", f"source.fps={fps:.1f}",
                 "--record", str(record), "--summary-json", str(summary))
    try:
        wait_running(proc)
        with attach("busykill") as sub:
            def result_after(t_fault: float) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # the worker (back) at work
                    r = sub.receive(timeout=1)
                    if r is not None and r.captured_at > t_fault:
                        return
                raise AssertionError("no results from the restarted worker")

            result_after(0.0)
            for _ in range(3):
                pid = stage_pid(proc.pid, "inference")
                t_fault = time.time()
                os.kill(pid, signal.SIGKILL)
                result_after(t_fault)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["restarts"]["inference"] == 3, s["restarts"]
    assert 1 <= s["results_dropped"] <= 3, s["results_dropped"]  # at most one per kill
    recorded = {r["result_seq"] for r in read_jsonl(record) if r.get("type") == "result"}
    assert s["results_issued"] == len(recorded) + s["results_dropped"] + s["results_unrecorded"]


def _model_ms(tmp_path, sets: list[str]) -> float:
    """The model's median time per frame here, from a short run."""
    import json

    probe = tmp_path / "probe.json"
    p = run_pipeline("demo.toml", "--name", "modelprobe", *sets, "--set", "source.frames=60",
                     "--summary-json", str(probe), timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(probe.read_text())["service_ms"]["inference"]["p50"]


def _account_after_kills(tmp_path, name: str, sets: list[str], kills: list[str]) -> dict:
    """demo.toml with a record, each stage of `kills` SIGKILLed in turn (each after 50 results
    of its current process, the next once results come again), then capture paused (SIGSTOP)
    and the frames it sent let through before the stop, so no drop is counted after the last
    result. Returns the fault soak's accounting of the record against the summary."""
    import json

    from pipeline import attach
    from tests.support.processes import stage_pid
    from tools.bench.soak_faults import account

    record, summary = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
    restart = [f"{stage}.restart=always" for stage in ("capture", "preprocess", "inference")]
    proc = start("demo.toml", "--name", name, "--quiet", "--record", str(record),
                 "--summary-json", str(summary), "--set", "supervision.watchdog_s=0",
                 *sets, *[a for s in restart for a in ("--set", s)])
    latency_s = 0.0  # the longest capture-to-result time seen
    try:
        wait_running(proc)
        with attach(name) as sub:
            def results_after(t: float, n: int) -> None:
                nonlocal latency_s
                deadline = time.monotonic() + 120
                while n and time.monotonic() < deadline:
                    r = sub.receive(timeout=1)
                    if r is not None and r.captured_at > t:
                        n -= 1
                        latency_s = max(latency_s, r.latency_ms / 1000)
                    assert proc.poll() is None, proc.communicate()[1]
                assert not n, f"{n} results short after {t}"

            t_fault = 0.0
            for stage in kills:
                results_after(t_fault, 50)
                pid = stage_pid(proc.pid, stage)
                t_fault = time.time()
                os.kill(pid, signal.SIGKILL)
                results_after(t_fault, 1)
                assert stage_pid(proc.pid, stage) != pid
            os.kill(stage_pid(proc.pid, "capture"), signal.SIGSTOP)
            quiet = max(2.0, 10 * latency_s)  # no result for this long: all through
            last = paused = time.monotonic()
            while time.monotonic() - last < quiet:
                assert time.monotonic() - paused < 120, "results go on with capture paused"
                if sub.receive(timeout=0.2) is not None:
                    last = time.monotonic()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    s = json.loads(summary.read_text())
    assert s["restarts"] == {stage: kills.count(stage) for stage in ("capture", "preprocess", "inference")}
    return account(record, s)


def test_a_restarted_preprocess_counts_no_frame_twice(tmp_path):
    """preprocess SIGKILLed twice: the frames captured while it was down are counted once, by
    capture (`latest`: it could not send them), not again by the restarted preprocess as
    `restart`; every frame without a result is exactly one counted drop."""
    acc = _account_after_kills(tmp_path, "twicecount", ["--set", "model.weights=none"],
                               ["preprocess", "preprocess"])
    assert acc["drops"]["frames"]["latest"] > 0, acc  # frames came while it was down
    assert acc["frames_without_result"] == acc["frame_drops_counted"], acc
    assert acc["results_unaccounted"] == 0 and acc["duplicates"] == 0, acc


def test_drops_counted_by_a_killed_stage_since_its_last_stats_are_kept(tmp_path):
    """Frames come three times as fast as the model takes them (rate from a measurement) and
    preprocess is slowed to two thirds of it, so both count `latest` drops many times a second;
    each is SIGKILLed twice: what they counted after their last once-a-second stats is kept
    (their tallies outlive them), and every frame without a result is exactly one counted drop."""
    sets = ["--set", "model.weights=none", "--set", "model.runtime=onnxruntime"]
    model_ms = _model_ms(tmp_path, sets)
    fps = min(1000.0, max(30.0, 3000 / model_ms))
    acc = _account_after_kills(
        tmp_path, "keptcounts",
        [*sets, "--set", f"source.fps={fps:.1f}", "--set", f"preprocess.delay_ms={1500 / fps:.2f}"],
        ["inference", "preprocess", "inference", "preprocess"])
    assert acc["drops"]["frames"]["latest"] > 0 and acc["drops"]["tensors"]["latest"] > 0, acc
    # Every frame without a result is a counted drop, but for one frame at most per worker
    # killed: a worker SIGKILLed between drawing a result's number and releasing its frame can
    # leave that frame counted twice (a dropped result and a `restart` drop) or, as seen now and
    # then, not at all. Where only preprocess is killed the count is exact (the test above).
    worker_kills = 2
    assert abs(acc["frame_drops_counted"] - acc["frames_without_result"]) <= worker_kills, acc
    assert acc["results_unaccounted"] == 0 and acc["duplicates"] == 0, acc

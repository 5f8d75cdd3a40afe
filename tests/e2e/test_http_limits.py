"""The built-in HTTP servers (the supervisor's metrics endpoint, the preview consumer) against
clients that hold connections open without finishing a request (slowloris): they cannot take the
process's file descriptors, nor keep others waiting; and the preview stops cleanly however many
stop signals it gets while stopping."""

from __future__ import annotations

import http.client
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time

import pytest

from pipeline.observe.metrics import MetricsExporter
from tests.support.assets import ROOT
from tests.support.preview import SOI, attach_preview, pipeline_config
from tests.support.processes import pipeline_cmd, wait_running
from tests.support.topologies import lines, up, wait_for

FD_LIMIT = 1024  # the usual soft limit of a process's descriptors, given to the servers under test
FLOOD = 1100  # unfinished requests: more than FD_LIMIT
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # never finished


def _usual_fd_limit() -> None:
    """preexec_fn: the child gets FD_LIMIT descriptors, whatever this process has."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


@pytest.fixture
def many_fds():
    """This process may hold the flood's connections (and the servers started before get the
    usual limit through _usual_fd_limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FLOOD + 1000
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"needs {want} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(port: int, n: int = FLOOD) -> list[socket.socket]:
    """`n` connections, each with a request begun and never finished. Stops early when the server
    no longer takes connections at all (what an exhausted server does)."""
    held: list[socket.socket] = []
    refused = 0
    while len(held) < n and refused < 5:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(PARTIAL)
        except OSError:
            refused += 1
            continue
        held.append(s)
    return held


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int, stage: str) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", f"workers.stage --stage {stage} "],
                         capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_a_request_must_arrive_whole_in_time_and_at_the_cap_the_oldest_unfinished_goes():
    """The real metrics server in this process: an unfinished request is cut at the deadline,
    connections never exceed the cap, and a whole request is answered while unfinished ones
    fill the cap."""
    exporter = MetricsExporter(0)
    server = exporter.server
    try:
        cap = server.max_connections
        held = [socket.create_connection(("127.0.0.1", exporter.port), timeout=30) for _ in range(3 * cap)]
        for s in held:
            s.sendall(PARTIAL)
        ended = set()

        def ended_by_server() -> int:
            for key, _ in selector.select(0):
                assert key.fileobj.recv(1024) == b""  # ended without an answer
                selector.unregister(key.fileobj)
                ended.add(key.fileobj)
            return len(ended)

        with selectors.DefaultSelector() as selector:
            for s in held:
                selector.register(s, selectors.EVENT_READ)
            wait_for(lambda: ended_by_server() >= 2 * cap, 30, "the oldest unfinished requests to be cut")
        assert ended == set(held[:2 * cap])  # the oldest ones
        status, body = get(exporter.port, "/metrics")
        assert status == 200 and b"pipeline_end_to_end_latency_seconds" in body
        close_all(held)
        # The deadline: measured from a connection's start to the server's end of it.
        server.request_deadline_s = 1.0
        s = socket.create_connection(("127.0.0.1", exporter.port), timeout=60)
        t0 = time.monotonic()
        s.sendall(PARTIAL)
        assert s.recv(1024) == b""  # the server ended it without an answer
        assert time.monotonic() - t0 >= server.request_deadline_s
        s.close()
        assert get(exporter.port, "/metrics")[0] == 200
    finally:
        exporter.close()


def test_a_flood_of_unfinished_requests_to_the_metrics_port_leaves_the_supervisor_working(
        tmp_path, many_fds, clean_machine):
    """More unfinished requests than the supervisor has descriptors: /metrics still answers, a
    stage killed meanwhile is restarted (that needs descriptors), results go on, and the run
    ends normally with its summary."""
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc = subprocess.Popen(
        pipeline_cmd("demo.toml", "--name", "fdflood", "--set", "model.weights=none", "--quiet",
                     "--set", "preprocess.restart=always", "--metrics-port", "0",
                     "--record", str(record), "--summary-json", str(summary)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_usual_fd_limit)
    held: list[socket.socket] = []
    try:
        startup = wait_running(proc)
        url = next(line.split()[1] for line in startup if line.startswith("metrics: "))
        port = int(url.split(":")[2].split("/")[0])
        held = flood(port)
        assert len(held) == FLOOD  # the server kept taking connections (and cutting old ones)
        status, body = get(port, "/metrics")
        assert status == 200 and b"pipeline_results" in body
        assert fd_count(proc.pid) < FD_LIMIT // 2
        [victim] = children(proc.pid, "preprocess")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: [p for p in children(proc.pid, "preprocess") if p != victim], 60,
                 "preprocess to be restarted")
        before = lines(record)
        wait_for(lambda: lines(record) > before + 30, 60, "results after the restart")
        close_all(held)
        held = []
        assert get(port, "/metrics")[0] == 200
    finally:
        close_all(held)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Too many open files" not in err, err
    s = json.loads(summary.read_text())
    assert s["restarts"]["preprocess"] == 1, s["restarts"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    proc = up(pipeline_config(tmp_path_factory.mktemp("slowloris"), "slowloris"), "--quiet")
    wait_running(proc)
    yield "slowloris"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)


class Streams:
    """`n` viewers of /stream.mjpg, read together; counts each one's frames."""

    def __init__(self, port: int, n: int):
        self.selector = selectors.DefaultSelector()
        self.frames: dict[socket.socket, int] = {}
        self.tail: dict[socket.socket, bytes] = {}
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(1)
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.0 200 "), head
            s.setblocking(False)
            self.selector.register(s, selectors.EVENT_READ)
            self.frames[s], self.tail[s] = 0, b""

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in self.selector.select(0.1):
                s = key.fileobj
                data = self.tail[s] + s.recv(1 << 16)
                self.frames[s] += data.count(b"--frame\r\n")
                self.tail[s] = data[-8:]

    def close(self) -> None:
        for s in self.frames:
            self.selector.unregister(s)
            s.close()


def test_slowloris_on_the_preview_keeps_it_answering_and_80_streams_flowing(pipeline, many_fds):
    """80 viewers of the stream, then more unfinished requests than the preview has
    descriptors: every viewer still gets frames and a new request is answered, while they are
    held."""
    preview, port = attach_preview(pipeline, preexec_fn=_usual_fd_limit)
    held: list[socket.socket] = []
    streams = None
    try:
        streams = Streams(port, 80)
        streams.read(1.0)
        held = flood(port)
        assert len(held) == FLOOD
        status, body = get(port, "/status.json")
        assert status == 200 and json.loads(body)["fps"] > 0
        status, body = get(port, "/latest.jpg")
        assert status == 200 and body.startswith(SOI)
        before = dict(streams.frames)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and min(streams.frames[s] - before[s] for s in before) < 10:
            streams.read(1.0)
        assert min(streams.frames[s] - before[s] for s in before) >= 10, sorted(streams.frames.values())
    finally:
        close_all(held)
        if streams:
            streams.close()
        preview.send_signal(signal.SIGINT)
        err = preview.communicate(timeout=30)[1]
    assert preview.returncode == 0, err
    assert "Traceback" not in err, err


def running_preview(name: str) -> subprocess.Popen:
    """A preview that has shown a frame: past its start, where a stop signal ends it at once."""
    preview, port = attach_preview(name)
    wait_for(lambda: get(port, "/latest.jpg")[0] == 200, 60, "the preview's first frame", step=0.05)
    return preview


def test_stop_signals_during_the_preview_shutdown_leave_no_traceback(pipeline):
    """SIGTERM, then another while the first one's shutdown runs, 20 times at delays spread over
    how long a shutdown takes here: exit 0 and the usual last line every time."""
    preview = running_preview(pipeline)
    t0 = time.monotonic()
    preview.send_signal(signal.SIGTERM)
    err = preview.communicate(timeout=30)[1]
    shutdown_s = time.monotonic() - t0
    assert preview.returncode == 0 and "Traceback" not in err, err
    for i in range(20):
        preview = running_preview(pipeline)
        preview.send_signal(signal.SIGTERM)
        time.sleep(shutdown_s * i / 20)
        preview.send_signal(signal.SIGTERM)
        err = preview.communicate(timeout=30)[1]
        assert preview.returncode == 0, (i, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (i, err)
        assert err.strip().splitlines()[-1].startswith("attach: "), (i, err)


def test_a_stage_restart_without_descriptors_is_one_line_and_retried_by_its_policy(tmp_path,
                                                                                    clean_machine):
    """The supervisor out of descriptors (its limit lowered below those it holds) when a stage
    must be restarted: one line per attempt, retried by the restart policy, and the stage is back
    once descriptors are free again."""
    record = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        pipeline_cmd("demo.toml", "--name", "nofds", "--set", "model.weights=none", "--quiet",
                     "--set", "preprocess.restart=always", "--record", str(record)),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr), daemon=True)
    try:
        wait_running(proc)
        reader.start()
        soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        [victim] = children(proc.pid, "preprocess")
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (3, hard))  # 0-2 are open: no new one
        os.kill(victim, signal.SIGKILL)
        failed = "stage 'preprocess' failed: could not be restarted (Too many open files); restarting in"
        wait_for(lambda: sum(line.startswith(failed) for line in said) >= 2, 60, "two failed restarts")
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
        wait_for(lambda: any(line.startswith("stage 'preprocess' is back after") for line in said), 60,
                 "preprocess to be back")
        before = lines(record)
        wait_for(lambda: lines(record) > before + 30, 60, "results after the restart")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    err = "".join(said)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err

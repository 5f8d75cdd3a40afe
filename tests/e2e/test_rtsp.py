"""An IP camera that never hangs the pipeline: a real RTSP server (GStreamer's gst-rtsp-server,
from Debian, installed by the test where missing) on loopback plays bottle-detection.mp4 as a
live camera; the pipeline reads it through OpenCV's FFmpeg backend with open and read timeouts.
A server that hangs, or dies, gives `reconnecting` within the read timeout; a new one resumes
results; frames arrive at the stream's pace, without a backlog."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import attach
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.mqtt_broker import free_port
from tests.support.processes import launch, pipeline_cmd, read_jsonl
from workers.capture.stream_probe import why_not_open

SYSTEM_PYTHON = "/usr/bin/python3"
PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
PROBE = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
READ_TIMEOUT_S = 2.0
STEADY_RESULTS = 100  # results before the server hangs: the first second's and 60 more at least


def _server_ready() -> bool:
    return Path(SYSTEM_PYTHON).exists() and subprocess.run(
        [SYSTEM_PYTHON, "-c", PROBE], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def rtsp_python() -> str:
    """The system python3 with GStreamer's RTSP server, installed with apt-get where missing."""
    if not _server_ready():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip("GStreamer's RTSP server is not installed and this user cannot install it")
        subprocess.run(f"apt-get update -qq && apt-get install -y -qq {PACKAGES}", shell=True,
                       capture_output=True, timeout=900)
        if not _server_ready():
            pytest.skip("Debian's GStreamer RTSP server packages could not be installed here")
    return SYSTEM_PYTHON


class RtspServer:
    def __init__(self, python: str, port: int, auth: str = ""):
        self.python, self.port, self.auth = python, port, auth  # auth: USER:PASSWORD (Digest)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.python, str(ROOT / "tests" / "support" / "rtsp_server.py"),
                                      str(self.port), str(need(BOTTLE)),
                                      *([self.auth] if self.auth else [])], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


def capture_state(sub) -> str | None:
    st = sub.last_status
    return st["stages"]["capture"]["state"] if st else None


def until_reconnecting(sub, since: float) -> float:
    """Seconds from `since` until the status shows capture reconnecting."""
    while capture_state(sub) != "reconnecting" and time.monotonic() - since < 30:
        sub.receive(timeout=0.5)
    assert capture_state(sub) == "reconnecting"
    return time.monotonic() - since


def seconds_to_a_new_result(sub) -> float:
    """Seconds until a result of a frame captured from now on arrives."""
    now = time.monotonic_ns()
    while True:
        r = sub.receive(timeout=30)
        assert r is not None, "no result after the server came back"
        if r.timestamps["capture"] > now:
            return (time.monotonic_ns() - now) / 1e9


def test_a_dead_stream_is_a_reconnect_and_a_restarted_one_resumes(rtsp_python, tmp_path,
                                                                  clean_machine):
    server = RtspServer(rtsp_python, free_port())
    server.start()
    record = tmp_path / "r.jsonl"
    proc = launch(pipeline_cmd(
        "camera.toml", "--name", "rtsplab", "--quiet", "--record", str(record),
        "--set", f'source.device="rtsp://127.0.0.1:{server.port}/cam"',
        "--set", f"source.read_timeout_s={READ_TIMEOUT_S}", "--set", "source.open_timeout_s=2",
        "--set", "capture.cores=[0]", "--set", "preprocess.cores=[0]",
        "--set", f"inference.cores=[{max(os.sched_getaffinity(0))}]", "--set", "inference.threads=1",
        "--set", "model.runtime=onnxruntime"))
    try:
        with attach("rtsplab", status=True) as sub:
            assert sub.receive(timeout=20) is not None, "results from the stream"
            # Enough results to judge the pace by, however many frames a slow machine drops
            # (latest edges): at least 4 s of them, and 100 results.
            until, received = time.monotonic() + 4, 1
            while time.monotonic() < until or received < STEADY_RESULTS:
                assert sub.receive(timeout=5) is not None
                received += 1
            # A server that hangs keeps the connection open and sends nothing: only the read
            # timeout can tell (FFmpeg's default waits 30 s, and after some reconnects forever).
            server.proc.send_signal(signal.SIGSTOP)
            killed = time.monotonic()
            noticed = until_reconnecting(sub, killed)
            assert noticed < READ_TIMEOUT_S + 4, noticed  # the read timeout, then a status
            server.kill()
            server.start()
            back = seconds_to_a_new_result(sub)
            # A server that dies closes the connection: a reconnect at once.
            server.kill()
            assert until_reconnecting(sub, time.monotonic()) < READ_TIMEOUT_S + 4
            server.start()
            seconds_to_a_new_result(sub)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        server.kill()
    assert proc.returncode == 0, err
    assert "source failed" in err and "reconnecting" in err
    results = sorted(read_jsonl(record), key=lambda r: r["seq"])
    before = [r for r in results if r["t"]["capture"] < killed * 1e9]
    # The stream's pace, no backlog: after the first second, frame k arrives k/30 s after the
    # first (the file is 29.83 fps), give or take the network's jitter.
    t = np.array([r["t"]["capture"] for r in before]) / 1e9
    k = np.array([r["frame"] for r in before])
    steady = t[t > t[0] + 1.0]
    lag = steady - k[t > t[0] + 1.0] / 29.83
    spread_ms = (np.percentile(lag, 99) - np.percentile(lag, 1)) * 1000
    age = [(r["t"]["inference_start"] - r["t"]["capture"]) / 1e6 for r in before]
    print(f"reconnecting {noticed:.1f} s after the server hung; results {back:.1f} s after it came "
          f"back; frame age at inference p50 {np.percentile(age, 50):.1f} / p99 "
          f"{np.percentile(age, 99):.1f} ms; arrival lag spread {spread_ms:.0f} ms over "
          f"{len(lag)} frames")
    assert len(lag) > 60
    assert spread_ms < 500, spread_ms  # a growing backlog would spread without bound


PASSWORD = "Se@c/r:et?#%"  # characters a URL parser splits on
CORES = ("--set", "capture.cores=[0]", "--set", "preprocess.cores=[0]",
         "--set", f"inference.cores=[{max(os.sched_getaffinity(0))}]", "--set", "inference.threads=1")


def test_a_camera_asking_for_a_password_gets_it_from_the_credentials_file(rtsp_python, tmp_path):
    """A camera with Digest authentication (as most ask): the password, from a 0600 file, opens
    it whatever characters it holds; a wrong or missing one is reported as refused (401), not
    as a timeout; the password shows nowhere."""
    server = RtspServer(rtsp_python, free_port(), auth=f"viewer:{PASSWORD}")
    server.start()
    url = f"rtsp://127.0.0.1:{server.port}/cam"
    right, wrong = tmp_path / "right.cred", tmp_path / "wrong.cred"
    for path, text in ((right, f"viewer:{PASSWORD}\n"), (wrong, "viewer:nope\n")):
        path.write_text(text)
        path.chmod(0o600)
    try:
        def check(*more: str) -> subprocess.CompletedProcess:
            return subprocess.run(pipeline_cmd("camera.toml", "--set", f'source.device="{url}"',
                                               "--set", "source.open_timeout_s=3",
                                               "--set", "model.runtime=onnxruntime", *CORES, *more,
                                               "--check"),
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)

        ok = check("--set", f"source.credentials={right}")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"camera {url}, first frame 640x360" in ok.stdout
        refused = check("--set", f"source.credentials={wrong}")
        assert refused.returncode == 1
        assert "401 Unauthorized: it refused the user and password" in refused.stdout
        missing = check()
        assert "401 Unauthorized: it wants a user and password" in missing.stdout
        for out in (ok, refused, missing):
            assert PASSWORD not in out.stdout + out.stderr and "Traceback" not in out.stderr
        # The probe's own Digest answer is right: with the right password it finds nothing wrong.
        assert why_not_open(url, ("viewer", PASSWORD), 3.0) == ""
    finally:
        server.kill()

"""IP cameras over HTTP (a real MJPEG server on loopback, tests/support/mjpeg_server.py): the password
is never shown and never on a command line; a refused password says so; a camera that is not up
yet is waited for by the restart policy; a frame too large is refused before it is decoded."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import attach
from pipeline.config.credentials import has_user_info, mask_url, with_credentials
from pipeline.transport.rundir import runtime_root
from tests.support.assets import ROOT
from tests.support.mjpeg_server import MjpegServer, jpeg_frames
from tests.support.mqtt_broker import free_port
from tests.support.processes import read_jsonl

PASSWORD = "Se@c/r:et?#%"  # every character that breaks a naive parser
USER = "viewer"
FAST = ("--set", "capture.cores=[0]", "--set", "preprocess.cores=[0]",
        "--set", f"inference.cores=[{max(os.sched_getaffinity(0))}]", "--set", "inference.threads=1",
        "--set", "model.runtime=onnxruntime", "--set", "source.open_timeout_s=2")

# -- masking --------------------------------------------------------------------------------
SECRET = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=24)
HOSTS = st.sampled_from(["127.0.0.1", "cam.local", "[::1]", "192.168.1.20"])
PORTS = st.sampled_from(["", ":554", ":8080"])
PATHS = st.sampled_from(["", "/", "/stream1", "/video.mjpg?res=hd", "/a/b#x"])
SCHEMES = st.sampled_from(["rtsp", "rtsps", "http", "https", "rtmp"])


@settings(max_examples=400, deadline=None)
@given(SCHEMES, SECRET, SECRET, HOSTS, PORTS, PATHS)
def test_masking_hides_any_user_info(scheme, user, password, host, port, path):
    url = f"{scheme}://{user}:{password}@{host}{port}{path}"
    assert mask_url(url) == f"{scheme}://***@{host}{port}{path}"
    assert has_user_info(url)  # refused in the config, whatever the password holds
    assert mask_url(f"{scheme}://{host}{port}{path}") == f"{scheme}://{host}{port}{path}"


@settings(max_examples=300, deadline=None)
@given(SCHEMES, SECRET, SECRET, HOSTS, PORTS, PATHS)
def test_credentials_put_into_a_url_come_out_whole(scheme, user, password, host, port, path):
    parts = urlsplit(with_credentials(f"{scheme}://{host}{port}{path}", user, password))
    assert (unquote(parts.username), unquote(parts.password)) == (user, password)
    assert parts.hostname == host.strip("[]")
    assert mask_url(with_credentials(f"{scheme}://{host}{port}{path}", user, password)) == \
        f"{scheme}://***@{host}{port}{path}"


def test_credential_query_parameters_are_masked():
    assert mask_url("http://cam/video.cgi?user=admin&pwd=x%40y&res=hd") == \
        "http://cam/video.cgi?user=***&pwd=***&res=hd"


# -- credentials ----------------------------------------------------------------------------
def credentials_file(folder: Path, text: str = f"{USER}:{PASSWORD}\n", mode: int = 0o600) -> Path:
    path = folder / "cam.cred"
    path.write_text(text)
    path.chmod(mode)
    return path


def config_file(folder: Path, device: str, credentials: str = "", restart: str = "never") -> Path:
    path = folder / "ipcam.toml"
    path.write_text(f'name = "ipcam"\n[source]\nkind = "camera"\ndevice = "{device}"\n'
                    + (f'credentials = "{credentials}"\n' if credentials else "")
                    + f'[capture]\nrestart = "{restart}"\n')
    return path


def up(config: Path, *args: str, env: dict | None = None, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "pipeline.cli.up", str(config), *FAST, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def start(config: Path, *args: str) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """`pipeline-up` running in the background, its stderr lines collected as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli.up", str(config), *FAST, *args],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    return proc, lines, reader


def wait_for(proc: subprocess.Popen, lines: list[str], text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)


@pytest.fixture
def camera():
    server = MjpegServer(free_port(), jpeg_frames(), auth=(USER, PASSWORD)).start()
    yield server
    server.stop()


def test_a_password_in_the_url_is_refused_and_not_repeated(camera, tmp_path):
    url = camera.url.replace("//", f"//{USER}:{PASSWORD}@")
    for args in (("--set", f'source.device="{url}"'), ()):
        cfg = config_file(tmp_path, "rtsp://127.0.0.1/x" if args else url)
        out = up(cfg, *args, "--check")
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "source.device" in lines[0] and "credentials" in lines[0]
        assert PASSWORD not in out.stdout + out.stderr and "Se@c" not in out.stdout + out.stderr
        assert "***@127.0.0.1" in lines[0]


def test_credentials_from_a_private_file_open_the_camera_and_show_nowhere(camera, tmp_path,
                                                                           clean_machine):
    cred = credentials_file(tmp_path)
    cfg = config_file(tmp_path, camera.url, str(cred))
    check = up(cfg, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"camera {camera.url}, first frame 320x240" in check.stdout
    assert camera.requests[-1][1] == 200  # the password reached the camera
    # A real run: the password is in no output, no command line, no file the run writes.
    record, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    proc, lines, reader = start(cfg, "--record", str(record), "--summary-json", str(summary))
    seen: list[str] = []
    try:
        wait_for(proc, lines, "running:")
        with attach("ipcam", status=True) as sub:
            assert sub.receive(timeout=60) is not None, "results from the camera"
            seen.append(repr(sub.last_status) + repr(sub.info))
            for pid in [proc.pid, *(p.pid for p in _children(proc.pid))]:
                seen.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
            run_files = [f for f in glob.glob(f"{runtime_root()}/**/*", recursive=True)
                         if os.path.isfile(f)]
            assert run_files
            for f in run_files:
                try:
                    seen.append(Path(f).read_bytes().decode(errors="replace"))
                except OSError:
                    pass
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
        reader.join(timeout=5)
    err = "".join(lines)
    assert proc.returncode == 0, err
    seen += [out, err, record.read_text(), summary.read_text()]
    assert read_jsonl(record)
    for text in seen:
        assert PASSWORD not in text and unquote("Se%40c") not in text


def _children(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_a_credentials_file_others_may_read_is_refused(camera, tmp_path):
    cred = credentials_file(tmp_path, mode=0o644)
    out = up(config_file(tmp_path, camera.url, str(cred)), "--check")
    assert out.returncode == 1
    assert f"may be read by others (mode 0644); allow only its owner: chmod 600 {cred}" in out.stdout
    assert "Traceback" not in out.stderr and PASSWORD not in out.stdout + out.stderr
    assert not camera.requests  # refused before anything was sent


@pytest.mark.parametrize("problem", ["missing", "unsafe"])
def test_a_bad_credentials_file_is_a_config_error_at_start(camera, tmp_path, problem):
    """Exit 2 (a config error, which the service unit does not restart), before any stage."""
    cred = tmp_path / "absent.cred" if problem == "missing" else credentials_file(tmp_path, mode=0o640)
    out = up(config_file(tmp_path, camera.url, str(cred), restart="always"))
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if "source.credentials" in line]
    assert len(errors) == 1 and str(cred) in errors[0], out.stderr
    assert "Traceback" not in out.stderr and PASSWORD not in out.stdout + out.stderr
    assert not camera.requests


def test_a_bare_name_is_a_systemd_credential(camera, tmp_path):
    folder = tmp_path / "credentials"
    folder.mkdir()
    credentials_file(folder)
    out = up(config_file(tmp_path, camera.url, "cam.cred"), "--check",
             env={"CREDENTIALS_DIRECTORY": str(folder)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert camera.requests[-1] == (camera.expected, 200)


# -- what the camera answers ----------------------------------------------------------------
@pytest.mark.parametrize("given", ["none", "wrong"])
def test_a_refused_password_is_reported_as_such(camera, tmp_path, given, clean_machine):
    cred = str(credentials_file(tmp_path, f"{USER}:wrong\n")) if given == "wrong" else ""
    started = time.monotonic()
    out = up(config_file(tmp_path, camera.url, cred))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    failed = [line for line in out.stderr.splitlines() if "cannot open stream" in line]
    assert failed and all("401 Unauthorized" in line and "within" not in line for line in failed)
    assert ("refused the user and password" if cred else "wants a user and password") in failed[-1]
    print(f"reported in {time.monotonic() - started:.1f} s: {failed[-1]}")




def test_a_camera_that_comes_up_late_is_waited_for_by_the_restart_policy(tmp_path, clean_machine):
    port = free_port()
    server = MjpegServer(port, jpeg_frames())
    cfg = config_file(tmp_path, f"http://127.0.0.1:{port}/video.mjpg", restart="always")
    proc, lines, reader = start(cfg)
    try:
        wait_for(proc, lines, "retrying with back-off")
        # Down for several of the back-off's steps: a start without waiting would have failed.
        time.sleep(6)
        assert proc.poll() is None, "".join(lines)
        server.start()
        wait_for(proc, lines, "running:")
        with attach("ipcam") as sub:
            assert sub.receive(timeout=60) is not None, "results once the camera is up"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
        server.stop()
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert sum("connection refused" in line for line in lines) == 1, text  # each reason once
    assert "source opened after" in text and "Traceback" not in text


def test_a_camera_that_is_down_with_restart_never_fails_the_start_in_one_line(tmp_path,
                                                                              clean_machine):
    out = up(config_file(tmp_path, f"http://127.0.0.1:{free_port()}/video.mjpg"))
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "cannot open stream" in line]
    assert len(errors) == 1 and "connection refused" in errors[0], out.stderr
    assert "Traceback" not in out.stderr and "retrying" not in out.stderr


# -- frames too large -----------------------------------------------------------------------
HUGE = 16000


@pytest.fixture(scope="module")
def huge_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((HUGE, HUGE), 128, np.uint8))
    assert ok
    return data.tobytes()


OPEN_ONLY = """
import sys
from pipeline.config import CameraSource
from workers.capture.source_base import SourceError
from workers.capture.sources import open_source
try:
    open_source(CameraSource(kind="camera", device=sys.argv[1], open_timeout_s=20))
except SourceError as e:
    print(e)
"""


def _open_in_a_child(url: str) -> tuple[str, int]:
    """What opening `url` as capture does says, and that process's peak RSS in bytes."""
    child = subprocess.Popen([sys.executable, "-c", OPEN_ONLY, url], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, out
    return out.strip(), usage.ru_maxrss * 1024


def test_a_huge_mjpeg_frame_is_refused_before_it_is_decoded(huge_jpeg, tmp_path, clean_machine):
    small = MjpegServer(free_port(), jpeg_frames(3), fps=5).start()
    huge = MjpegServer(free_port(), [huge_jpeg], fps=1).start()
    try:
        said, baseline = _open_in_a_child(small.url)
        assert said == ""
        said, peak = _open_in_a_child(huge.url)
        assert f"{HUGE}x{HUGE} frames" in said and "max_frame_pixels" in said
        frame_bytes = HUGE * HUGE * 3
        print(f"peak RSS {peak / 2**20:.0f} MiB opening the huge camera, {baseline / 2**20:.0f} "
              f"MiB a small one; one frame is {frame_bytes / 2**20:.0f} MiB")
        assert peak - baseline < frame_bytes / 10, (peak, baseline)
        # The pipeline: one line, exit 1, even with restart = "always" (waiting changes nothing).
        out = up(config_file(tmp_path, huge.url, restart="always"), timeout=120)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert f"{HUGE}x{HUGE} frames" in out.stderr and "retrying" not in out.stderr
    finally:
        small.stop()
        huge.stop()

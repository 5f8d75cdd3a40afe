"""Consumers attached to running pipelines: discovery, the Python API, built-in and custom
consumers, isolation from slow, stopped and killed consumers, and the preview page in a browser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest

from pipeline import attach
from pipeline.transport.rundir import NotRunning, find_pipeline, running_pipelines, runtime_root
from tests.support.assets import BOTTLE, ROOT, WEIGHTS, need
from tests.support.browser import chromium
from tests.support.processes import launch, pipeline_cmd, run_pipeline, shm_segments

ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]


def start_pipeline(name: str, *sets: str) -> subprocess.Popen:
    need(WEIGHTS)
    args = ["--name", name, "--quiet", "--set", f"source.path={need(BOTTLE)}",
            "--set", f"model.weights={WEIGHTS}", "--set", "source.loop=true"]
    for s in sets:
        args += ["--set", s]
    return launch(pipeline_cmd("video.toml", *args))


def stop_pipeline(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    return out


@pytest.fixture(scope="module")
def live():
    """One pipeline playing bottle-detection.mp4 as a live 30 fps camera, shared by tests."""
    proc = start_pipeline("attachlab")
    yield proc
    stop_pipeline(proc)


def attach_cmd(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*ATTACH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=kw.get("timeout", 60))


def test_discovery_list_and_clear_errors(live):
    listed = attach_cmd("--list")
    assert listed.returncode == 0 and "attachlab" in listed.stdout and "results.sock" in listed.stdout
    info = find_pipeline("attachlab")
    assert info["pid"] == live.pid and info["config"]["source"]["kind"] == "video"
    missing = attach_cmd("--name", "no-such-pipeline")
    assert missing.returncode == 1
    running = ", ".join(f"{i['name']} (pid {i['pid']})" for i in running_pipelines())
    assert missing.stderr.strip() == \
        f"pipeline-attach: no pipeline named 'no-such-pipeline' is running (running: {running})"


def test_stale_entry_is_recognised_and_removed():
    stale = runtime_root() / "ghost-999999"
    stale.mkdir(parents=True)
    (stale / "run.json").write_text(json.dumps({
        "name": "ghost", "pid": 999999, "started_at": 0, "endpoints": {}, "rings": {},
        "stages": [], "config": {}}))
    assert all(i["name"] != "ghost" for i in running_pipelines())
    assert not stale.exists()
    with pytest.raises(NotRunning, match="no pipeline named 'ghost'"):
        find_pipeline("ghost")


def test_duplicate_name_is_refused(live):
    p = run_pipeline("demo.toml", "--name", "attachlab", "--set", "model.weights=none")
    assert p.returncode == 2 and "already running" in p.stderr


def test_python_api_results_and_readonly_frames(live):
    with attach("attachlab", frames=True) as sub:
        results = []
        for r in sub:
            results.append(r)
            if len(results) == 20:
                break
        assert [r.result_seq for r in results] == list(range(results[0].result_seq,
                                                              results[0].result_seq + 20))
        assert sub.missed == 0
        # A frame is there if the consumer reads it before the ring (4 slots) moves on, which a
        # loaded machine may not let it do for every one: each one it missed is counted.
        with_frame = [r for r in results if r.frame is not None]
        assert with_frame and sub.frames_missed == 20 - len(with_frame)
        r = with_frame[-1]
        assert r.frame.shape == (360, 640, 3) and not r.frame.flags.writeable
        assert r.frame.mean() > 20 and r.label and 0 < r.prob <= 1
        assert r.top[0].index == 898 or r.label in ("nipple", "pop bottle", "water jug")
        deadline = time.monotonic() + 30  # a few frames later the ring (4 slots) has moved on
        while r.frame_still_valid() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not r.frame_still_valid()


def test_video_consumer_writes_decodable_annotated_mp4(live, tmp_path):
    out = tmp_path / "annotated.mp4"
    p = attach_cmd("--name", "attachlab", "--consumer", "video", "--out", str(out),
                   "--duration", "4")
    assert p.returncode == 0, p.stderr
    written = int(p.stderr.split("wrote ")[1].split()[0])
    assert 30 <= written <= 130  # up to 30 fps for 4 s
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == written
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 360)


def test_plain_pyzmq_subscriber_from_the_docs(live):
    src = (ROOT / "tools" / "examples" / "subscribe_plain.py").read_text()
    assert "import pipeline" not in src and "from pipeline" not in src and "workers" not in src
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "examples" / "subscribe_plain.py"), "attachlab",
                        "--count", "10"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/")
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and len(lines) == 10 and all(line.startswith("seq ") for line in lines)


def test_custom_consumers_function_and_class(live):
    p = attach_cmd("--name", "attachlab", "--consumer",
                   "tools/examples/consumer.py:print_changes", "--count", "30")
    assert p.returncode == 0 and p.stdout.startswith("seq ") and "now " in p.stdout
    p = attach_cmd("--name", "attachlab", "--consumer",
                   "tools/examples/consumer.py:LabelCounter", "--count", "30")
    counts = [int(line.split()[0]) for line in p.stdout.splitlines()]
    assert p.returncode == 0 and sum(counts) <= 30 and counts[0] > 10
    bad = attach_cmd("--name", "attachlab", "--consumer", "tools/nope.py:x")
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_killed_consumer_does_not_disturb_the_pipeline(live):
    def segments() -> set[str]:
        return {s for s in shm_segments() if f"-{live.pid}-" in s}

    before = segments()
    consumer = subprocess.Popen([*ATTACH, "--name", "attachlab", "--consumer", "video",
                                 "--out", "/dev/null"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    time.sleep(3)
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.wait()
    with attach("attachlab") as sub:
        got = [sub.receive(timeout=5) for _ in range(30)]
    assert all(r is not None for r in got) and sub.missed == 0
    assert live.poll() is None
    assert segments() == before and len(before) == 2  # nothing added, nothing lost
    assert not os.path.exists(f"/proc/{consumer.pid}")


@pytest.mark.timeout(1200)  # may first install Debian's chromium
def test_preview_page_in_a_headless_browser(live, tmp_path):
    browser_path = chromium()
    from playwright.sync_api import sync_playwright

    preview = subprocess.Popen([*ATTACH, "--name", "attachlab", "--consumer", "preview",
                                "--port", "0"], cwd=ROOT, text=True, stderr=subprocess.PIPE)
    try:
        url = preview.stderr.readline().split("open ")[1].strip()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_function("document.getElementById('label').textContent.includes('seq')",
                                   timeout=15000)
            first = page.inner_text("#label")
            page.wait_for_function(f"document.getElementById('label').textContent != {first!r}",
                                   timeout=15000)
            assert "seq" in page.inner_text("#label")
            page.wait_for_function("document.getElementById('frame').naturalWidth > 0",
                                   timeout=15000)
            assert page.evaluate("document.getElementById('frame').naturalWidth") == 640
            page.wait_for_function("document.querySelectorAll('#stages tr').length == 3",
                                   timeout=15000)
            assert "inference" in page.inner_text("#stages")
            page.screenshot(path=str(tmp_path / "preview.png"))
            browser.close()
    finally:
        preview.send_signal(signal.SIGINT)
        preview.wait(timeout=10)

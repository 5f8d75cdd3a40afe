"""Snapshots over HTTP from the `preview` consumer: the newest frame of any source and of each one,
annotated or as captured, per-source MJPEG streams, plain 404s, and the Host check on all of them,
against one real two-source pipeline (the bottle video, 640x360, and the synthetic pattern,
320x240) running the shipped model in onnxruntime."""

from __future__ import annotations

import dataclasses
import http.client
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline import attach
from pipeline.client.consumers.preview import MAX_SOURCES, PreviewConsumer
from tests.support.assets import BOTTLE, ROOT, need
from tests.support.processes import running
from tests.support.topologies import wait_for, write_config

NAME = "snaplab"
ATTACH = [sys.executable, "-m", "pipeline.cli.attach"]
CAM1, CAM2 = (360, 640, 3), (240, 320, 3)  # frame shapes of the two sources
SOI = b"\xff\xd8"  # every JPEG starts with it
BAND = int(34 * max(0.4, 640 / 900)) + 8  # rows of cam1's label band (annotate.py)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The two-source pipeline, shared by the tests; stopped with Ctrl-C and checked clean."""
    bottle = need(BOTTLE)
    config = write_config(tmp_path_factory.mktemp("snapshots") / f"{NAME}.toml", [
        {"kind": "video", "id": "cam1", "path": str(bottle), "loop": True, "fps": 30},
        {"kind": "synthetic", "id": "cam2", "width": 320, "height": 240, "fps": 30},
    ], name=NAME, model={"weights": "builtin", "runtime": "onnxruntime"})
    yield from running(config)


@pytest.fixture(scope="module")
def preview(live):
    """`pipeline-attach --consumer preview --port 0` on the pipeline: its port, once both sources
    have a snapshot."""
    proc = subprocess.Popen([*ATTACH, "--name", NAME, "--consumer", "preview", "--port", "0"],
                            cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = proc.stderr.readline()
        assert first.startswith("preview: open http://127.0.0.1:"), first
        port = int(first.rsplit(":", 1)[1].strip(" /\n"))
        wait_for(lambda: all(get(port, f"/{s}/latest.jpg")[0] == 200 for s in ("cam1", "cam2")),
                 30, "a snapshot of both sources")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err = proc.stderr.read()
        assert proc.returncode == 0 and "Traceback" not in err, err


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One GET: status, headers and body (of a stream, its first 4 KiB)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        streaming = resp.getheader("Content-Type", "").startswith("multipart/")
        return resp.status, resp.headers, resp.read(4096) if streaming else resp.read()
    finally:
        conn.close()


def decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, jpeg[:80]
    return image


def snapshot(port: int, path: str) -> np.ndarray:
    status, headers, body = get(port, path)
    assert status == 200, (path, status, body[:200])
    assert headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "no-store"
    return decode(body)


def parts(port: int, path: str, n: int) -> list[np.ndarray]:
    """The first n frames of an MJPEG stream, each checked against its part headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200, (path, resp.status, resp.read())
        assert resp.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
        frames = []
        for _ in range(n):
            assert resp.readline() == b"--frame\r\n"
            assert resp.readline() == b"Content-Type: image/jpeg\r\n"
            length = int(resp.readline().split(b":")[1])
            assert resp.readline() == b"\r\n"
            jpeg = resp.read(length)
            assert jpeg.startswith(SOI) and resp.readline() == b"\r\n"
            frames.append(decode(jpeg))
        return frames
    finally:
        conn.close()


def diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference per pixel value."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_latest_jpeg_of_any_source_and_of_each(preview, clean_machine):
    for annotate in ("", "?annotate=1", "?annotate=0"):
        assert snapshot(preview, f"/cam1/latest.jpg{annotate}").shape == CAM1
        assert snapshot(preview, f"/cam2/latest.jpg{annotate}").shape == CAM2
    seen: set[tuple[int, ...]] = set()  # /latest.jpg is whichever source delivered last
    wait_for(lambda: seen.add(snapshot(preview, "/latest.jpg").shape) or seen == {CAM1, CAM2},
             20, "/latest.jpg to show both sources", step=0.02)
    assert snapshot(preview, "/latest.jpg?annotate=0").shape in (CAM1, CAM2)


def test_raw_snapshot_is_the_pipelines_frame_without_the_band(live, clean_machine):
    """A preview in this process, fed real results: what it serves is compared with the very frame
    it was given."""
    consumer = PreviewConsumer(port=0, name=NAME)
    port = consumer.server.server_address[1]
    try:
        status, _, body = get(port, "/latest.jpg")
        assert (status, body) == (404, b"no frame yet (sources so far: none)\n")
        status, _, body = get(port, "/cam1/latest.jpg?annotate=0")
        assert (status, body) == (404, b"no frame yet from source 'cam1' (sources so far: none)\n")
        with attach(NAME, frames=True) as sub:
            for r in sub:
                consumer.on_result(r)
                if r.source == "cam1" and r.frame is not None:
                    frame = r.frame.copy()
                    if r.frame_still_valid():  # then so were the consumer's copies, made before
                        break
        raw = decode(get(port, "/cam1/latest.jpg?annotate=0")[2])
        annotated = decode(get(port, "/cam1/latest.jpg")[2])
        assert raw.shape == annotated.shape == frame.shape == CAM1
        assert diff(raw, frame) < 4  # JPEG quality 80
        assert diff(annotated[BAND:], frame[BAND:]) < 4
        assert annotated[:BAND].mean() < 0.6 * frame[:BAND].mean()  # darkened, text drawn
        assert diff(raw[:BAND], frame[:BAND]) < 4 and diff(raw[:BAND], annotated[:BAND]) > 10
        # Encoded once for this frame, whoever asks again.
        source = consumer.shared.sources["cam1"]
        again = get(port, "/cam1/latest.jpg?annotate=0")[2]
        assert again == source.raw_jpeg and source.raw_jpeg_no == source.raw_no
    finally:
        consumer.close()


def test_sources_are_bounded_and_buffers_kept(live, clean_machine):
    """Results under ever new source names track at most MAX_SOURCES sources; a source's buffers
    are made once for its frame shape and then reused."""
    consumer = PreviewConsumer(port=0, name=NAME)
    port = consumer.server.server_address[1]
    try:
        with attach(NAME, frames=True) as sub:
            results = [r for r in (sub.receive(timeout=10) for _ in range(20)) if r is not None]
            assert sum(r.source == "cam1" and r.frame is not None for r in results) >= 3
            buffers = None
            for r in results:
                consumer.on_result(r)
                cam1 = consumer.shared.sources.get("cam1")
                if buffers is None and cam1 is not None and cam1.raw is not None:
                    buffers = (cam1.canvas, cam1.raw)
            assert buffers is not None and buffers[0] is cam1.canvas and buffers[1] is cam1.raw
            for i in range(MAX_SOURCES + 20):
                r = sub.receive(timeout=10)
                consumer.on_result(dataclasses.replace(r, source=f"odd{i}"))
            consumer.on_result(dataclasses.replace(r, source="../not an id"))
        assert len(consumer.shared.sources) == MAX_SOURCES
        status, _, body = get(port, f"/odd{MAX_SOURCES + 5}/latest.jpg")
        assert status == 404 and body.startswith(f"no frame yet from source 'odd{MAX_SOURCES + 5}' ".encode())
        assert get(port, "/stream.mjpg")[2].startswith(b"--frame\r\n")  # it shows them all
    finally:
        consumer.close()


def test_per_source_mjpeg_streams(preview, clean_machine):
    assert [f.shape for f in parts(preview, "/cam2/stream.mjpeg", 3)] == [CAM2] * 3
    assert [f.shape for f in parts(preview, "/cam1/stream.mjpeg?annotate=0", 3)] == [CAM1] * 3
    assert [f.shape for f in parts(preview, "/cam1/stream.mjpg", 2)] == [CAM1] * 2
    # The stream of all sources is as before: both sizes, interleaved.
    assert {f.shape for f in parts(preview, "/stream.mjpg", 12)} == {CAM1, CAM2}
    assert {f.shape for f in parts(preview, "/stream.mjpg?annotate=0", 12)} == {CAM1, CAM2}


def test_the_stream_of_all_sources_answers_at_either_spelling(preview, clean_machine):
    """/stream.mjpeg as /stream.mjpg, like the streams of each source."""
    assert {f.shape for f in parts(preview, "/stream.mjpeg", 12)} == {CAM1, CAM2}
    assert {f.shape for f in parts(preview, "/stream.mjpeg?annotate=0", 12)} == {CAM1, CAM2}
    assert get(preview, "/stream.jpeg")[0] == 404


def test_unknown_source_and_bad_requests(preview, clean_machine):
    for path in ("/nope/latest.jpg", "/nope/stream.mjpeg?annotate=0", "/cam10/latest.jpg"):
        status, headers, body = get(preview, path)
        name = path.split("/")[1]
        assert status == 404 and headers["Content-Type"].startswith("text/plain"), (path, status)
        line = body.decode()
        assert line.startswith(f"no frame yet from source '{name}' (sources so far: "), line
        assert line.endswith(")\n") and line.count("\n") == 1 and "cam1" in line and "cam2" in line
    status, _, body = get(preview, "/cam1/latest.jpg?annotate=maybe")
    assert status == 400 and b"annotate takes 0" in body
    assert get(preview, "/cam1/other.jpg")[0] == 404
    assert get(preview, "/cam1/latest.jpg/more")[0] == 404


def test_foreign_host_is_refused_on_snapshot_routes(preview, clean_machine):
    routes = ("/latest.jpg", "/latest.jpg?annotate=0", "/cam1/latest.jpg", "/cam2/stream.mjpeg",
              "/cam1/stream.mjpeg?annotate=0", "/stream.mjpeg", "/nope/latest.jpg")
    for path in routes:
        status, _, body = get(preview, path, host="evil.example")
        assert status == 403 and b"--allow-host" in body and SOI not in body, (path, status)
    for path in routes[:-1]:
        status, _, body = get(preview, path, host=f"localhost:{preview}")
        assert status == 200 and SOI in body, (path, status)

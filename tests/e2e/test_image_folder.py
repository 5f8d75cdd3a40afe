"""An image folder against careless and hostile files: a huge file or image is skipped from its size
on disk and its header without being read, a photo caught while being written is tried again once
it has changed, a photo too small for source.roi is skipped and counted (and `--check` says so),
and a region of fractions must give at least 8x8 pixels."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from pipeline.config import ConfigError, load_config
from tests.support.assets import IMAGES, ROOT, need
from tests.support.processes import launch, pipeline_cmd, read_jsonl, run_pipeline
from workers.capture.source_base import SourceError
from workers.capture.sources import Images

GIB = 2 ** 30
MIB = 2 ** 20
BIG, SMALL, WIDE = "n01440764_tench.JPEG", "n02356798_fox_squirrel.JPEG", "n03841143_odometer.JPEG"
# 500x375, 86x108 and 640x427 real photos
PEAK_LIMIT = 512 * MIB  # far below the 1.1 GiB the TIFF's pixels take and the 3 GiB file


def sparse_tiff(path: Path, width: int, height: int) -> Path:
    """A real uncompressed RGB TIFF of black pixels: header, one strip, the strip a hole in a
    sparse file (20000x20000 takes 1.1 GiB of file and no disk)."""
    strip = width * height * 3
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 2),
               (273, 4, 512), (277, 3, 3), (278, 4, height), (279, 4, strip), (284, 3, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else
        struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in entries) + b"\0" * 4
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", 8) + ifd)
        f.truncate(512 + strip)
    return path


def sparse_file(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def copy_photos(folder: Path, **names: str) -> None:
    need(IMAGES)
    for name, photo in names.items():
        shutil.copy(IMAGES / photo, folder / name)


@pytest.fixture
def hostile(tmp_path) -> Path:
    """Two real photos around a 3 GiB file named .jpg that is no image and a real 20000x20000 TIFF,
    both sparse (no disk); sorted, the photos come first and last."""
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG, "d.JPEG": WIDE})
    sparse_file(d / "b_not_an_image.jpg", 3 * GIB)
    sparse_tiff(d / "c_huge.tif", 20000, 20000)
    return d


def test_the_sparse_tiff_is_a_real_tiff(tmp_path):
    from PIL import Image

    small = sparse_tiff(tmp_path / "small.tif", 64, 48)
    assert cv2.imread(str(small)).shape == (48, 64, 3) and cv2.imread(str(small)).max() == 0
    with Image.open(sparse_tiff(tmp_path / "huge.tif", 20000, 20000)) as im:
        assert im.size == (20000, 20000)
    assert os.stat(tmp_path / "huge.tif").st_blocks * 512 < MIB  # sparse: no disk


def read_folder_in_a_process(folder: Path, *overrides: str) -> tuple[list[str], int, int]:
    """The items an Images source on `folder` delivers, its corrupt count and its peak RSS
    (VmHWM, in a fresh process: nothing else raised it)."""
    code = ("import json, numpy as np; from pipeline.config import load_config; "
            "from workers.capture.sources import Images; "
            f"src = Images(load_config(None, ['model.weights=none', 'source.kind=images', "
            f"'source.path={folder}', {', '.join(repr(o) for o in overrides)}]).source); "
            "items = [m['item'] for m in iter(lambda: src.read(lambda s: np.empty(s, np.uint8)), None)]; "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(json.dumps([items, src.corrupt, int(hwm) * 1024]))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    items, corrupt, peak = json.loads(p.stdout)
    return items, corrupt, peak


def test_huge_files_are_skipped_from_their_size_and_header_without_reading_them(hostile, tmp_path):
    # A real 16x16 JPEG followed by 200 MiB of nothing: a header that fits, a file no such image is.
    jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    sparse_file(hostile / "e_padded.jpg", 200 * MIB, jpeg)
    items, corrupt, peak = read_folder_in_a_process(hostile)
    assert items == ["a.JPEG", "d.JPEG"] and corrupt == 3
    assert peak < PEAK_LIMIT, f"peak RSS {peak / MIB:.0f} MiB: a huge file was read"


class CapturePeak(threading.Thread):
    """Samples the capture stage's memory (psutil's RSS, and the kernel's high-water mark) while
    a pipeline runs: the largest seen."""

    def __init__(self, supervisor: int):
        super().__init__(daemon=True)
        self.supervisor, self.peak, self.samples, self.done = supervisor, 0, 0, False

    def run(self) -> None:
        while not self.done:
            try:
                for child in psutil.Process(self.supervisor).children(recursive=True):
                    if "capture" in child.cmdline():
                        self.peak = max(self.peak, child.memory_info().rss)
                        with open(f"/proc/{child.pid}/status") as f:
                            hwm = next(line for line in f if line.startswith("VmHWM"))
                        self.peak = max(self.peak, int(hwm.split()[1]) * 1024)
                        self.samples += 1
            except (psutil.Error, OSError, StopIteration):
                pass
            time.sleep(0.02)


def test_pipeline_skips_them_with_one_line_each_and_classifies_the_next_photo(hostile, tmp_path,
                                                                               clean_machine):
    summary, record = tmp_path / "s.json", tmp_path / "r.jsonl"
    proc = subprocess.Popen(pipeline_cmd("images.toml", "--name", "folderhostile", "--set",
                                         f"source.path={hostile}", "--set", "model.runtime=onnxruntime",
                                         "--quiet", "--summary-json", str(summary), "--record",
                                         str(record)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = CapturePeak(proc.pid)
    sampler.start()
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        sampler.done = True
        proc.kill()
    assert proc.returncode == 0, err
    assert sampler.samples > 0
    assert sampler.peak < PEAK_LIMIT, f"capture's peak RSS {sampler.peak / MIB:.0f} MiB"
    assert [r["item"] for r in read_jsonl(record)] == ["a.JPEG", "d.JPEG"]
    s = json.loads(summary.read_text())
    assert s["frames"]["classified"] == 2 and s["drops"]["source"]["corrupt"] == 2
    skipped = [line for line in err.splitlines() if "skipping image" in line]
    assert len(skipped) == 2 and "Traceback" not in err
    assert skipped[0].endswith(f"{hostile / 'b_not_an_image.jpg'}") and "3072 MiB" in skipped[0]
    assert skipped[1].endswith(f"{hostile / 'c_huge.tif'}")


def test_a_photo_caught_while_being_written_is_read_on_a_later_pass(tmp_path, caplog):
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG, "b.JPEG": SMALL, "c.JPEG": WIDE})
    whole = (d / "b.JPEG").read_bytes()
    src = Images(load_config(None, ["model.weights=none", "source.kind=images", f"source.path={d}",
                                    "source.loop=true"]).source)

    def read(n: int) -> list[str]:
        return [src.read(lambda s: np.empty(s, np.uint8))["item"] for _ in range(n)]

    assert read(3) == ["a.JPEG", "b.JPEG", "c.JPEG"]
    (d / "b.JPEG").write_bytes(whole[:64])  # being rewritten: only its first bytes are there yet
    with caplog.at_level(logging.WARNING, logger="capture"):
        assert read(4) == ["a.JPEG", "c.JPEG"] * 2  # two passes without it
    assert src.corrupt == 1  # unchanged on the second pass: not read again
    (d / "b.JPEG").write_bytes(whole)
    assert read(6) == ["a.JPEG", "b.JPEG", "c.JPEG"] * 2 and src.corrupt == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"skipping image that cannot be decoded: {d / 'b.JPEG'}"


def recorded(path: Path) -> list[dict]:
    """The whole lines a running pipeline's record holds so far (it is written in blocks)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def wait_for(what: str, done, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_pipeline_classifies_a_rewritten_photo_again(tmp_path, clean_machine):
    """A looping folder, one photo cut short while the pipeline runs, then written whole."""
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG, "b.JPEG": SMALL, "c.JPEG": WIDE})
    whole = (d / "b.JPEG").read_bytes()
    summary, record = tmp_path / "s.json", tmp_path / "r.jsonl"
    proc = launch(pipeline_cmd("images.toml", "--name", "folderloop", "--set", f"source.path={d}",
                               "--set", "source.loop=true", "--set", "source.fps=20", "--set",
                               "model.runtime=onnxruntime",
                               "--quiet", "--summary-json", str(summary), "--record", str(record)))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()

    def items_since(t: float) -> list[str]:
        return [r["item"] for r in recorded(record) if r["captured_at"] > t]

    try:
        wait_for("b.JPEG classified", lambda: "b.JPEG" in items_since(0))
        (d / "b.JPEG").write_bytes(whole[:64])  # caught while being rewritten
        wait_for("the skip", lambda: any("skipping image" in line for line in lines))
        skipped = time.time()
        wait_for("two passes without it", lambda: items_since(skipped).count("c.JPEG") >= 2)
        assert "b.JPEG" not in items_since(skipped)
        rewritten = time.time()
        (d / "b.JPEG").write_bytes(whole)
        wait_for("b.JPEG classified again", lambda: "b.JPEG" in items_since(rewritten))
    finally:
        proc.send_signal(signal.SIGINT)  # stopped as a user would, so it cleans up after itself
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    assert proc.returncode == 0, lines
    assert [line.rstrip() for line in lines if "skipping image" in line] == [
        f"capture: skipping image that cannot be decoded: {d / 'b.JPEG'}"]
    assert json.loads(summary.read_text())["drops"]["source"]["corrupt"] >= 1


def test_pipeline_skips_and_counts_a_photo_the_region_does_not_fit(tmp_path, clean_machine):
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG, "b.JPEG": SMALL, "c.JPEG": WIDE})
    args = ("images.toml", "--name", "folderroi", "--set", f"source.path={d}", "--set",
            "source.roi=[0, 0, 200, 200]", "--set", "model.runtime=onnxruntime")
    summary, record = tmp_path / "s.json", tmp_path / "r.jsonl"
    p = run_pipeline(*args, "--quiet", "--summary-json", str(summary), "--record", str(record))
    assert p.returncode == 0, p.stderr
    assert [r["item"] for r in read_jsonl(record)] == ["a.JPEG", "c.JPEG"]
    s = json.loads(summary.read_text())
    assert s["frames"]["classified"] == 2 and s["drops"]["source"]["roi"] == 1
    assert s["drops"]["source"]["corrupt"] == 0
    (line,) = [x for x in p.stderr.splitlines() if "skipping image" in x]
    assert "of 86x108: source.roi: [0, 0, 200, 200] does not fit in the 86x108 frame" in line
    assert line.endswith(str(d / "b.JPEG"))

    check = subprocess.run(pipeline_cmd(*args, "--check"), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    (source,) = [x for x in check.stdout.splitlines() if x.startswith("source")]
    assert "first frame 500x375, region of interest 200x200 at (0, 0)" in source
    assert f"1 image(s) will be skipped: source.roi does not fit them (e.g. {d / 'b.JPEG'}: 86x108)" \
        in source


def test_a_region_that_fits_no_photo_is_refused_at_start_with_one_line(tmp_path, clean_machine):
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"b.JPEG": SMALL})
    (d / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(SourceError, match=r"^source.roi: \[0, 0, 200, 200\] fits none of the images"):
        Images(load_config(None, ["model.weights=none", "source.kind=images", f"source.path={d}",
                                  "source.roi=[0, 0, 200, 200]"]).source)
    p = run_pipeline("images.toml", "--name", "foldernoroi", "--set", f"source.path={d}", "--set",
                     "source.roi=[0, 0, 200, 200]", "--set", "model.runtime=onnxruntime", "--quiet")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        f"pipeline-up: stage 'capture' failed: source.roi: [0, 0, 200, 200] fits none of the images "
        f"at {d} that could be read (e.g. {d / 'b.JPEG'}: 86x108)")


def test_the_region_is_fitted_to_a_photo_as_turned_by_its_exif_orientation(tmp_path):
    """A 500x375 photo whose EXIF says "turn 90 degrees" is decoded 375x500: a region fits
    that or not, whatever its header's width and height."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG})
    with Image.open(d / "a.JPEG") as photo:
        exif = photo.getexif()
        exif[0x0112] = 6
        photo.save(d / "b_turned.jpg", exif=exif, quality=95)
    for roi, delivered in (("[0, 0, 370, 450]", ["b_turned.jpg"]), ("[0, 0, 450, 370]", ["a.JPEG"])):
        src = Images(load_config(None, ["model.weights=none", "source.kind=images", f"source.path={d}",
                                        f"source.roi={roi}"]).source)
        frames = {}
        items = [m["item"] for m in iter(lambda: src.read(lambda s: frames.setdefault(
            len(frames), np.empty(s, np.uint8))), None)]
        assert items == delivered and src.roi == 1, roi
        assert frames[0].shape == ((500, 375, 3) if items == ["b_turned.jpg"] else (375, 500, 3))


TINY = "source.roi=[0.0, 0.0, 1e-300, 1e-300]"


@pytest.mark.parametrize("overrides, message", [
    ([TINY], "source.roi: [0.0, 0.0, 1e-300, 1e-300] is 1x1 pixels of the 640x480 frame; a region "
             "needs at least 8x8"),
    (["source.roi=[0.0, 0.0, 0.01, 0.5]", "source.width=320", "source.height=240"],
     "source.roi: [0.0, 0.0, 0.01, 0.5] is 3x120 pixels of the 320x240 frame"),
])
def test_a_region_of_fractions_under_8x8_pixels_is_refused_where_the_frame_size_is_known(overrides,
                                                                                         message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.weights=none", *overrides])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_region_of_fractions_under_8x8_pixels_skips_the_photo(tmp_path, caplog):
    """Where the frame size is told only by the photo, a photo it gives too few pixels of is
    skipped and counted like one a pixel region does not fit; the rest are classified."""
    d = tmp_path / "imgs"
    d.mkdir()
    copy_photos(d, **{"a.JPEG": BIG, "b.JPEG": SMALL})
    src = Images(load_config(None, ["model.weights=none", "source.kind=images", f"source.path={d}",
                                    "source.roi=[0.0, 0.0, 0.02, 0.5]"]).source)  # 10x188 of a.JPEG
    items = [m["item"] for m in iter(lambda: src.read(lambda s: np.empty(s, np.uint8)), None)]
    assert items == ["a.JPEG"] and src.roi == 1 and src.corrupt == 0
    with pytest.raises(SourceError, match=r"^source.roi: \[0.0, 0.0, 1e-300, 1e-300\] fits none"):
        Images(load_config(None, ["model.weights=none", "source.kind=images", f"source.path={d}",
                                  TINY]).source)
